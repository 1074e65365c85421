"""The judge check: a grader model scores an answer with a rubric; it passes at a threshold."""

from __future__ import annotations

import json
import re
from typing import Any

from batchroute.check_config import CheckConfig, parse_json_path
from batchroute.checks import Grader, GraderError, Subject, Verdict, as_number, value_at
from batchroute.prompts import BadRowInput, PromptTemplate, build_messages

ANSWER_PLACEHOLDER = "answer"
_FIRST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def read_score(reply: str, *, steps: tuple[str | int, ...] | None) -> float | None:
    """The judge's score: the number at a JSON path, else the first number in the text.

    "8/10" reads as 8 and "Score: 7.5" as 7.5; a reply with no number is no score.
    """
    if steps is not None:
        try:
            value: Any = value_at(reply, steps=steps)
        except ValueError:
            return None
        if isinstance(value, str):
            value = _parse_float(value)
        return as_number(value)
    match = _FIRST_NUMBER.search(reply)
    return float(match.group()) if match else None


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class JudgeCheck:
    """Asks `model` to score the answer with the rubric `prompt`; passes when score >= threshold.

    The rubric substitutes `{answer}` with the answer under judgement and any other
    placeholder with the row's column. The call goes through the grader, so it is limited,
    retried, falls back like any call, and is recorded and charged to the row.
    """

    name = "judge"

    def __init__(self, config: CheckConfig) -> None:
        assert config.type == "judge"
        assert config.model and config.prompt and config.threshold is not None
        self.model = config.model
        self._prompt = PromptTemplate.parse(config.prompt)
        self._system = PromptTemplate.parse(config.system) if config.system else None
        self._threshold = config.threshold
        self._steps = parse_json_path(config.score_path) if config.score_path else None
        self._params: dict[str, Any] = {
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
        }
        if self._steps is not None:
            self._params["response_format"] = {"type": "json_object"}

    @property
    def columns(self) -> tuple[str, ...]:
        """The dataset columns the rubric needs (`{answer}` is not one)."""
        templates = (self._prompt, self._system) if self._system else (self._prompt,)
        names = (c for t in templates for c in t.columns if c != ANSWER_PLACEHOLDER)
        return tuple(dict.fromkeys(names))

    async def verify(self, subject: Subject, *, grader: Grader) -> Verdict:
        values = {**subject.row, ANSWER_PLACEHOLDER: subject.answer}
        try:
            messages = build_messages(
                values, prompt=self._prompt, system=self._system, messages_column=None
            )
        except BadRowInput as exc:
            return Verdict(False, f"cannot fill the rubric: {exc}")
        try:
            reply = await grader.ask(model=self.model, messages=messages, params=self._params)
        except GraderError as exc:
            return Verdict(False, f"the judge's call failed: {exc}")
        score = read_score(reply, steps=self._steps)
        if score is None:
            shown = json.dumps(reply[:60])
            return Verdict(False, f"{self.model} gave no score: {shown}")
        if score >= self._threshold:
            return Verdict(True)
        return Verdict(False, f"{self.model} scored {score:g} < {self._threshold:g}")
