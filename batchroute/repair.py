"""Repair: an answer that failed a format check gets another turn with the same model.

A model that answered in prose, dropped a field or wrote a label outside the list usually
knows the answer; told what was wrong it often fixes the form for a fraction of what the next
tier costs. Only format checks are repaired (`json_schema`, `choices`, `regex`): a low
confidence or a failed test is a verdict on the content, which another turn of the same model
would only talk its way past; those escalate at once. So does a json_schema failure on a
numeric bound (`minimum`, `maximum`, ...): told "0.5 is less than the minimum of 0.7", a
model writes 0.7, and the answer is no better (bench/RESULTS.md, repair).
"""

from __future__ import annotations

from batchroute.checks import Verdict
from batchroute.prompts import Message

__all__ = ["REPAIRABLE", "repair_messages", "repairable"]

REPAIRABLE = frozenset({"json_schema", "choices", "regex"})

# What the model is told, by the check that failed: the reason, then how to answer again.
_ASK = {
    "json_schema": "Your answer did not match the schema: {reason}. Reply with JSON only.",
    "choices": "Your answer was not one of the allowed choices: {reason}. "
    "Reply with one of the choices only.",
    "regex": "Your answer was not in the required format: {reason}. "
    "Reply again, in that format only.",
}
_REASON_CHARS = 300  # a schema error can quote a long answer back; the model has it already


def repairable(verdict: Verdict) -> bool:
    """Whether the check that failed is a format check, which a repair turn may fix, and
    failed on the form: not on a schema's numeric bound (`Verdict.content`)."""
    return not verdict.passed and verdict.check in REPAIRABLE and not verdict.content


def repair_messages(messages: list[Message], *, answer: str, verdict: Verdict) -> list[Message]:
    """The conversation of a repair turn: the row's messages, the answer that failed as the
    assistant's, then what was wrong with it."""
    assert verdict.check in REPAIRABLE
    reason = (verdict.reason or "no reason given").strip().removeprefix("schema: ")
    if len(reason) > _REASON_CHARS:
        reason = reason[: _REASON_CHARS - 3] + "..."
    return [
        *messages,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": _ASK[verdict.check].format(reason=reason.rstrip("."))},
    ]
