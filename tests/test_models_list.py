"""The endpoint's model list: `batchroute models` and the check `batchroute run` makes first."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import job_text, run_cli, write_job, write_tasks

from batchroute import read_results
from batchroute.sim import SimulatorHandle

pytestmark = pytest.mark.timeout(120)

CLASSIFIED = """
strategy = "classifier"
default = "t/cheap"
[route.classifier]
model = "t/strong"
prompt = "Topic? {text}"
labels = { bug = "ladder", billing = "t/nope" }
"""
LADDER = '[plans.ladder]\ntiers = ["t/cheap", "t/strong"]\n'


def test_models_prints_what_the_job_names_and_what_else_is_served(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 3)
    job = write_job(tmp_path, job_text(base_url=fresh_sim.base_url, route=CLASSIFIED, extra=LADDER))
    done = run_cli("models", job)
    assert done.returncode == 2, done.stderr  # one of the job's models is not served
    lines = [" ".join(line.split()) for line in done.stdout.splitlines()]
    assert "t/nope no target" in lines
    assert "t/cheap yes target, tier of plan ladder" in lines
    assert "t/strong yes tier of plan ladder, classifier" in lines
    assert "served, not used by the job: 3" in lines
    assert lines[-3:] == ["t/broken", "t/hangs", "t/throttled"]


def test_models_exits_0_when_every_model_is_served(tmp_path: Path) -> None:
    write_tasks(tmp_path, 3)
    route = 'strategy = "cascade"\ntiers = ["openai/gpt-4o-mini", "anthropic/claude-opus-4-8"]'
    done = run_cli("models", write_job(tmp_path, job_text(base_url="embedded", route=route)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "models of the job on the embedded simulator:" in done.stdout
    assert "openai/gpt-4.1-nano" in done.stdout  # served, not used


# `batchroute run` lists the models through the run's own transport: both must agree.
BOTH_TRANSPORTS = pytest.mark.parametrize("transport", ["aiohttp", "openai"])


@BOTH_TRANSPORTS
def test_run_stops_before_any_call_on_a_model_the_endpoint_lacks(
    transport: str, tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 5)
    route = 'strategy = "cascade"\ntiers = ["t/cheap", "t/stronk"]'
    body = job_text(base_url=fresh_sim.base_url, route=route, transport=transport)
    job = write_job(tmp_path, body)
    done = run_cli("run", job)
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"batchroute: error: {job}: model 't/stronk' is not served by {fresh_sim.base_url};"
        " closest served: t/strong"
    )
    assert len(done.stderr.strip().splitlines()) == 1
    ledger = fresh_sim.ledger()["models"]
    assert all(m["requests"] == 0 for m in ledger.values())
    assert not (tmp_path / "out/results.parquet").exists()


def test_a_missing_route_target_names_the_plans_too(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 3)
    body = job_text(
        base_url=fresh_sim.base_url,
        route=CLASSIFIED.replace('"t/nope"', '"ladderr"'),
        extra=LADDER,
    )
    done = run_cli("run", write_job(tmp_path, body))
    assert done.returncode == 2
    assert "model 'ladderr' is not served by" in done.stderr
    assert "(nor is it a [plans] table: ladder)" in done.stderr


@BOTH_TRANSPORTS
def test_an_endpoint_without_a_model_list_is_a_warning(
    transport: str, tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    # Under this prefix the simulator answers 404 to everything, /models included.
    write_tasks(tmp_path, 2)
    base_url = fresh_sim.base_url.replace("/v1", "/elsewhere/v1")
    route = 'strategy = "fixed"\nmodel = "t/cheap"'
    body = job_text(base_url=base_url, route=route, transport=transport)
    done = run_cli("run", write_job(tmp_path, body))
    assert done.returncode == 5, done.stderr  # every row failed (404)
    assert (
        f"batchroute: warning: {base_url} has no GET /models route; the job's model names"
        " were not checked"
    ) in done.stderr
    results = read_results(tmp_path / "out/results.parquet")
    assert set(results["status"]) == {"failed"}  # and the run went on to make its calls


@BOTH_TRANSPORTS
def test_an_unreachable_endpoint_stops_the_run_with_one_line(
    transport: str, tmp_path: Path
) -> None:
    write_tasks(tmp_path, 2)
    base_url = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
    route = 'strategy = "fixed"\nmodel = "t/cheap"'
    job = write_job(tmp_path, job_text(base_url=base_url, route=route, transport=transport))
    done = run_cli("run", job)
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"batchroute: error: {job}: endpoint.base_url: cannot reach {base_url}:"
    )
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out/results.parquet").exists()
