"""Durable, budget-safe runs: kill -9 and resume, budgets, the cache across runs, interrupts."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
MODELS = """
[models."d/cheap"]
usd_per_mtok = { input = 0.5, output = 1.5 }
latency_ms = { mean = 15, jitter = 10 }
skill = 0.35

[models."d/strong"]
usd_per_mtok = { input = 5.0, output = 15.0 }
latency_ms = { mean = 15, jitter = 10 }
skill = 0.97

[models."d/flaky"]
usd_per_mtok = { input = 1.0, output = 1.0 }
latency_ms = { mean = 0, jitter = 0 }
skill = 0.9
errors = { "500" = 0.5 }
"""
CASCADE = 'strategy = "cascade"\ntiers = ["d/cheap", "d/strong"]'
CHECK = """
[params]
max_tokens = 40
response_format = { type = "json_object" }

[check]
type = "json_schema"
schema = { type = "object", properties = { confidence = { type = "number", minimum = 0.6 } } }
"""
CONCURRENCY = 16
COMPARED = ["row_id", "status", "answer", "model", "escalated", "cost_usd", "calls"]


@pytest.fixture(scope="module")
def dsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    models = write_sim_models(tmp_path_factory.mktemp("dsim"), MODELS)
    with running_simulator(models=models, seed=3) as handle:
        yield handle


def _cascade_job(
    directory: Path,
    sim: SimulatorHandle,
    *,
    rows: int,
    extra_run: str = "",
    output: str = "out/results.parquet",
) -> Path:
    write_tasks(directory, rows)
    body = job_text(base_url=sim.base_url, route=CASCADE, extra=CHECK, run_extra=extra_run)
    body = body.replace("concurrency = 16", f"concurrency = {CONCURRENCY}")
    body = body.replace('path = "out/results.parquet"', f'path = "{output}"')
    return write_job(directory, body)


@pytest.fixture(scope="module")
def reference(dsim: SimulatorHandle, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """One uninterrupted run: its results, what the provider charged, the dearest call."""
    directory = tmp_path_factory.mktemp("reference")
    dsim.reset()
    done = run_cli("run", _cascade_job(directory, dsim, rows=300))
    assert done.returncode == 0, done.stderr
    results = read_results(directory / "out/results.parquet")
    calls = read_calls(directory / "out/results.parquet")
    ledger = dsim.ledger()
    return Reference(
        results, ledger["total_charged_usd"], calls["charge_usd"].max(), _requests(ledger)
    )


@dataclass(frozen=True)
class Reference:
    results: pl.DataFrame
    charged_usd: float
    dearest_call_usd: float
    requests: int


def _requests(ledger: dict[str, Any]) -> int:
    return sum(model["requests"] for model in ledger["models"].values())


@pytest.mark.parametrize("kill_after_calls", [100, 200, 330])
def test_kill_9_then_resume_pays_only_for_calls_in_flight(
    tmp_path: Path, dsim: SimulatorHandle, reference: Reference, kill_after_calls: int
) -> None:
    expected, reference_charge = reference.results, reference.charged_usd
    job = _cascade_job(tmp_path, dsim, rows=300)
    store = tmp_path / ".batchroute/store.sqlite"
    dsim.reset()
    process = start_run(job)
    wait_for_calls(store, kill_after_calls, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(0.2)  # let the simulator finish answering the dead client's calls
    sent_before_kill = _requests(dsim.ledger())
    stored_before_kill = stored_calls(store)
    assert not (tmp_path / "out/results.parquet").exists()  # nothing half-written in place

    resumed = run_cli("run", job)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed run" in resumed.stdout

    results = read_results(tmp_path / "out/results.parquet")
    assert results.select(COMPARED).equals(expected.select(COMPARED))
    # Calls this run had paid for before the kill are its own, not "cached".
    assert not read_calls(tmp_path / "out/results.parquet")["cached"].any()
    ledger = dsim.ledger()
    paid = ledger["total_charged_usd"]
    assert paid >= reference_charge - 1e-9
    # Sent again: exactly the calls that had not reached the store, i.e. those in flight and
    # those answered in the milliseconds before their group commit; never the stored ones.
    resent = _requests(ledger) - reference.requests
    not_stored = sent_before_kill - stored_before_kill
    assert resent <= not_stored
    assert not_stored <= CONCURRENCY + 60  # the store keeps up: commits lag by milliseconds
    assert paid - reference_charge <= resent * reference.dearest_call_usd + 1e-9


def test_budget_stops_the_run_within_one_call_of_the_limit(
    tmp_path: Path, dsim: SimulatorHandle, reference: Reference
) -> None:
    reference_charge, dearest_call = reference.charged_usd, reference.dearest_call_usd
    budget = reference_charge / 4
    job = _cascade_job(tmp_path, dsim, rows=300, extra_run=f"budget_usd = {budget!r}")
    dsim.reset()
    done = run_cli("run", job)
    assert done.returncode == 3, done.stderr
    assert "budget" in done.stderr and "Traceback" not in done.stderr
    paid = dsim.ledger()["total_charged_usd"]
    assert paid <= budget + dearest_call
    results = read_results(tmp_path / "out/results.parquet")
    skipped = results.filter(pl.col("status") == "skipped")
    assert skipped.height > 0 and skipped["error"].str.starts_with("budget").all()
    assert results["cost_usd"].sum() == pytest.approx(paid, abs=1e-9)


def test_a_second_strategy_reuses_the_calls_it_shares(
    tmp_path: Path, dsim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 120)
    fixed = job_text(
        base_url=dsim.base_url, route='strategy = "fixed"\nmodel = "d/cheap"', extra=CHECK
    ).replace("out/results.parquet", "out/fixed.parquet")
    cascade = job_text(base_url=dsim.base_url, route=CASCADE, extra=CHECK)
    assert run_cli("run", write_job(tmp_path, fixed, name="fixed.toml")).returncode == 0
    dsim.reset()
    done = run_cli("run", write_job(tmp_path, cascade, name="cascade.toml"))
    assert done.returncode == 0, done.stderr

    calls = read_calls(tmp_path / "out/results.parquet")
    cached, new = calls.filter(pl.col("cached")), calls.filter(~pl.col("cached"))
    assert cached.height == 120 and set(cached["model"]) == {"d/cheap"}  # the whole cheap tier
    assert set(new["model"]) == {"d/strong"}
    ledger = dsim.ledger()
    assert ledger["models"].get("d/cheap", {}).get("requests", 0) == 0
    assert new["charge_usd"].sum() == pytest.approx(ledger["total_charged_usd"], abs=1e-9)
    assert "new spend" in done.stdout and "cached" in done.stdout


def test_offline_skips_rows_that_need_a_new_call(tmp_path: Path, dsim: SimulatorHandle) -> None:
    write_tasks(tmp_path, 60)
    fixed = job_text(
        base_url=dsim.base_url, route='strategy = "fixed"\nmodel = "d/cheap"', extra=CHECK
    ).replace("out/results.parquet", "out/fixed.parquet")
    assert run_cli("run", write_job(tmp_path, fixed, name="fixed.toml")).returncode == 0
    dsim.reset()
    cascade = job_text(base_url=dsim.base_url, route=CASCADE, extra=CHECK)
    done = run_cli("run", write_job(tmp_path, cascade, name="cascade.toml"), "--offline")
    assert done.returncode == 0, done.stderr
    assert dsim.ledger()["total_charged_usd"] == 0
    results = read_results(tmp_path / "out/results.parquet")
    needs_strong = results.filter(pl.col("escalated"))
    assert needs_strong.height > 0
    assert set(needs_strong["status"]) == {"skipped"}
    assert needs_strong["error"].str.starts_with("not_cached").all()
    assert set(results.filter(~pl.col("escalated"))["status"]) == {"ok"}


def test_retry_failed_reruns_only_failed_rows(tmp_path: Path, dsim: SimulatorHandle) -> None:
    write_tasks(tmp_path, 40)
    body = job_text(
        base_url=dsim.base_url,
        route='strategy = "fixed"\nmodel = "d/flaky"',
        run_extra="max_attempts = 1",
    )
    job = write_job(tmp_path, body)
    dsim.reset()
    assert run_cli("run", job).returncode == 0
    first = read_results(tmp_path / "out/results.parquet")
    failed = first.filter(pl.col("status") == "failed")
    assert 0 < failed.height < 40
    first.write_parquet(tmp_path / "first.parquet")  # keep a copy to compare with
    before = dsim.ledger()["models"]["d/flaky"]["requests"]

    done = run_cli("run", job, "--retry-failed", tmp_path / "out/results.parquet")
    assert done.returncode == 0, done.stderr
    assert dsim.ledger()["models"]["d/flaky"]["requests"] - before == failed.height
    second = read_results(tmp_path / "out/results.parquet")
    assert second.height == 40
    ok_before = first.filter(pl.col("status") == "ok").select(COMPARED)
    assert second.join(ok_before.select("row_id"), on="row_id").select(COMPARED).equals(ok_before)
    assert second.filter(pl.col("status") == "failed").height < failed.height


def test_sigterm_writes_finished_rows_and_the_same_command_resumes(
    tmp_path: Path, dsim: SimulatorHandle, reference: Reference
) -> None:
    expected = reference.results
    job = _cascade_job(tmp_path, dsim, rows=300)
    process = start_run(job)
    wait_for_calls(tmp_path / ".batchroute/store.sqlite", 60, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "again to resume" in stderr and "Traceback" not in stderr
    partial = read_results(tmp_path / "out/results.parquet")
    assert partial.height == 300
    statuses = set(partial["status"])
    assert "skipped" in statuses and "ok" in statuses

    done = run_cli("run", job)
    assert done.returncode == 0, done.stderr
    results = read_results(tmp_path / "out/results.parquet")
    assert results.select(COMPARED).equals(expected.select(COMPARED))


def test_a_store_from_another_version_is_refused(tmp_path: Path, dsim: SimulatorHandle) -> None:
    job = _cascade_job(tmp_path, dsim, rows=3)
    store = tmp_path / ".batchroute/store.sqlite"
    store.parent.mkdir()
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '999')")
    done = run_cli("run", job)
    assert done.returncode == 2
    assert str(store) in done.stderr and "schema version 999" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_output_of_another_job_is_kept_unless_forced(
    tmp_path: Path, dsim: SimulatorHandle
) -> None:
    job = _cascade_job(tmp_path, dsim, rows=3)
    out = tmp_path / "out/results.parquet"
    out.parent.mkdir()
    pl.DataFrame({"x": [1]}).write_parquet(out)
    before = out.read_bytes()
    done = run_cli("run", job)
    assert done.returncode == 2 and "--force" in done.stderr
    assert out.read_bytes() == before
    assert run_cli("run", job).returncode == 2  # still refused
    assert run_cli("run", job, "--force").returncode == 0
    assert read_results(out).height == 3
    assert run_cli("run", job).returncode == 0  # its own output: replaced without --force


def test_answers_from_the_store_keep_their_logprobs(tmp_path: Path, dsim: SimulatorHandle) -> None:
    write_tasks(tmp_path, 30)
    extra = (
        "[params]\nlogprobs = true\n\n"
        '[check]\ntype = "confidence"\nlogprobs = true\nthreshold = -0.3\n'
    )
    body = job_text(base_url=dsim.base_url, route=CASCADE, extra=extra)
    job = write_job(tmp_path, body)
    assert run_cli("run", job).returncode == 0
    first = read_results(tmp_path / "out/results.parquet")
    assert first["escalated"].any() and not first["escalated"].all()
    assert run_cli("run", job).returncode == 0  # a finished job run again: all from the store
    again = read_results(tmp_path / "out/results.parquet")
    calls = read_calls(tmp_path / "out/results.parquet")
    assert calls["cached"].all() and calls["mean_logprob"].is_not_null().all()
    assert again.select(COMPARED).equals(first.select(COMPARED))
