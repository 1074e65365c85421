"""A batch tier end to end over real HTTP: same answers as online, at the batch price; cascades
across modes; expired and failed lines retried in a new batch or online; the deadline rule."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from helpers import SIM_MODELS, SIM_SEED, job_text, write_job, write_sim_models, write_tasks

from batchroute import load_job, read_calls, read_results
from batchroute.options import RunOptions
from batchroute.runner import RunReport, run
from batchroute.sim import SimulatorHandle, running_simulator

pytestmark = pytest.mark.timeout(120)

PRICES = """
[models."t/cheap"]
usd_per_mtok = {{ input = 0.2, output = 0.8 }}
{cheap}
[models."t/strong"]
usd_per_mtok = {{ input = 4.0, output = 20.0 }}
{strong}
"""
CASCADE = 'strategy = "cascade"\ntiers = ["t/cheap", "t/strong"]'
FIXED = 'strategy = "fixed"\nmodel = "t/cheap"'
CHECK = """
[params]
max_tokens = 40
response_format = { type = "json_object" }

[check]
type = "json_schema"
schema = { type = "object", properties = { confidence = { type = "number", minimum = 0.6 } } }
"""
COMPARED = ["row_id", "status", "answer", "model", "escalated", "tiers_tried"]


def _sim(directory: Path, batch: str) -> Iterator[SimulatorHandle]:
    models = write_sim_models(directory, SIM_MODELS + "\n[batch]\n" + batch)
    with running_simulator(models=models, seed=SIM_SEED) as handle:
        yield handle


@pytest.fixture(scope="module")
def bsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    yield from _sim(tmp_path_factory.mktemp("bsim"), "latency_s = 0.3\n")


@pytest.fixture(scope="module")
def flaky_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    batch = "latency_s = 0.2\nfail_rate = 0.25\nexpire_rate = 0.25\n"
    yield from _sim(tmp_path_factory.mktemp("flaky"), batch)


def _job(
    directory: Path,
    sim: SimulatorHandle,
    *,
    route: str,
    cheap: str = "",
    strong: str = "",
    run_extra: str = "concurrency = 200",
    name: str = "job.toml",
) -> Path:
    models = PRICES.format(cheap=cheap, strong=strong)
    body = job_text(
        base_url=sim.base_url, route=route, models=models, extra=CHECK, run_extra=""
    ).replace("concurrency = 16", run_extra)
    body = body.replace("out/results.parquet", f"out/{Path(name).stem}.parquet")
    return write_job(directory, body, name=name)


def _run(job: Path) -> RunReport:
    # No cache: the jobs of a test share a store, and each must make its own calls.
    return run(load_job(job), RunOptions(cache="off"))


def _batches(sim: SimulatorHandle) -> int:
    return int(sim.ledger()["batches"]["batches"])


def test_a_batch_tier_gives_the_online_answers_at_half_the_cost(
    tmp_path: Path, bsim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 60)
    online = _run(_job(tmp_path, bsim, route=FIXED, name="online.toml"))
    bsim.reset()
    batch = _run(_job(tmp_path, bsim, route=FIXED, cheap='mode = "batch"', name="batch.toml"))
    assert _batches(bsim) == 1  # 60 rows, concurrency 200: one file
    expected = read_results(online.results_path)
    results = read_results(batch.results_path)
    assert results.select(COMPARED).equals(expected.select(COMPARED))
    assert (results["status"] == "ok").all()
    ratio = results["cost_usd"].sum() / expected["cost_usd"].sum()
    assert ratio == pytest.approx(0.5, rel=1e-6)
    # What we recorded is what the provider charged for the batch.
    assert results["cost_usd"].sum() == pytest.approx(bsim.ledger()["total_charged_usd"])
    calls = read_calls(batch.results_path)
    assert (calls["cost_source"] == "price_table").all() and calls.height == 60
    assert "t/cheap batch (1 batches)" in batch.summary_line


def test_a_cascade_escalates_batch_to_batch_and_batch_to_online(
    tmp_path: Path, bsim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 80)
    online = read_results(
        _run(_job(tmp_path, bsim, route=CASCADE, name="online.toml")).results_path
    )
    assert online["escalated"].any() and not online["escalated"].all()
    for strong, batches in (('mode = "batch"', 2), ("", 1)):
        bsim.reset()
        job = _job(
            tmp_path, bsim, route=CASCADE, cheap='mode = "batch"', strong=strong, name=f"b{batches}"
        )
        report = _run(job)
        results = read_results(report.results_path)
        assert results.select(COMPARED).equals(online.select(COMPARED))
        # The second batch holds only the escalated rows.
        assert _batches(bsim) == batches
        assert bsim.ledger()["batches"]["lines"] == 80 + (online["escalated"].sum() if
                                                          batches == 2 else 0)  # fmt: skip


@pytest.mark.parametrize("fallback", ["batch", "online"])
def test_expired_and_failed_lines_are_retried(
    tmp_path: Path, flaky_sim: SimulatorHandle, fallback: str
) -> None:
    write_tasks(tmp_path, 60)
    flaky_sim.reset()
    cheap = f'mode = "batch"\nbatch_fallback = "{fallback}"'
    report = _run(
        _job(
            tmp_path,
            flaky_sim,
            route=FIXED,
            cheap=cheap,
            run_extra="concurrency = 100\nmax_attempts = 8",
        )  # fmt: skip
    )
    results = read_results(report.results_path)
    assert (results["status"] == "ok").all()
    calls = read_calls(report.results_path)
    failed = calls.filter(pl.col("status_code") != 200)
    assert set(failed["status_code"].to_list()) == {408, 500}
    assert set(failed["error_kind"].to_list()) == {"http_408", "http_500"}
    ledger = flaky_sim.ledger()
    retried = calls.filter(pl.col("attempt") > 1)
    if fallback == "online":
        assert _batches(flaky_sim) == 1
        # The retries went online, at the full price: the provider saw them as requests.
        assert ledger["batches"]["lines"] == 60
        assert ledger["models"]["t/cheap"]["requests"] == 60 + retried.height
    else:
        assert _batches(flaky_sim) > 1
        assert ledger["batches"]["lines"] == 60 + retried.height
    assert results["cost_usd"].sum() == pytest.approx(ledger["total_charged_usd"])


def test_a_deadline_before_the_window_runs_the_tier_online(
    tmp_path: Path, bsim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 10)
    bsim.reset()
    job = _job(tmp_path, bsim, route=FIXED, cheap='mode = "batch"', run_extra='deadline = "6h"')
    report = _run(job)
    assert _batches(bsim) == 0
    assert bsim.ledger()["models"]["t/cheap"]["requests"] == 10
    assert "t/cheap online (run.deadline 6h is before its 24h window)" in report.summary_line
    job = _job(tmp_path, bsim, route=FIXED, cheap='mode = "batch"', run_extra='deadline = "2d"',
               name="late.toml")  # fmt: skip
    _run(job)
    assert _batches(bsim) == 1


def test_a_batch_over_the_file_limits_is_split(tmp_path: Path, bsim: SimulatorHandle) -> None:
    write_tasks(tmp_path, 60)
    online = read_results(_run(_job(tmp_path, bsim, route=FIXED, name="online.toml")).results_path)
    bsim.reset()
    cheap = 'mode = "batch"\nbatch_max_requests = 25'
    report = _run(_job(tmp_path, bsim, route=FIXED, cheap=cheap, name="split.toml"))
    assert _batches(bsim) == 3  # 25 + 25 + 10 requests
    assert "(3 batches)" in report.summary_line
    assert read_results(report.results_path).select(COMPARED).equals(online.select(COMPARED))
