"""A batch is money in flight: kill -9 while it runs, run again, and it is collected, not paid
twice; `batchroute status` shows it and `batchroute cancel` stops it (the real CLI)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    SIM_MODELS,
    SIM_SEED,
    job_text,
    run_cli,
    wait_for_batch_id,
    write_job,
    write_sim_models,
    write_tasks,
)
from relay_server import Relay

from batchroute import read_results
from batchroute.sim import SimulatorHandle, running_simulator

pytestmark = pytest.mark.timeout(180)

MODELS = """
[models."t/cheap"]
usd_per_mtok = { input = 0.2, output = 0.8 }
mode = "batch"
"""
COMPARED = ["row_id", "status", "answer", "model", "cost_usd", "prompt_tokens"]


@pytest.fixture(scope="module")
def slow_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    # Long enough that a batch is still in progress when the test acts on it.
    models = write_sim_models(
        tmp_path_factory.mktemp("slow"), SIM_MODELS + "\n[batch]\nlatency_s = 4\n"
    )
    with running_simulator(models=models, seed=SIM_SEED) as handle:
        yield handle


def _job(directory: Path, sim: SimulatorHandle) -> Path:
    write_tasks(directory, 40)
    route = 'strategy = "fixed"\nmodel = "t/cheap"'
    body = job_text(base_url=sim.base_url, route=route, models=MODELS)
    return write_job(directory, body.replace("concurrency = 16", "concurrency = 100"))


def _start(job: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchroute", "run", str(job), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_during_a_batch_then_rerun_collects_the_same_batch(
    tmp_path: Path, slow_sim: SimulatorHandle
) -> None:
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    slow_sim.reset()
    done = run_cli("run", _job(reference_dir, slow_sim))
    assert done.returncode == 0, done.stderr
    expected = read_results(reference_dir / "out/results.parquet")
    reference_charge = slow_sim.ledger()["total_charged_usd"]

    slow_sim.reset()
    job = _job(tmp_path, slow_sim)
    process = _start(job)
    batch_id = wait_for_batch_id(tmp_path / ".batchroute/store.sqlite", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert slow_sim.ledger()["batches"]["batches"] == 1

    resumed = run_cli("run", job)
    assert resumed.returncode == 0, resumed.stderr
    ledger = slow_sim.ledger()
    assert ledger["batches"]["batches"] == 1 and ledger["batches"]["files"] == 2  # in + out
    assert ledger["total_charged_usd"] == pytest.approx(reference_charge)
    results = read_results(tmp_path / "out/results.parquet")
    assert results.select(COMPARED).equals(expected.select(COMPARED))
    status = run_cli("status", job)
    assert status.returncode == 0, status.stderr
    assert batch_id in status.stdout and "completed" in status.stdout


def test_a_kill_before_the_batch_id_was_recorded_finds_the_batch_instead_of_paying_again(
    tmp_path: Path, slow_sim: SimulatorHandle
) -> None:
    # The store after a kill between the provider creating the batch and the store recording
    # its id: the file is recorded as uploaded, with no batch. The rerun must find the batch
    # the provider made from that file, not create (and pay for) a second one.
    slow_sim.reset()
    job = _job(tmp_path, slow_sim)
    process = _start(job)
    store = tmp_path / ".batchroute/store.sqlite"
    batch_id = wait_for_batch_id(store, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with sqlite3.connect(store) as db:
        db.execute("UPDATE batch_files SET batch_id = NULL, status = 'uploaded'")
    assert slow_sim.ledger()["batches"]["batches"] == 1

    resumed = run_cli("run", job)
    assert resumed.returncode == 0, resumed.stderr
    assert slow_sim.ledger()["batches"]["batches"] == 1
    assert set(read_results(tmp_path / "out/results.parquet")["status"]) == {"ok"}
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT batch_id FROM batch_files").fetchall() == [(batch_id,)]


def test_a_list_of_batches_that_cannot_be_read_creates_the_batch_anew_and_says_so(
    tmp_path: Path, slow_sim: SimulatorHandle
) -> None:
    # As above, but the provider's list of batches answers 500 (a proxy in front of one that
    # lists none): the rerun is no worse than before the lookup existed. It creates a batch
    # (the killed run's is paid too) and warns, rather than failing its rows on every rerun.
    slow_sim.reset()
    with Relay(slow_sim.root) as relay:
        write_tasks(tmp_path, 40)
        route = 'strategy = "fixed"\nmodel = "t/cheap"'
        body = job_text(base_url=relay.url + "/v1", route=route, models=MODELS)
        job = write_job(tmp_path, body.replace("concurrency = 16", "concurrency = 100"))
        process = _start(job)
        store = tmp_path / ".batchroute/store.sqlite"
        wait_for_batch_id(store, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
        with sqlite3.connect(store) as db:
            db.execute("UPDATE batch_files SET batch_id = NULL, status = 'uploaded'")
        relay.fail_lists = 10
        resumed = run_cli("run", job)
    assert resumed.returncode == 0, resumed.stderr
    assert "could not look for the batch" in resumed.stderr and "HTTP 500" in resumed.stderr
    assert slow_sim.ledger()["batches"]["batches"] == 2
    assert set(read_results(tmp_path / "out/results.parquet")["status"]) == {"ok"}


def test_status_shows_a_running_batch_and_cancel_stops_it(
    tmp_path: Path, slow_sim: SimulatorHandle
) -> None:
    slow_sim.reset()
    job = _job(tmp_path, slow_sim)
    assert "no batches recorded" in run_cli("status", job).stdout
    process = _start(job)
    batch_id = wait_for_batch_id(tmp_path / ".batchroute/store.sqlite", process)
    status = run_cli("status", job)
    assert status.returncode == 0, status.stderr
    line = next(line for line in status.stdout.splitlines() if batch_id in line)
    assert "t/cheap" in line and ("validating" in line or "in_progress" in line)
    cancelled = run_cli("cancel", job)
    assert cancelled.returncode == 0, cancelled.stderr
    assert batch_id in cancelled.stdout and "cancel requested" in cancelled.stdout
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 5, stderr  # no row ended ok: the batch was cancelled
    assert "cancelled" in stderr and "Traceback" not in stderr
    assert slow_sim.ledger()["total_charged_usd"] == 0
    assert "cancelled" in run_cli("status", job).stdout
    assert "no open batch to cancel" in run_cli("cancel", job).stdout


def test_an_interrupt_does_not_wait_for_the_batch_which_stays_recorded(tmp_path: Path) -> None:
    models = write_sim_models(tmp_path, SIM_MODELS + "\n[batch]\nlatency_s = 3600\n")
    with running_simulator(models=models, seed=SIM_SEED) as sim:
        job = _job(tmp_path, sim)
        job.write_text(
            job.read_text().replace("concurrency = 100", "concurrency = 100\ngrace_s = 0.2")
        )
        process = _start(job)
        batch_id = wait_for_batch_id(tmp_path / ".batchroute/store.sqlite", process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)  # not the batch's hour
        assert process.returncode == 130, stderr
        assert "Traceback" not in stderr
        status = run_cli("status", job)
        line = next(line for line in status.stdout.splitlines() if batch_id in line)
        assert "validating" in line or "in_progress" in line
        assert sim.ledger()["batches"]["batches"] == 1
        assert sim.ledger()["total_charged_usd"] == 0
