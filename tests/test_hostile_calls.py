"""The call path against a hostile server: whatever it sends, the run finishes and tells the
truth. Every test runs a real job over real HTTP on 127.0.0.1 (tests/hostile_server.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_fixtures import hostile, hostile_job, run_job, transport
from hostile_server import Answer, HostileServer, Request, completion

from batchroute.errors import AuthRejected

__all__ = ["hostile", "transport"]  # fixtures, imported for pytest to find

pytestmark = pytest.mark.timeout(120)


def test_a_rejected_key_names_the_failing_models_endpoint(
    tmp_path: Path, hostile: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTHER_KEY", "sk-other")
    hostile.script = lambda request: Answer(401, json={"error": {"message": "bad key"}})
    job = hostile_job(
        tmp_path,
        hostile,
        base_url="http://127.0.0.1:9/v1",
        models=f"""
            [endpoints.other]
            base_url = "{hostile.url}"
            api_key_env = "OTHER_KEY"

            [models."h/model"]
            endpoint = "other"
            """,
    )
    ran = run_job(job)
    stop = ran.report.stop_error
    assert isinstance(stop, AuthRejected)
    assert hostile.url in str(stop) and "OTHER_KEY" in str(stop)
    assert "127.0.0.1:9/" not in str(stop)


def _unused(request: Request) -> Answer:
    return Answer(json=completion())
