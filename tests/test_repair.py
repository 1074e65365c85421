"""Repair turns on the simulator: answers that fail a format check, then pass after repair."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from helpers import job_text, run_cli, write_job, write_tasks

from batchroute import compare, read_calls, read_metadata, read_results
from batchroute.sim import SimulatorHandle, running_simulator

pytestmark = pytest.mark.timeout(180)

SCHEMA = (
    '{ type = "object", required = ["answer", "confidence"], properties = { answer = '
    '{ type = "string" }, confidence = { type = "number" } } }'
)
JSON_SCHEMA = f"""
[params]
max_tokens = 60
response_format = {{ type = "json_schema", name = "label", schema = {SCHEMA} }}

[check]
type = "json_schema"
"""
ROWS = 60


def _run(
    tmp_path: Path, sim: SimulatorHandle, *, route: str, repairs: int, extra: str = JSON_SCHEMA
) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    write_tasks(tmp_path, ROWS)
    body = job_text(
        base_url=sim.base_url,
        route=route,
        run_extra=f"repair_attempts = {repairs}",
        extra=extra,
    )
    job = write_job(tmp_path, body)
    done = run_cli("run", job, "--force")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out/results.parquet"
    return read_results(out), read_calls(out), done.stdout


def test_answers_that_fail_the_schema_pass_after_a_repair_turn(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    results, calls, stdout = _run(
        tmp_path, fresh_sim, route='strategy = "fixed"\nmodel = "t/cheap"', repairs=1
    )

    repair_calls = calls.filter(pl.col("purpose") == "repair")
    repaired = results.filter(pl.col("repaired"))
    # The cheap model breaks the schema on about a third of the rows; some of those answers
    # pass once it is told what was wrong.
    assert repaired.height >= 3
    assert repaired["check_passed"].all() and (repaired["repairs"] == 1).all()
    for row in repaired.iter_rows(named=True):
        json.loads(row["answer"])  # the final answer is the repaired one, JSON
        assert row["calls"] == 2 and row["model"] == "t/cheap"
    # Exactly the rows whose first answer failed got a repair turn, one each.
    assert set(repair_calls["row_id"]) == set(results.filter(pl.col("repairs") > 0)["row_id"])
    assert repair_calls["row_id"].is_unique().all()
    first_failed = results.filter(pl.col("repairs") > 0)
    assert first_failed.height == repair_calls.height
    assert (results.filter(pl.col("repairs") == 0)["check_passed"]).all()
    # Repair calls are calls like any other: in the ledger and charged to their rows.
    ledger = fresh_sim.ledger()
    assert ledger["models"]["t/cheap"]["requests"] == ROWS + repair_calls.height
    assert results["cost_usd"].sum() == pytest.approx(ledger["total_charged_usd"], abs=1e-9)
    assert results["calls"].sum() == calls.height
    rate = repaired.height / ROWS
    repair_usd = repair_calls["charge_usd"].sum()
    assert f"repaired {rate:.1%} in {repair_calls.height} repair turns" in stdout
    assert f"costing ${repair_usd:.4f})" in stdout
    summary = read_metadata(tmp_path / "out/results.parquet")["summary"]
    assert summary["repair_cost_usd"] == pytest.approx(repair_usd)
    assert summary["repair_turns"] == repair_calls.height
    # The comparison shows the repair rate.
    table = compare([tmp_path / "out/results.parquet"])
    assert table["repair_rate"].to_list() == [pytest.approx(rate)]
    shown = run_cli("compare", tmp_path / "out/results.parquet")
    assert "repaired" in shown.stdout and f"{rate:.1%}" in shown.stdout


def test_without_repair_attempts_a_failed_answer_escalates_at_once(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    cascade = 'strategy = "cascade"\ntiers = ["t/cheap", "t/strong"]'
    results, calls, stdout = _run(tmp_path, fresh_sim, route=cascade, repairs=0)
    assert "repair" not in set(calls["purpose"]) and not results["repaired"].any()
    assert "repair turns" not in stdout
    assert "repaired" not in run_cli("compare", tmp_path / "out/results.parquet").stdout
    escalated = results["escalated"].sum()

    results, calls, _ = _run(tmp_path, fresh_sim, route=cascade, repairs=1)
    # A repaired row stays on its tier: fewer rows escalate, by exactly the repaired ones.
    repaired = results.filter(pl.col("repaired"))
    assert repaired.height >= 1 and not repaired["escalated"].any()
    assert set(repaired["model"]) == {"t/cheap"}
    assert results["escalated"].sum() == escalated - repaired.height


def test_a_content_check_is_not_repaired(tmp_path: Path, fresh_sim: SimulatorHandle) -> None:
    # A confidence under the threshold is a verdict on the content: no repair turn.
    confidence = """
[params]
max_tokens = 60
response_format = { type = "json_object" }

[check]
type = "confidence"
path = "confidence"
threshold = 0.9
"""
    results, calls, _ = _run(
        tmp_path,
        fresh_sim,
        route='strategy = "fixed"\nmodel = "t/cheap"',
        repairs=2,
        extra=confidence,
    )
    assert not results["check_passed"].all()
    assert "repair" not in set(calls["purpose"]) and (results["repairs"] == 0).all()


def test_a_choices_check_is_repaired_with_its_reason(tmp_path: Path) -> None:
    # The echo model answers with the request it received: never one of the choices, so each
    # row takes every repair turn, and its last answer shows what the last turn asked. It has
    # a prompt template of its own, which the repair conversation must continue.
    table = tmp_path / "sim.toml"
    table.write_text(
        '[models."e/echo"]\nusd_per_mtok = { input = 1.0, output = 1.0 }\n'
        "latency_ms = { mean = 0, jitter = 0 }\necho = true\n",
        encoding="utf-8",
    )
    choices = """
[params]
max_tokens = 4000  # the echo is the whole request; it must not be cut

[check]
type = "choices"
choices = ["billing", "refund"]
"""
    with running_simulator(models=table) as echo:
        write_tasks(tmp_path, 3)
        body = job_text(
            base_url=echo.base_url,
            route='strategy = "fixed"\nmodel = "e/echo"',
            run_extra="repair_attempts = 2",
            extra=choices,
            models='[models."e/echo"]\nprompt = "Own wording: {text}"',
        )
        done = run_cli("run", write_job(tmp_path, body), "--force")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out/results.parquet"
    results, calls = read_results(out), read_calls(out)
    assert results["repairs"].to_list() == [2, 2, 2] and not results["repaired"].any()
    assert calls.filter(pl.col("purpose") == "repair").height == 6
    for answer in results["answer"]:
        messages = json.loads(answer)["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
        # The row's task in the model's own wording, the answer that failed as the model's
        # own turn, then the reason, naming the choices.
        assert messages[0]["role"] == "user"
        assert messages[0]["content"].startswith("Own wording: Ticket")
        assert messages[-2]["role"] == "assistant"
        assert json.loads(messages[-2]["content"])["messages"][0] == messages[0]
        ask = messages[-1]["content"]
        assert ask.startswith("Your answer was not one of the allowed choices: ")
        assert "billing" in ask and ask.endswith("Reply with one of the choices only.")


def test_a_row_whose_repair_also_fails_escalates(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    choices = """
[params]
max_tokens = 10

[check]
type = "choices"
choices = ["billing", "refund"]
"""
    cascade = 'strategy = "cascade"\ntiers = ["t/cheap", "t/strong"]'
    results, calls, _ = _run(tmp_path, fresh_sim, route=cascade, repairs=1, extra=choices)
    unrepaired = results.filter((pl.col("repairs") == 1) & pl.col("escalated"))
    assert unrepaired.height >= 1 and not unrepaired["repaired"].any()
    for row_id in unrepaired["row_id"]:
        row_calls = calls.filter(pl.col("row_id") == row_id).sort("started_at")
        assert row_calls["purpose"].to_list() == ["answer", "repair", "answer"]
        assert row_calls["model"].to_list() == ["t/cheap", "t/cheap", "t/strong"]
        assert row_calls["tier"].to_list() == [0, 0, 1]


def test_a_schema_bound_is_content_not_form_and_is_not_repaired(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    # The demo's check: the response format's schema plus a confidence minimum. A confidence
    # under it escalates at once; prose or a missing field gets its repair turn.
    bounded = JSON_SCHEMA.replace(
        '[check]\ntype = "json_schema"\n',
        '[check]\ntype = "json_schema"\nschema = { type = "object", required = ["answer",'
        ' "confidence"], properties = { confidence = { type = "number", minimum = 0.7 } } }\n',
    )
    results, calls, _ = _run(
        tmp_path,
        fresh_sim,
        route='strategy = "cascade"\ntiers = ["t/cheap", "t/strong"]',
        repairs=1,
        extra=bounded,
    )
    reasons = results.select("row_id", "repairs", "escalated", "check_reasons")
    bound = reasons.filter(pl.col("repairs") == 0, pl.col("escalated"))
    assert bound.height >= 1  # low confidences: straight to the next tier
    for reasons_of_row in bound["check_reasons"]:
        assert "less than the minimum of 0.7" in reasons_of_row[0]
    repaired_rows = set(results.filter(pl.col("repairs") == 1)["row_id"])
    assert repaired_rows  # prose or a missing field: a repair turn first
    repair_prompts = calls.filter(pl.col("purpose") == "repair")
    assert set(repair_prompts["row_id"]) == repaired_rows
