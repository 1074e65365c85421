"""The call path against a hostile server: whatever it sends, the run finishes and tells the
truth. Every test runs a real job over real HTTP on 127.0.0.1 (tests/hostile_server.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pytest
from hostile_fixtures import hostile, hostile_job, run_job, transport
from hostile_server import Answer, HostileServer, completion

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


# ---- B1: charge and balance headers that lie ------------------------------------------------

# usage 10 prompt + 5 completion tokens: $0.2 + $0.1 = $0.3 a call at these prices.
PRICED = """
    [models."h/model"]
    usd_per_mtok = { input = 20000.0, output = 20000.0 }
    """


def _charged(value: str, balance: str | None = None) -> Answer:
    headers = {"X-MDB-Charged-USD": value}
    if balance is not None:
        headers["X-MDB-Balance-USD"] = balance
    return Answer(json=completion(), headers=headers)


@pytest.mark.parametrize("lie", ["NaN", "nan", "inf", "-Infinity"])
def test_a_budget_holds_when_every_charge_header_is_not_a_number(
    tmp_path: Path, hostile: HostileServer, lie: str
) -> None:
    hostile.script = lambda request: _charged(lie)
    job = hostile_job(
        tmp_path,
        hostile,
        rows=10,
        models=PRICED,
        run="budget_usd = 1.0\ndefault_max_tokens = 5",
        concurrency=1,
    )
    ran = run_job(job)
    assert ran.report.stop_error is not None and "budget" in str(ran.report.stop_error)
    ok = ran.results.filter(pl.col("status") == "ok")
    assert 1 <= ok.height <= 3  # $0.3 a call: the fourth could pass $1
    calls = ran.calls.filter(pl.col("status_code") == 200)
    assert set(calls["cost_source"]) == {"invalid_header"}
    assert calls["charge_usd"].to_list() == pytest.approx([0.3] * calls.height)
    assert ran.results["cost_usd"].drop_nulls().sum() <= 1.0


def test_a_lying_charge_counts_as_the_dearest_call_seen(
    tmp_path: Path, hostile: HostileServer
) -> None:
    # No price table: the honest calls say $0.4; a NaN between them must not count as free.
    answers = iter(["0.4", "NaN"] * 20)
    hostile.script = lambda request: _charged(next(answers))
    job = hostile_job(tmp_path, hostile, rows=10, run="budget_usd = 1.0", concurrency=1)
    ran = run_job(job)
    assert ran.report.stop_error is not None and "budget" in str(ran.report.stop_error)
    assert ran.results.filter(pl.col("status") == "ok").height <= 3
    invalid = ran.calls.filter(pl.col("cost_source") == "invalid_header")
    assert invalid.height >= 1 and invalid["charge_usd"].is_null().all()


def test_a_negative_charge_never_makes_totals_negative(
    tmp_path: Path, hostile: HostileServer, caplog: pytest.LogCaptureFixture
) -> None:
    hostile.script = lambda request: _charged("-1000")
    job = hostile_job(tmp_path, hostile, rows=6, models=PRICED)
    with caplog.at_level(logging.WARNING):
        ran = run_job(job)
    assert set(ran.results["status"]) == {"ok"}
    assert ran.results["cost_usd"].to_list() == pytest.approx([0.3] * 6)
    assert ran.report.summary["cost_usd"] == pytest.approx(1.8)
    assert set(ran.calls["cost_source"]) == {"invalid_header"}
    warnings = [r for r in caplog.records if "X-MDB-Charged-USD" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()


@pytest.mark.parametrize("lie", ["NaN", "-inf", "-5"])
def test_a_lying_balance_is_ignored_and_never_stops_the_run(
    tmp_path: Path, hostile: HostileServer, lie: str
) -> None:
    hostile.script = lambda request: _charged("0.001", balance=lie)
    job = hostile_job(tmp_path, hostile, rows=5, run="min_balance_usd = 1.0")
    ran = run_job(job)
    assert ran.report.stop_error is None
    assert set(ran.results["status"]) == {"ok"}
    assert ran.calls["balance_usd"].is_null().all()
