"""Limits learned from response headers: both providers' formats, hostile values, and runs
against the simulator that enforce a limit the job never names."""

from __future__ import annotations

import itertools
import logging
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from helpers import job_text, write_job, write_tasks
from hostile_fixtures import hostile, hostile_job, run_job
from hostile_server import Answer, HostileServer, completion
from virtual_clock import now, run_virtual

import batchroute
from batchroute.job import ModelConfig
from batchroute.limits import ModelLimits
from batchroute.ratelimit_headers import Quota, parse_duration, read_limit_headers
from batchroute.results import read_calls, read_results
from batchroute.sim import running_simulator

__all__ = ["hostile"]  # a fixture, imported for pytest to find

NOW = datetime(2026, 1, 1, tzinfo=UTC)


# ---- the two header formats ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5", 0.5),
        ("1m30.250s", 90.25),
        ("7ms", 0.007),
    ],
)
def test_openai_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "1s2", "m1s", "1 s", "abc"])
def test_garbled_durations_are_none(text: str) -> None:
    assert parse_duration(text) is None


def test_openai_headers_give_requests_and_tokens() -> None:
    headers = {
        "x-ratelimit-limit-requests": "3000",
        "x-ratelimit-remaining-requests": "2999",
        "x-ratelimit-reset-requests": "20ms",
        "x-ratelimit-limit-tokens": "250000",
        "x-ratelimit-remaining-tokens": "249000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    read = read_limit_headers(headers, now=NOW)
    assert read.quotas == {
        "requests": Quota(3000, 2999, 0.02),
        "tokens": Quota(250000, 249000, 360.0),
    }
    assert read.garbled == ()


def test_anthropic_headers_give_input_and_output_tokens_with_rfc3339_resets() -> None:
    headers = {}
    for name, limit in (("requests", 50), ("input-tokens", 40000), ("output-tokens", 8000)):
        headers[f"anthropic-ratelimit-{name}-limit"] = str(limit)
        headers[f"anthropic-ratelimit-{name}-remaining"] = str(limit // 2)
        headers[f"anthropic-ratelimit-{name}-reset"] = "2026-01-01T00:00:30Z"
    read = read_limit_headers(headers, now=NOW)
    assert read.quotas == {
        "requests": Quota(50, 25, 30.0),
        "input_tokens": Quota(40000, 20000, 30.0),
        "output_tokens": Quota(8000, 4000, 30.0),
    }
    # A reset already past is "now", and an offset other than Z is read as written.
    headers["anthropic-ratelimit-requests-reset"] = "2025-12-31T23:00:00Z"
    headers["anthropic-ratelimit-input-tokens-reset"] = "2026-01-01T01:00:10+01:00"
    read = read_limit_headers(headers, now=NOW)
    assert read.quotas["requests"].reset_s == 0.0
    assert read.quotas["input_tokens"].reset_s == 10.0


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-ratelimit-limit-requests", "NaN"),
        ("x-ratelimit-limit-requests", "-5"),
        ("x-ratelimit-limit-requests", "1e300"),
        ("x-ratelimit-limit-requests", "inf"),
        ("x-ratelimit-limit-requests", "0"),
        ("x-ratelimit-limit-requests", "12.5"),
        ("x-ratelimit-remaining-requests", "lots"),
        ("x-ratelimit-remaining-requests", "-1"),
        ("x-ratelimit-reset-requests", "-3s"),
        ("x-ratelimit-reset-requests", "9999999s"),
        ("x-ratelimit-reset-requests", "2026-01-01T00:00:30"),  # a time without a zone
        ("x-ratelimit-reset-requests", "NaNs"),
    ],
)
def test_a_garbled_value_drops_its_dimension_and_is_named(header: str, value: str) -> None:
    headers = {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "10",
        "x-ratelimit-reset-requests": "1s",
        header: value,
    }
    read = read_limit_headers(headers, now=NOW)
    assert "requests" not in read.quotas
    assert read.garbled and "\n" not in read.garbled[0]


def test_remaining_above_the_limit_is_cut_to_it_and_half_a_pair_is_garbled() -> None:
    read = read_limit_headers(
        {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "50"}, now=NOW
    )
    assert read.quotas["requests"] == Quota(10, 10, None)
    half = read_limit_headers({"x-ratelimit-remaining-tokens": "50"}, now=NOW)
    assert half.quotas == {} and half.garbled == ("x-ratelimit-limit-tokens",)


def test_header_names_are_read_in_any_case_and_the_first_of_a_repeated_one_wins() -> None:
    from multidict import CIMultiDict

    headers = CIMultiDict(
        [
            ("X-RateLimit-Limit-Requests", "60"),
            ("x-ratelimit-remaining-requests", "59"),
            ("X-RATELIMIT-REMAINING-REQUESTS", "1"),
            ("Content-Type", "application/json"),
        ]
    )
    assert read_limit_headers(headers, now=NOW).quotas == {"requests": Quota(60, 59, None)}
    # A plain mapping too (what a transport hands over need not look names up for us).
    plain = {"X-RateLimit-Limit-Tokens": "100", "X-RateLimit-Remaining-Tokens": "90"}
    assert read_limit_headers(plain, now=NOW).quotas == {"tokens": Quota(100, 90, None)}
    assert read_limit_headers({"Content-Type": "application/json"}, now=NOW).quotas == {}


# ---- runs against the simulator --------------------------------------------------------------


def _sim_table(directory: Path, spec: str) -> Path:
    path = directory / "sim.toml"
    body = f"""\
        [models."s/m"]
        usd_per_mtok = {{ input = 1.0, output = 1.0 }}
        latency_ms = {{ mean = 20, jitter = 0 }}
        {spec}
        """
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def _run(directory: Path, base_url: str, *, rows: int, models: str = "") -> batchroute.RunReport:
    write_tasks(directory, rows)
    route = 'strategy = "fixed"\nmodel = "s/m"'
    body = job_text(base_url=base_url, route=route, models=models, run_extra="max_attempts = 6")
    body = body.replace("concurrency = 16", "concurrency = 64")
    return batchroute.run(batchroute.load_job(write_job(directory, body)))


def test_a_job_without_rpm_learns_the_limit_and_keeps_under_it(tmp_path: Path) -> None:
    # The key is 95% spent: 150 of 3,000 requests remain and the rest free over the minute.
    # A client that ignores the headers sends 64 at a time and meets a wall of 429s.
    table = _sim_table(tmp_path, "rpm = 3000\nspent = 0.95")
    with running_simulator(models=table) as sim:
        report = _run(tmp_path, sim.base_url, rows=400)
        book = sim.ledger()["models"]["s/m"]
    results = read_results(report.results_path)
    calls = read_calls(report.results_path)
    assert results["status"].to_list() == ["ok"] * 400
    assert book["errors"]["429"] <= 4, book  # under 1% of the calls
    assert set(calls["limit_requests"].drop_nulls()) == {3000}
    assert report.summary["limits_seen"] == {"s/m": {"requests": 3000}}


def test_anthropic_headers_and_separate_input_limit_are_learned(tmp_path: Path) -> None:
    # Input tokens are the binding limit: 10% of 6,000 remain, 90 a second free up.
    table = _sim_table(
        tmp_path, 'itpm = 6000\notpm = 100000\nspent = 0.9\nheader_style = "anthropic"'
    )
    with running_simulator(models=table) as sim:
        report = _run(tmp_path, sim.base_url, rows=60)
        book = sim.ledger()["models"]["s/m"]
    results = read_results(report.results_path)
    assert results["status"].to_list() == ["ok"] * 60
    assert book["errors"]["429"] <= 1, book
    seen = report.summary["limits_seen"]["s/m"]
    assert seen == {"input_tokens": 6000, "output_tokens": 100000}


def test_the_job_limit_wins_when_lower(tmp_path: Path) -> None:
    # The server allows 6,000 rpm; the job says 600: no minute may hold more than 600.
    table = _sim_table(tmp_path, "rpm = 6000")
    models = '[models."s/m"]\nrpm = 600\n'
    with running_simulator(models=table) as sim:
        report = _run(tmp_path, sim.base_url, rows=30, models=models)
    calls = read_calls(report.results_path).sort("started_at")
    started = calls["started_at"].to_list()
    # 600 rpm is 10 a second, from a bucket started full: 30 calls span about 2.9 s, not 0.
    assert (started[-1] - started[0]).total_seconds() >= 2.5


def test_limits_job_ignores_the_headers(tmp_path: Path) -> None:
    # limits = "job" and no rpm: nothing paces, the spent key answers 429s (and the calls
    # table still records what the headers said).
    table = _sim_table(tmp_path, "rpm = 3000\nspent = 0.98")
    models = '[models."s/m"]\nlimits = "job"\n'
    with running_simulator(models=table) as sim:
        report = _run(tmp_path, sim.base_url, rows=200, models=models)
        book = sim.ledger()["models"]["s/m"]
    assert book["errors"]["429"] > 10
    assert set(read_calls(report.results_path)["limit_requests"].drop_nulls()) == {3000}


# ---- hostile headers -----------------------------------------------------------------------


def test_garbled_limit_headers_are_ignored_with_one_warning(
    tmp_path: Path, hostile: HostileServer, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {
        "x-ratelimit-limit-requests": "NaN",
        "x-ratelimit-remaining-requests": "-4",
        "anthropic-ratelimit-input-tokens-limit": "1e999",
        "anthropic-ratelimit-input-tokens-remaining": "5",
        "anthropic-ratelimit-input-tokens-reset": "yesterday",
    }
    hostile.script = lambda request: Answer(json=completion("ok"), headers=headers)
    job = hostile_job(tmp_path, hostile, rows=8)
    with caplog.at_level(logging.WARNING):
        ran = run_job(job)
    assert set(ran.results["status"]) == {"ok"}
    assert ran.calls["limit_requests"].null_count() == ran.calls.height
    warned = [r.getMessage() for r in caplog.records if "not a usable limit" in r.getMessage()]
    named = {m.split("the header ")[1].split(" ")[0] for m in warned}
    assert len(warned) == len(named)  # once per header, not once per call
    assert "x-ratelimit-limit-requests" in named
    assert "anthropic-ratelimit-input-tokens-limit" in named


def test_a_huge_limit_does_not_unpace_a_job_limit(tmp_path: Path, hostile: HostileServer) -> None:
    # The server claims a billion rpm; the job's 120 rpm (2 a second) still holds.
    headers = {
        "x-ratelimit-limit-requests": "1000000000",
        "x-ratelimit-remaining-requests": "1000000000",
        "x-ratelimit-reset-requests": "0s",
    }
    hostile.script = lambda request: Answer(json=completion("ok"), headers=headers)
    job = hostile_job(tmp_path, hostile, rows=6, models='[models."h/model"]\nrpm = 120\n')
    ran = run_job(job)
    started = ran.calls.sort("started_at")["started_at"].to_list()
    assert (started[-1] - started[0]).total_seconds() >= 2.0
    assert ran.results.filter(pl.col("status") == "ok").height == 6


# ---- one cool-down per model ---------------------------------------------------------------


def test_after_a_429_every_row_waits_the_named_window(
    tmp_path: Path, hostile: HostileServer
) -> None:
    # The server refuses everything for 2 s after the first request, naming the time left.
    # Paced at 600 rpm (limits = "job": nothing learned), each row used to meet the wall on
    # its own: about 20 429s. With one cool-down per model, the first 429 stops every row.
    opened: list[float] = []

    def wall(request: object) -> Answer:
        now = time.monotonic()
        opened.append(opened[0] if opened else now)
        left = opened[0] + 2.0 - now
        if left > 0:
            headers = {"retry-after-ms": str(max(1, int(left * 1000)))}
            return Answer(429, json={"error": {"message": "slow down"}}, headers=headers)
        return Answer(json=completion("ok"))

    hostile.script = wall
    models = '[models."h/model"]\nrpm = 600\nlimits = "job"\n'
    job = hostile_job(tmp_path, hostile, rows=30, models=models, concurrency=16)
    ran = run_job(job)
    assert set(ran.results["status"]) == {"ok"}
    refused = ran.calls.filter(pl.col("status_code") == 429)
    assert refused.height <= 2, refused.select("row_id", "started_at")


# ---- pacing to what the headers said, on a virtual clock -----------------------------------


async def _times_after(quota: Quota, n: int, *, limits: str = "both") -> list[float]:
    """A model told `quota` by its first answer; when each of `n` later calls goes out."""
    model = ModelLimits("m", config=ModelConfig(limits=limits))  # type: ignore[arg-type]
    async with model.call(prompt_tokens=1, max_tokens=1) as first:
        model.observe(_openai_headers(quota), reservation=first, ok=True)
    start, times = now(), []
    for _ in range(n):
        async with model.call(prompt_tokens=1, max_tokens=1):
            times.append(now() - start)
    return times


def _openai_headers(quota: Quota) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(quota.limit),
        "x-ratelimit-remaining-requests": str(quota.remaining),
        "x-ratelimit-reset-requests": f"{quota.reset_s}s",
    }


def test_spent_quota_refills_by_its_reset_not_at_the_limit() -> None:
    # 6,000 rpm is 100 a second, but nothing remains and the quota is full again only in
    # 120 s: 50 a second come free, and no faster is sent.
    times, _ = run_virtual(_times_after, Quota(6000, 0, 120.0), 10)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([0.02] * 9, abs=1e-6)


def test_a_fresh_quota_is_paced_at_the_limit() -> None:
    times, _ = run_virtual(_times_after, Quota(600, 599, 0.1), 10)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([0.1] * 9, abs=1e-6)


def test_limits_job_ignores_what_the_headers_say() -> None:
    times, _ = run_virtual(_times_after, Quota(60, 0, 60.0), 5, limits="job")
    assert times == pytest.approx([0.0] * 5, abs=1e-9)
