"""Every check type passing and failing in a real run: one plan per check, picked by a rule.
The runs answer on the in-process simulator: checks are the subject here, not HTTP.

The simulator is deterministic, so each row's verdict is recomputed here from its answer (or,
for logprobs and the judge, from what the simulator is known to say) and compared.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import polars as pl
import pytest
from helpers import job_text, make_tasks, sim_draw, write_job
from inprocess import InProcessSim

from batchroute import read_calls, read_results
from batchroute.errors import BatchrouteError
from batchroute.sim import expected_answer

pytestmark = pytest.mark.timeout(120)

FOUR = '["billing", "refund", "shipping", "bug"]'
JSON = 'params = { max_tokens = 50, response_format = { type = "json_object" } }'
PLANS = {
    "choices": f'tiers = ["t/strong"]\ncheck = {{ type = "choices", choices = {FOUR} }}',
    "choices_json": f'tiers = ["t/strong"]\n{JSON}\n'
    f'check = {{ type = "choices", path = "answer", choices = {FOUR} }}',
    "confidence": f'tiers = ["t/cheap"]\n{JSON}\n'
    'check = { type = "confidence", path = "$.confidence", threshold = 0.6 }',
    "logprobs": 'tiers = ["t/cheap"]\nparams = { logprobs = true }\n'
    'check = { type = "confidence", logprobs = true, threshold = -0.3 }',
    "min_length": 'tiers = ["t/strong"]\ncheck = { type = "min_length", chars = 7 }',
    "max_length": 'tiers = ["t/strong"]\ncheck = { type = "max_length", chars = 5 }',
    "regex": 'tiers = ["t/strong"]\ncheck = { type = "regex", pattern = "^(bug|other|cancel)$" }',
    "python": 'tiers = ["t/cheap"]\n'
    'check = { type = "python", function = "row_checks:is_expected" }',
    "python_raises": 'tiers = ["t/cheap", "t/strong"]\n'
    'check = { type = "python", function = "row_checks:explodes" }',
    "judge": 'tiers = ["t/cheap"]\ncheck = { type = "judge", model = "t/strong", '
    'prompt = "Grade the label {answer} for \'{text}\'", score_path = "confidence", '
    "threshold = 0.8 }",
}
ROW_CHECKS = """
def is_expected(row, answer):
    return answer == row["expected"], f"expected {row['expected']}"


def explodes(row, answer):
    raise ValueError(f"no tests for {row['task_id']}")
"""


def _passes(case: str, answer: str, row: dict[str, str]) -> bool:
    """What each plan's check should say about `answer`, from the answer alone."""
    word = json.loads(answer)["answer"] if case in ("choices_json", "confidence") else answer
    if case in ("choices", "choices_json"):
        return word in ("billing", "refund", "shipping", "bug")
    if case == "confidence":
        return bool(json.loads(answer)["confidence"] >= 0.6)
    if case in ("logprobs", "python"):  # right answers have logprobs near 0; wrong ones do not
        return word == row["expected"]
    if case == "min_length":
        return len(word) >= 7
    if case == "max_length":
        return len(word) <= 5
    if case == "regex":
        return word in ("bug", "other", "cancel")
    assert case == "judge"
    rubric = f"Grade the label {answer} for '{row['text']}'"
    return sim_draw(rubric, "t/strong").confidence >= 0.8


def test_each_check_passes_and_fails_where_it_should(
    tmp_path: Path, inproc_sim: InProcessSim
) -> None:
    cases = list(PLANS)
    frame = make_tasks(12 * len(cases)).with_columns(
        case=pl.Series([cases[i % len(cases)] for i in range(12 * len(cases))])
    )
    frame = frame.with_columns(
        expected=pl.Series([expected_answer(f"Label: {t}") for t in frame["text"]])
    )
    frame.write_parquet(tmp_path / "tasks.parquet")
    (tmp_path / "row_checks.py").write_text(textwrap.dedent(ROW_CHECKS), encoding="utf-8")
    rules = "".join(
        f'\n[[route.rules]]\nname = "{c}"\nwhen = "case = \'{c}\'"\ntarget = "{c}"\n' for c in cases
    )
    plans = "".join(f"\n[plans.{c}]\n{body}\n" for c, body in PLANS.items())
    route = f'strategy = "rules"\ndefault = "t/cheap"\n{rules}'
    body = job_text(base_url=inproc_sim.base_url, route=route, extra=plans)
    assert inproc_sim.run(write_job(tmp_path, body)).stop_error is None
    results = read_results(tmp_path / "out/results.parquet")
    calls = read_calls(tmp_path / "out/results.parquet")
    assert set(results["status"]) == {"ok"} and results["plan"].to_list() == frame["case"].to_list()

    for case in cases:
        rows = results.filter(pl.col("case") == case)
        if case == "python_raises":
            continue
        want = [_passes(case, r["answer"], r) for r in rows.iter_rows(named=True)]
        assert rows["check_passed"].to_list() == want, case
        assert True in want and False in want, f"{case}: both verdicts should occur"

    # A check that raises fails the answer with the exception as the reason; the row lives.
    raised = results.filter(pl.col("case") == "python_raises")
    assert raised["escalated"].all() and not raised["check_passed"].any()
    assert raised["model"].to_list() == ["t/strong"] * raised.height
    reasons = [
        f"python failed on t/cheap: raised ValueError: no tests for {task}"
        for task in raised["task_id"]
    ]
    assert raised["escalation_reason"].to_list() == reasons

    # The judge's calls are calls like any other: in the calls table, charged to the row.
    judged = results.filter(pl.col("case") == "judge")
    judge_calls = calls.filter(pl.col("purpose") == "judge")
    assert judge_calls.height == judged.height and set(judge_calls["model"]) == {"t/strong"}
    assert (judged["calls"] == 2).all()
    per_row = calls.group_by("row_id").agg(pl.col("charge_usd").sum())
    joined = results.join(per_row, on="row_id")
    assert (joined["cost_usd"] - joined["charge_usd"]).abs().max() < 1e-12
    # The logprobs the check read are in the calls table.
    logprob_rows = set(results.filter(pl.col("case") == "logprobs")["row_id"])
    with_logprobs = calls.filter(pl.col("mean_logprob").is_not_null())
    assert set(with_logprobs["row_id"]) == logprob_rows


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (
            '{ type = "python", function = "missing_module:f" }',
            "plans.p.check.function: cannot import 'missing_module': ModuleNotFoundError",
        ),
        (
            '{ type = "python", function = "row_checks:nope" }',
            "plans.p.check.function: 'row_checks' has no function 'nope'",
        ),
        ('{ type = "regex", pattern = "(" }', "plans.p.check.pattern: not a valid regular"),
        ('{ type = "shouting" }', "plans.p.check.type: Input should be 'json_schema'"),
    ],
)
def test_a_check_that_cannot_work_is_a_config_error(
    tmp_path: Path, inproc_sim: InProcessSim, check: str, message: str
) -> None:
    make_tasks(3).write_parquet(tmp_path / "tasks.parquet")
    (tmp_path / "row_checks.py").write_text(textwrap.dedent(ROW_CHECKS), encoding="utf-8")
    route = 'strategy = "rules"\ndefault = "p"\n[[route.rules]]\nwhen = "true"\ntarget = "p"\n'
    extra = f'[plans.p]\ntiers = ["t/cheap"]\ncheck = {check}\n'
    job = write_job(tmp_path, job_text(base_url=inproc_sim.base_url, route=route, extra=extra))
    with pytest.raises(BatchrouteError) as error:
        inproc_sim.run(job)
    # What the CLI prints as `batchroute: error: <this>` before it exits with this code.
    assert error.value.exit_code == 2
    assert str(error.value).startswith(f"{job}: {message}"), error.value
    assert len(str(error.value).strip().splitlines()) == 1
