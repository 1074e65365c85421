"""The simulator answers a repair turn about the task it repairs, over real HTTP."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchroute.checks import Verdict
from batchroute.repair import repair_messages
from batchroute.sim import (
    SimConfigError,
    SimulatorHandle,
    expected_answer,
    load_sim_config,
    running_simulator,
)

# Mid-skill models that differ only in how often a repair turn fixes a broken format.
TABLE = """
[models.fixer]
usd_per_mtok = { input = 1.0, output = 1.0 }
latency_ms = { mean = 0 }
skill = 0.5
format_fix = 1.0
[models.stubborn]
usd_per_mtok = { input = 1.0, output = 1.0 }
latency_ms = { mean = 0 }
skill = 0.5
format_fix = 0.0
[models.half]
usd_per_mtok = { input = 1.0, output = 1.0 }
latency_ms = { mean = 0 }
skill = 0.5
format_fix = 0.5
"""
SEED = 3
SCHEMA = {
    "type": "object",
    "required": ["answer", "confidence"],
    "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "label", "schema": SCHEMA}}
SYSTEM = {"role": "system", "content": "You label support tickets."}
SCHEMA_FAILED = Verdict(
    passed=False, reason="schema: 'answer' is a required property", check="json_schema"
)
NOT_A_CHOICE = Verdict(passed=False, reason="not one of billing, refund", check="choices")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    table = tmp_path_factory.mktemp("sim_repair") / "models.toml"
    table.write_text(TABLE, encoding="utf-8")
    with running_simulator(models=table, seed=SEED) as handle:
        yield handle


def tasks(n: int) -> list[str]:
    return [f"Label this ticket: order {i} never arrived and I was charged" for i in range(n)]


def post(sim: SimulatorHandle, body: dict[str, Any]) -> str:
    request = urllib.request.Request(
        sim.base_url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        content = json.load(response)["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content


def ask(sim: SimulatorHandle, model: str, messages: list[Any], **params: Any) -> str:
    return post(sim, {"model": model, "messages": messages, **params})


def task_messages(task: str) -> list[Any]:
    return [SYSTEM, {"role": "user", "content": task}]


def fits_schema(answer: str) -> bool:
    try:
        value = json.loads(answer)
    except ValueError:
        return False
    return isinstance(value, dict) and {"answer", "confidence"} <= value.keys()


def broken(sim: SimulatorHandle, model: str, n: int) -> list[tuple[str, str]]:
    """(task, answer) for the tasks among the first `n` whose answer breaks the schema."""
    out = []
    for task in tasks(n):
        answer = ask(sim, model, task_messages(task), response_format=JSON_SCHEMA)
        if not fits_schema(answer):
            out.append((task, answer))
    return out


def repair(task: str, answer: str, verdict: Verdict = SCHEMA_FAILED) -> list[Any]:
    """The conversation batchroute sends for a repair turn (batchroute/repair.py)."""
    return list(repair_messages(task_messages(task), answer=answer, verdict=verdict))


def test_a_fixed_repair_keeps_the_label_and_correctness_of_the_original_task(
    sim: SimulatorHandle,
) -> None:
    failed = broken(sim, "fixer", 80)
    assert len(failed) >= 10  # prose and missing fields, on about a quarter of the tasks
    for task, answer in failed:
        repaired = ask(sim, "fixer", repair(task, answer), response_format=JSON_SCHEMA)
        assert fits_schema(repaired), repaired
        # The original task's content, as the same model gives it where no schema can break:
        # the same label and confidence, so the same correctness (a wrong one here: the
        # simulator breaks the schema only on wrong answers).
        content = json.loads(
            ask(sim, "fixer", task_messages(task), response_format={"type": "json_object"})
        )
        assert json.loads(repaired) == content
        assert content["answer"] != expected_answer(task)


def test_a_text_answer_repaired_is_the_same_answer_right_or_wrong(sim: SimulatorHandle) -> None:
    # A choices check failed on a plain label: the repair turn answers the same ticket, so
    # right labels stay right and wrong ones stay wrong (a text answer has no format to fix).
    originals, repaired = [], []
    for task in tasks(60):
        answer = ask(sim, "fixer", task_messages(task))
        originals.append(answer)
        repaired.append(ask(sim, "fixer", repair(task, answer, NOT_A_CHOICE)))
    assert repaired == originals
    right = [a == expected_answer(t) for a, t in zip(originals, tasks(60), strict=True)]
    assert 0 < sum(right) < len(right)
    assert len(set(repaired)) > 4  # one answer per ticket, not one per repair wording


def test_a_model_that_never_fixes_the_format_repeats_its_broken_answer(
    sim: SimulatorHandle,
) -> None:
    failed = broken(sim, "stubborn", 60)
    assert failed
    for task, answer in failed:
        first = ask(sim, "stubborn", repair(task, answer), response_format=JSON_SCHEMA)
        assert first == answer
        # A client that keeps every turn: the second repair is still about the ticket.
        kept = [*repair(task, answer), {"role": "assistant", "content": first}]
        kept.append(repair(task, first)[-1])
        assert ask(sim, "stubborn", kept, response_format=JSON_SCHEMA) == answer


def test_the_share_of_repairs_that_fix_the_format_follows_format_fix(
    sim: SimulatorHandle,
) -> None:
    failed = broken(sim, "half", 240)
    assert len(failed) >= 40
    fixed = [
        fits_schema(ask(sim, "half", repair(task, answer), response_format=JSON_SCHEMA))
        for task, answer in failed
    ]
    assert 0.3 < sum(fixed) / len(fixed) < 0.7


def test_the_same_repair_request_gets_the_same_answer(sim: SimulatorHandle, tmp_path: Path) -> None:
    failed = broken(sim, "half", 40)[:8]
    assert failed
    bodies = [
        {"model": "half", "messages": repair(t, a), "response_format": JSON_SCHEMA}
        for t, a in failed
    ]
    first = [post(sim, body) for body in bodies]
    assert [post(sim, body) for body in reversed(bodies)] == first[::-1]
    table = tmp_path / "models.toml"
    table.write_text(TABLE, encoding="utf-8")
    with running_simulator(models=table, seed=SEED) as other:
        assert [post(other, body) for body in bodies] == first


def test_a_conversation_that_is_not_a_repair_is_answered_from_its_last_user_message(
    sim: SimulatorHandle,
) -> None:
    a, b, *_ = tasks(40)
    own = ask(sim, "fixer", task_messages(a))
    alone = ask(sim, "fixer", task_messages(b))
    assert own != alone  # so answering about the wrong task would show
    # Few-shot: the example's answer is the model's own answer to it, then a new ticket.
    few_shot = [SYSTEM, {"role": "user", "content": a}, {"role": "assistant", "content": own}]
    assert ask(sim, "fixer", [*few_shot, {"role": "user", "content": b}]) == alone
    # Feedback on an answer the model did not give: answered from the feedback's own text.
    feedback = "Your answer was not one of the allowed choices. Reply with one only."
    other = "refund" if own != "refund" else "billing"
    history = [SYSTEM, {"role": "user", "content": a}, {"role": "assistant", "content": other}]
    single = ask(sim, "fixer", [{"role": "user", "content": feedback}])
    assert ask(sim, "fixer", [*history, {"role": "user", "content": feedback}]) == single
    # A longer chat with a schema: every turn that is not a repair, as a single-turn ask.
    chat = [
        {"role": "user", "content": a},
        {"role": "assistant", "content": '{"answer": "bug", "confidence": 0.5}'},
        {"role": "user", "content": b},
    ]
    expected = ask(sim, "fixer", [{"role": "user", "content": b}], response_format=JSON_SCHEMA)
    assert ask(sim, "fixer", chat, response_format=JSON_SCHEMA) == expected


def test_format_fix_out_of_range_is_one_line_naming_the_key(tmp_path: Path) -> None:
    table = tmp_path / "models.toml"
    table.write_text(TABLE.replace("format_fix = 0.5", "format_fix = 1.5"), encoding="utf-8")
    with pytest.raises(SimConfigError) as caught:
        load_sim_config(table)
    message = str(caught.value)
    assert message == (
        f"{table}: key models.half.format_fix: Input should be less than or equal to 1"
    )
