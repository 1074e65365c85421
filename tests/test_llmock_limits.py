"""Against llmock (a real server someone else wrote, enforcing its own rpm and sending its own
x-ratelimit-* headers): with no rpm in the job, batchroute learns the limit from the headers."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import pytest
from helpers import write_tasks
from peers import Server
from test_llmock import (
    MINI,
    RPM,
    _job,
    _run,
    assert_log_matches_calls,
    llmock,
    mock,
    spend_quota,
)

__all__ = ["llmock", "mock"]  # fixtures, imported for pytest to find

pytestmark = pytest.mark.timeout(240)


def test_without_rpm_the_limit_is_learned_and_almost_no_429s(tmp_path: Path, mock: Server) -> None:
    # The key's bucket is spent by another client: llmock admits 15 requests a second. The
    # job names no rpm; without learning, 64 calls at a time would meet mostly 429s (as
    # `limits = "job"` shows in test_llmock.py).
    n = 150
    write_tasks(tmp_path, n)
    job = _job(
        mock,
        tmp_path,
        route=f'strategy = "fixed"\nmodel = "{MINI}"',
        concurrency=64,
        run_extra="max_attempts = 10",
    )
    key = "key-learned"
    assert spend_quota(mock, key) >= RPM
    time.sleep(1.0)  # the other client stops; a second's worth refills
    mock.request("DELETE", "/_llmock/requests")
    results, calls = _run(job, key)

    assert set(results["status"]) == {"ok"}
    throttled = calls.filter(pl.col("status_code") == 429)
    assert throttled.height <= n // 100, throttled  # under 1% of the calls
    assert set(calls["limit_requests"].drop_nulls()) == {RPM}
    assert_log_matches_calls(mock, calls, n)
