"""One run of a job at a time: a second one is refused at once, naming the first's pid."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    job_text,
    run_cli,
    start_run,
    wait_for_calls,
    write_job,
    write_sim_models,
    write_tasks,
)

from batchroute import read_calls, read_results
from batchroute.sim import SimulatorHandle, running_simulator

pytestmark = pytest.mark.timeout(300)

# Slow enough that a run of 300 rows at concurrency 2 lasts some 10 s: the first run is still
# going when a second process has started and reached the lock.
SLOW_MODELS = """
[models."l/slow"]
usd_per_mtok = { input = 1.0, output = 2.0 }
latency_ms = { mean = 60, jitter = 10 }
skill = 0.8
"""
FIXED = 'strategy = "fixed"\nmodel = "l/slow"'
ROWS = 300


@pytest.fixture(scope="module")
def slow_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    models = write_sim_models(tmp_path_factory.mktemp("lock_sim"), SLOW_MODELS)
    with running_simulator(models=models, seed=2) as handle:
        yield handle


def _job(directory: Path, sim: SimulatorHandle, *, name: str = "job.toml", out: str = "") -> Path:
    body = job_text(base_url=sim.base_url, route=FIXED).replace(
        "concurrency = 16", "concurrency = 2"
    )
    if out:
        body = body.replace("out/results.parquet", out)
    return write_job(directory, body, name=name)


def _requests(ledger: dict[str, Any]) -> int:
    return sum(model["requests"] for model in ledger["models"].values())


def test_a_second_run_of_the_same_job_is_refused_naming_the_first(
    tmp_path: Path, slow_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, ROWS)
    job = _job(tmp_path, slow_sim)
    slow_sim.reset()
    first = start_run(job)
    wait_for_calls(tmp_path / ".batchroute/store.sqlite", 4, first)

    second = run_cli("run", job)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchroute: error: "), second.stderr
    assert str(job) in lines[0] and f"pid {first.pid}" in lines[0]

    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    results = read_results(tmp_path / "out/results.parquet")
    assert results.height == ROWS and set(results["status"]) == {"ok"}
    assert read_calls(tmp_path / "out/results.parquet").height == ROWS
    assert _requests(slow_sim.ledger()) == ROWS  # every call paid once


def test_after_a_kill_9_the_lock_is_gone_and_the_next_run_resumes(
    tmp_path: Path, slow_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, ROWS)
    job = _job(tmp_path, slow_sim)
    first = start_run(job)
    wait_for_calls(tmp_path / ".batchroute/store.sqlite", 8, first)
    first.send_signal(signal.SIGKILL)
    first.communicate()

    done = run_cli("run", job)
    assert done.returncode == 0, done.stderr
    assert "resumed run" in done.stdout
    assert read_results(tmp_path / "out/results.parquet").height == ROWS


def test_two_different_jobs_on_one_store_run_at_once(
    tmp_path: Path, slow_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, ROWS)
    one = _job(tmp_path, slow_sim, name="one.toml", out="out/one.parquet")
    two = _job(tmp_path, slow_sim, name="two.toml", out="out/two.parquet")
    first = start_run(one)
    wait_for_calls(tmp_path / ".batchroute/store.sqlite", 4, first)
    second = start_run(two)
    for process in (first, second):
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    for name in ("one", "two"):
        results = read_results(tmp_path / f"out/{name}.parquet")
        assert results.height == ROWS and set(results["status"]) == {"ok"}


def _children(pid: int) -> list[int]:
    """The processes `pid` started, from any of its threads (the simulator starts from a
    worker thread)."""
    tasks = Path(f"/proc/{pid}/task").glob("*/children")
    return [int(child) for path in tasks for child in path.read_text().split()]


def test_a_simulator_outliving_its_killed_run_does_not_hold_the_lock(tmp_path: Path) -> None:
    """The embedded simulator is a subprocess: it must not inherit the lock, or a kill -9 of
    the run would leave the job locked for as long as the orphan lives."""
    write_tasks(tmp_path, 200)
    body = job_text(base_url="embedded", route='strategy = "fixed"\nmodel = "openai/gpt-4o-mini"')
    job = write_job(tmp_path, body.replace("concurrency = 16", "concurrency = 2"))
    first = start_run(job)
    wait_for_calls(tmp_path / ".batchroute/store.sqlite", 4, first)
    simulators = _children(first.pid)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    try:
        done = run_cli("run", job)
        assert done.returncode == 0, done.stderr
        assert "resumed run" in done.stdout
    finally:
        for pid in simulators:  # an orphan, until the simulator watches its parent
            with contextlib.suppress(OSError):  # gone already
                # The pid may have been reused once the simulator ended by itself.
                if b"batchroute.sim" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
