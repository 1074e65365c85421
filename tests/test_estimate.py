"""`batchroute estimate`: figures from the job alone, and a real sample that the run reuses."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from helpers import job_text, run_cli, write_job, write_tasks

from batchroute import load_job, read_calls
from batchroute.estimate import estimate, wilson
from batchroute.sim import SimulatorHandle

MODELS = """
[models."t/cheap"]
rpm = 600
usd_per_mtok = { input = 0.2, output = 0.8 }
[models."t/strong"]
tpm = 100_000
usd_per_mtok = { input = 4.0, output = 20.0 }
"""
CASCADE = 'strategy = "cascade"\ntiers = ["t/cheap", "t/strong"]'
PARAMS = """
[params]
max_tokens = 50
response_format = { type = "json_object" }
[check]
type = "json_schema"
schema = { type = "object", properties = { confidence = { type = "number", minimum = 0.6 } } }
"""


def test_estimate_prices_each_tier_from_tokens_and_limits(tmp_path: Path) -> None:
    write_tasks(tmp_path, 300)
    job_path = write_job(
        tmp_path, job_text(base_url="embedded", route=CASCADE, models=MODELS, extra=PARAMS)
    )
    rows, tiers = estimate(load_job(job_path), escalation_rate=0.25)
    assert rows == 300
    cheap, strong = tiers
    assert cheap.rows == 300 and strong.rows == 75
    assert cheap.completion_tokens == 300 * 50
    assert strong.prompt_tokens == pytest.approx(cheap.prompt_tokens * 0.25)
    assert cheap.usd == pytest.approx((cheap.prompt_tokens * 0.2 + 300 * 50 * 0.8) / 1e6)
    assert cheap.minutes == pytest.approx(300 / 600)  # the rpm floor
    assert strong.minutes == pytest.approx((strong.prompt_tokens + 75 * 50) / 100_000)

    done = run_cli("estimate", job_path, "--escalation", "0.25")
    assert done.returncode == 0, done.stderr
    assert f"total: at most ${cheap.usd + strong.usd:.4f}" in done.stdout  # type: ignore[operator]


def test_separate_input_and_output_token_limits_are_floors_too(tmp_path: Path) -> None:
    # Anthropic-style limits: 300 rows of 50 output tokens at otpm 5,000 take at least three
    # minutes, however high the request and input limits are.
    write_tasks(tmp_path, 300)
    models = MODELS.replace("rpm = 600", "rpm = 60_000\nitpm = 1_000_000\notpm = 5_000")
    job_path = write_job(
        tmp_path, job_text(base_url="embedded", route=CASCADE, models=models, extra=PARAMS)
    )
    _, (cheap, _) = estimate(load_job(job_path), escalation_rate=0.25)
    assert cheap.minutes == pytest.approx(300 * 50 / 5_000)
    tight_input = MODELS.replace("rpm = 600", "itpm = 1_000")
    write_job(
        tmp_path, job_text(base_url="embedded", route=CASCADE, models=tight_input, extra=PARAMS)
    )
    _, (cheap, _) = estimate(load_job(job_path), escalation_rate=0.25)
    assert cheap.minutes == pytest.approx(cheap.prompt_tokens / 1_000)


def test_sample_runs_rows_for_real_and_the_full_run_does_not_pay_them_again(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 60)
    job_path = write_job(
        tmp_path, job_text(base_url=fresh_sim.base_url, route=CASCADE, models=MODELS, extra=PARAMS)
    )
    done = run_cli("estimate", job_path, "--sample", "20")
    assert done.returncode == 0, done.stderr
    assert "sampled 20 rows" in done.stdout and "(95%)" in done.stdout
    sampled = fresh_sim.ledger()["total_charged_usd"]
    assert sampled > 0
    assert not (tmp_path / "out/results.parquet").exists()  # a sample writes no output

    fresh_sim.reset()
    assert run_cli("run", job_path).returncode == 0
    calls = read_calls(tmp_path / "out/results.parquet")
    first_20 = [f"task-{i:04d}" for i in range(20)]
    assert calls.filter(pl.col("row_id").is_in(first_20))["cached"].all()
    assert not calls.filter(~pl.col("row_id").is_in(first_20))["cached"].any()
    new = calls.filter(~pl.col("cached"))["charge_usd"].sum()
    assert new == pytest.approx(fresh_sim.ledger()["total_charged_usd"], abs=1e-9)


def test_bad_estimate_arguments_are_one_line_errors(tmp_path: Path) -> None:
    write_tasks(tmp_path, 3)
    job_path = write_job(tmp_path, job_text(base_url="embedded", route=CASCADE, models=MODELS))
    done = run_cli("estimate", job_path, "--escalation", "1.5")
    assert done.returncode == 2 and "--escalation" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_wilson_interval() -> None:
    low, high = wilson(0, 50)
    assert low == 0 and 0.05 < high < 0.1
    low, high = wilson(25, 50)
    assert low < 0.5 < high and high - low == pytest.approx(0.27, abs=0.01)


def test_estimate_follows_the_rules_and_counts_the_classifier(tmp_path: Path) -> None:
    write_tasks(tmp_path, 90)  # task_type cycles classify, extract, summarize
    rules = """
    strategy = "rules"
    default = "t/cheap"
    [[route.rules]]
    when = "task_type = 'summarize'"
    target = "t/strong"
    """
    job = load_job(write_job(tmp_path, job_text(base_url="embedded", route=rules, models=MODELS)))
    _, tiers = estimate(job, escalation_rate=0.5)
    by_model = {t.model: t.rows for t in tiers}
    assert by_model == {"t/strong": 30, "t/cheap": 60}  # as the rule splits the data

    classifier = """
    strategy = "classifier"
    default = "t/cheap"
    [route.classifier]
    model = "t/cheap"
    prompt = "Reply 'easy' or 'hard': {text}"
    labels = { easy = "t/cheap", hard = "t/strong" }
    """
    body = job_text(base_url="embedded", route=classifier, models=MODELS)
    job = load_job(write_job(tmp_path, body, name="classifier.toml"))
    _, tiers = estimate(job, escalation_rate=0.5)
    asked = [t for t in tiers if t.plan == "classifier"]
    assert len(asked) == 1 and asked[0].rows == 90 and asked[0].completion_tokens == 90 * 16
    answered = {t.model: t.rows for t in tiers if t.plan != "classifier"}
    assert answered == {"t/cheap": 45, "t/strong": 45}  # labels unknown: shared evenly
