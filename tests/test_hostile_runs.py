"""Runs treated roughly: killed and resumed with other pace settings, pointed at bad places."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import (
    job_text,
    run_cli,
    start_run,
    stored_calls,
    wait_for_calls,
    write_job,
    write_sim_models,
    write_tasks,
)

from batchroute import read_calls, read_results
from batchroute.sim import SimulatorHandle, running_simulator

pytestmark = pytest.mark.timeout(300)

# Latency makes calls overlap, so a kill lands with calls in flight.
SLOW_MODELS = """
[models."h/cheap"]
usd_per_mtok = { input = 0.5, output = 1.5 }
latency_ms = { mean = 15, jitter = 10 }
skill = 0.5
"""
FIXED = 'strategy = "fixed"\nmodel = "h/cheap"'


@pytest.fixture(scope="module")
def slow_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    models = write_sim_models(tmp_path_factory.mktemp("slow_sim"), SLOW_MODELS)
    with running_simulator(models=models, seed=5) as handle:
        yield handle


def _requests(ledger: dict[str, Any]) -> int:
    return sum(model["requests"] for model in ledger["models"].values())


def _kill_9(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate()


def test_a_run_killed_then_rerun_with_less_concurrency_resumes_its_own_run(
    tmp_path: Path, slow_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 200)
    body = job_text(base_url=slow_sim.base_url, route=FIXED)
    job = write_job(tmp_path, body.replace("concurrency = 16", "concurrency = 32"))
    store = tmp_path / ".batchroute/store.sqlite"
    slow_sim.reset()
    process = start_run(job)
    wait_for_calls(store, 60, process)
    _kill_9(process)
    time.sleep(0.2)  # let the simulator finish answering the dead client's calls
    sent_before_kill = _requests(slow_sim.ledger())
    stored_before_kill = stored_calls(store)

    # After a wall of 429s a user lowers the pace; that is the same job, resumed.
    write_job(tmp_path, body.replace("concurrency = 16", "concurrency = 4\ngrace_s = 1"))
    resumed = run_cli("run", job)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed run" in resumed.stdout
    results = read_results(tmp_path / "out/results.parquet")
    assert results.height == 200 and set(results["status"]) == {"ok"}
    assert not read_calls(tmp_path / "out/results.parquet")["cached"].any()
    # Paid once: 200 answers in all, plus at most the calls that were in flight at the kill.
    sent = _requests(slow_sim.ledger())
    assert sent - sent_before_kill == 200 - stored_before_kill
    assert sent <= 200 + (sent_before_kill - stored_before_kill)


def test_retry_failed_accepts_a_results_file_written_at_another_concurrency(
    tmp_path: Path, slow_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 10)
    body = job_text(base_url=slow_sim.base_url, route=FIXED)
    job = write_job(tmp_path, body)
    assert run_cli("run", job).returncode == 0
    first = read_results(tmp_path / "out/results.parquet")
    first.write_parquet(tmp_path / "first.parquet")
    write_job(tmp_path, body.replace("concurrency = 16", "concurrency = 2"))
    done = run_cli("run", job, "--retry-failed", tmp_path / "out/results.parquet")
    assert done.returncode == 0, done.stderr
    again = read_results(tmp_path / "out/results.parquet")
    assert again.select("row_id", "answer").equals(first.select("row_id", "answer"))
    assert not read_calls(tmp_path / "out/results.parquet")["cached"].any()
    assert pl.read_parquet(tmp_path / "first.parquet").height == 10
