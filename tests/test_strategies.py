"""Routing strategies end to end: rules, classifier and composed plans, on the in-process
simulator (routing is the subject here, not HTTP)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from helpers import job_text, make_tasks, sim_draw, write_job
from inprocess import InProcessSim

from batchroute import read_calls, read_metadata, read_results
from batchroute.errors import BatchrouteError

pytestmark = pytest.mark.timeout(120)

RULES = """
strategy = "rules"
default = "t/cheap"

[[route.rules]]
name = "urgent"
when = "priority >= 3"
target = "t/strong"

[[route.rules]]
when = "task_type = 'summarize' AND length(text) < 56"
target = "ladder"
"""
LADDER = """
[plans.ladder]
tiers = ["t/cheap", "t/strong"]
params = { max_tokens = 50, response_format = { type = "json_object" } }

[[plans.ladder.check]]
type = "choices"
path = "answer"
choices = ["billing", "refund", "shipping", "bug", "account", "cancel", "feature", "other"]

[[plans.ladder.check]]
type = "confidence"
path = "confidence"
threshold = 0.7
"""


def _tasks_with_priority(tmp_path: Path, n: int) -> pl.DataFrame:
    frame = make_tasks(n).with_columns(
        priority=pl.Series([None if i % 4 == 0 else i % 5 for i in range(n)], dtype=pl.Int64)
    )
    frame.write_parquet(tmp_path / "tasks.parquet")
    return frame


def _expected_rule(row: dict[str, object]) -> str:
    priority, text = row["priority"], str(row["text"])
    if isinstance(priority, int) and priority >= 3:  # a null priority is not urgent
        return "urgent"
    if row["task_type"] == "summarize" and len(text) < 56:
        return "rule 2"
    return "default"


def test_rules_send_each_row_to_its_first_matching_rule_and_compose_with_plans(
    tmp_path: Path, inproc_sim: InProcessSim
) -> None:
    frame = _tasks_with_priority(tmp_path, 60)
    job = write_job(tmp_path, job_text(base_url=inproc_sim.base_url, route=RULES, extra=LADDER))
    assert inproc_sim.run(job).stop_error is None
    results = read_results(tmp_path / "out/results.parquet")

    expected = [_expected_rule(row) for row in frame.iter_rows(named=True)]
    assert results["rule"].to_list() == expected
    assert {"urgent", "rule 2", "default"} == set(expected)
    plan_of = {"urgent": "fixed:t/strong", "rule 2": "ladder", "default": "fixed:t/cheap"}
    assert results["plan"].to_list() == [plan_of[r] for r in expected]

    by_rule = {r: results.filter(pl.col("rule") == r) for r in plan_of}
    assert set(by_rule["urgent"]["model"]) == {"t/strong"}
    assert set(by_rule["default"]["model"]) == {"t/cheap"}
    # Model targets have the job's check (none); the named plan has its own two.
    assert by_rule["default"]["check_passed"].is_null().all()
    ladder = by_rule["rule 2"]
    assert ladder["check_passed"].is_not_null().all()
    escalated = ladder.filter(pl.col("escalated"))
    assert 0 < escalated.height < ladder.height
    assert set(escalated["model"]) == {"t/strong"}
    # Every cheap answer is a valid label, so it is the confidence check that escalates.
    assert escalated["escalation_reason"].str.starts_with("confidence failed on t/cheap").all()

    summary = read_metadata(tmp_path / "out/results.parquet")["summary"]
    assert {k: v["rows"] for k, v in summary["routes"].items()} == {
        r: expected.count(r) for r in plan_of
    }
    assert read_metadata(tmp_path / "out/results.parquet")["strategy"] == "rules"


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("task_type = ", 'when "task_type = ": not a SQL expression polars can read'),
        (
            "tier = 'enterprise'",
            "names column 'tier', which is not in the dataset (columns: task_id, task_type,",
        ),
        ("priority + 1", "gives Int64, not true/false"),
        ("task_type > 3", "cannot be evaluated on the dataset"),
    ],
)
def test_a_bad_rule_stops_the_run_before_any_call(
    tmp_path: Path, inproc_sim: InProcessSim, when: str, message: str
) -> None:
    _tasks_with_priority(tmp_path, 5)
    route = RULES.replace("length(text) < 56", "true").replace(
        "when = \"task_type = 'summarize' AND true\"", f'when = "{when}"'
    )
    job = write_job(tmp_path, job_text(base_url=inproc_sim.base_url, route=route, extra=LADDER))
    with pytest.raises(BatchrouteError) as error:
        inproc_sim.run(job)
    # What the CLI prints as `batchroute: error: <this>` before it exits with this code.
    assert error.value.exit_code == 2
    lines = str(error.value).splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{job}: route.rules: rule 2 ('rule 2'): ")
    assert message in lines[0]
    assert all(m["requests"] == 0 for m in inproc_sim.ledger()["models"].values())
    assert not (tmp_path / "out").exists()


CLASSIFIER = """
strategy = "classifier"
default = "t/cheap"

[route.classifier]
model = "t/strong"
prompt = "Which team handles this? {text}"
labels = { " Billing! " = "t/strong", refund = "premium", shipping = "t/strong", bug = "premium" }
"""
PREMIUM = """
[plans.premium]
tiers = ["t/strong"]
params = { max_tokens = 20 }
"""


def test_classifier_labels_pick_plans_and_its_calls_are_charged_to_the_row(
    tmp_path: Path, inproc_sim: InProcessSim
) -> None:
    frame = make_tasks(40)
    frame.write_parquet(tmp_path / "tasks.parquet")
    body = job_text(base_url=inproc_sim.base_url, route=CLASSIFIER, extra=PREMIUM)
    report = inproc_sim.run(write_job(tmp_path, body))
    assert report.stop_error is None
    results = read_results(tmp_path / "out/results.parquet")
    calls = read_calls(tmp_path / "out/results.parquet")

    # The simulator is deterministic, so each row's label is known before the run.
    labels = [sim_draw(f"Which team handles this? {t}", "t/strong").word for t in frame["text"]]
    assert results["label"].to_list() == labels
    plan_of = {"billing": "fixed:t/strong", "shipping": "fixed:t/strong", "refund": "premium"}
    plan_of["bug"] = "premium"
    expected_plans = [plan_of.get(label, "fixed:t/cheap") for label in labels]
    assert results["plan"].to_list() == expected_plans
    unknown = sum(label not in plan_of for label in labels)
    assert 0 < unknown < len(labels)

    classifier_calls = calls.filter(pl.col("purpose") == "classifier")
    assert classifier_calls.height == 40 and set(classifier_calls["model"]) == {"t/strong"}
    per_row = classifier_calls.group_by("row_id").agg(pl.col("charge_usd").sum())
    joined = results.join(per_row, on="row_id")
    assert (joined["classifier_cost_usd"] - joined["charge_usd"]).abs().max() < 1e-12
    all_calls = calls.group_by("row_id").agg(pl.col("charge_usd").sum().alias("all_usd"))
    joined = results.join(all_calls, on="row_id")
    assert (joined["cost_usd"] - joined["all_usd"]).abs().max() < 1e-12
    assert (results["calls"] == 2).all()
    ledger = inproc_sim.ledger()
    assert results["cost_usd"].sum() == pytest.approx(ledger["total_charged_usd"], abs=1e-9)

    summary = read_metadata(tmp_path / "out/results.parquet")["summary"]
    assert summary["unknown_labels"] == unknown
    assert summary["routes"]["default"]["rows"] == unknown
    # The line the CLI prints at the end of a run.
    assert f"{unknown} unknown labels sent to the default" in report.summary_line


@pytest.mark.parametrize(
    ("label", "problem"),
    [
        ('"BILLING"', "'BILLING' repeats another label once normalised"),
        ('"Default."', "'Default.' is 'default', the summary's name for unlabelled rows,"),
        ('"?!"', "'?!' is empty once normalised"),
    ],
)
def test_a_classifier_label_that_cannot_be_told_apart_is_a_config_error(
    tmp_path: Path, inproc_sim: InProcessSim, label: str, problem: str
) -> None:
    make_tasks(3).write_parquet(tmp_path / "tasks.parquet")
    route = CLASSIFIER.replace('refund = "premium"', f'{label} = "premium"')
    job = write_job(tmp_path, job_text(base_url=inproc_sim.base_url, route=route, extra=PREMIUM))
    with pytest.raises(BatchrouteError) as error:
        inproc_sim.run(job)
    assert error.value.exit_code == 2
    assert f"{job}: route.classifier.labels: {problem}" in str(error.value)
