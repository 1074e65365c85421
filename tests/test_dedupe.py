"""Identical deterministic requests of one run share one call; each row keeps its result."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from helpers import job_text, write_job

import batchroute
from batchroute.dedupe import deterministic
from batchroute.results import read_calls, read_results
from batchroute.sim import SimulatorHandle

# Ten rows, four distinct texts: six rows repeat an earlier one.
TEXTS = ["a", "b", "a", "c", "a", "b", "d", "d", "a", "c"]


def _run(directory: Path, sim: SimulatorHandle, *, params: str = "", run: str = "") -> Path:
    frame = pl.DataFrame(
        {"task_id": [f"t{i}" for i in range(len(TEXTS))], "text": [f"ticket {t}" for t in TEXTS]}
    )
    frame.write_parquet(directory / "tasks.parquet")
    route = 'strategy = "fixed"\nmodel = "t/cheap"'
    body = job_text(base_url=sim.base_url, route=route, run_extra=run, extra=params)
    job = write_job(directory, body)
    report = batchroute.run(batchroute.load_job(job))
    assert report.stop_error is None
    return report.results_path


def test_identical_rows_share_one_call_and_pay_once(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    results_path = _run(tmp_path, fresh_sim, run="")
    ledger = fresh_sim.ledger()
    assert ledger["models"]["t/cheap"]["requests"] == 4  # one per distinct text
    results = read_results(results_path).sort("row_id")
    calls = read_calls(results_path)
    assert results["status"].to_list() == ["ok"] * 10
    # Every row has its answer; the same text, the same answer.
    answers = dict(zip(results["row_id"], results["answer"], strict=True))
    assert answers["t0"] == answers["t2"] == answers["t4"] == answers["t8"]
    deduped = results.filter(pl.col("deduped"))
    assert deduped.height == 6
    assert (deduped["cost_usd"] == 0).all() and (deduped["calls"] == 0).all()
    first = results.filter(~pl.col("deduped"))
    assert first["cached"].to_list() == [False] * 4
    assert first["shared_cost_usd"].is_null().all()
    # The shared charge is shown apart; the total is what the server charged, once.
    by_row = dict(zip(results["row_id"], results["cost_usd"], strict=True))
    shared = dict(zip(results["row_id"], results["shared_cost_usd"], strict=True))
    assert shared["t2"] == pytest.approx(by_row["t0"])
    assert results["cost_usd"].sum() == pytest.approx(ledger["total_charged_usd"])
    assert calls.filter(~pl.col("deduped"))["charge_usd"].sum() == pytest.approx(
        ledger["total_charged_usd"]
    )
    summary = batchroute.read_metadata(results_path)["summary"]
    assert summary["cost_usd"] == pytest.approx(ledger["total_charged_usd"])
    assert summary["deduped_rows"] == 6 and summary["calls"] == 4


def test_temperature_above_zero_is_never_deduplicated(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    results_path = _run(tmp_path, fresh_sim, params="[params]\ntemperature = 0.7\n")
    assert fresh_sim.ledger()["models"]["t/cheap"]["requests"] == 10
    assert not read_results(results_path)["deduped"].any()


def test_dedupe_off_sends_every_row(tmp_path: Path, fresh_sim: SimulatorHandle) -> None:
    results_path = _run(tmp_path, fresh_sim, run='dedupe = "off"')
    assert fresh_sim.ledger()["models"]["t/cheap"]["requests"] == 10
    assert not read_results(results_path)["deduped"].any()


def test_temperature_zero_is_deduplicated(tmp_path: Path, fresh_sim: SimulatorHandle) -> None:
    _run(tmp_path, fresh_sim, params="[params]\ntemperature = 0\n")
    assert fresh_sim.ledger()["models"]["t/cheap"]["requests"] == 4


def test_what_makes_a_request_deterministic() -> None:
    assert deterministic({}) and deterministic({"temperature": 0, "max_tokens": 5})
    assert not deterministic({"temperature": 0.2})
    assert not deterministic({"n": 1})  # n set at all: the caller asked for samples
