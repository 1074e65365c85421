"""Each check type's verdicts, the judge's, and a suite's order and handling of errors."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from batchroute.check_config import CheckConfig, parse_json_path
from batchroute.checks import (
    CheckSuite,
    GraderError,
    LogprobCheck,
    PythonCheck,
    RegexCheck,
    Subject,
    Verdict,
    build_check,
    normalize_label,
    value_at,
)
from batchroute.job import Params
from batchroute.judge import JudgeCheck, read_score
from batchroute.plans import build_checks
from batchroute.prompts import Message


def config(**raw: Any) -> CheckConfig:
    return CheckConfig.model_validate(raw)


def check(**raw: Any) -> Any:
    return build_check(config(**raw), params=Params())


def subject(answer: str, *, logprob: float | None = None, **row: Any) -> Subject:
    return Subject(answer=answer, row=row, model="m", mean_logprob=logprob)


@pytest.mark.parametrize(
    ("raw", "label"),
    [("Hard.", "hard"), ("  'easy' ", "easy"), ("**BUG**", "bug"), ("“Refund”", "refund")],
)
def test_labels_are_normalised(raw: str, label: str) -> None:
    assert normalize_label(raw) == label


def test_json_paths() -> None:
    assert parse_json_path("confidence") == ("confidence",)
    assert parse_json_path("$.result.scores[1]") == ("result", "scores", 1)
    assert value_at('{"result": {"scores": [0.1, 0.9]}}', steps=("result", "scores", 1)) == 0.9
    with pytest.raises(ValueError, match=r"no \$\.result\.x in the answer"):
        value_at('{"result": {}}', steps=("result", "x"))
    with pytest.raises(ValueError, match="not a JSON path"):
        parse_json_path("$")


def test_choices_on_the_answer_and_on_a_json_field() -> None:
    plain = check(type="choices", choices=["Billing", "refund"])
    assert plain(" billing.").passed
    assert plain("shipping") == Verdict(False, "'shipping' is not one of: Billing, refund")
    field = check(type="choices", choices=["bug"], path="answer")
    assert field('{"answer": "BUG"}').passed
    assert not field('{"answer": "other"}').passed
    assert "not JSON" in (field("bug").reason or "")
    exact = check(type="choices", choices=["Bug"], case_sensitive=True)
    assert exact("Bug").passed and not exact("bug").passed


def test_confidence_from_a_json_path_and_from_logprobs() -> None:
    stated = check(type="confidence", path="$.confidence", threshold=0.7)
    assert stated('{"confidence": 0.7}').passed
    assert stated('{"confidence": 0.69}').reason == "$.confidence 0.69 < 0.7"
    assert stated('{"confidence": "high"}').reason == "$.confidence is not a number"
    assert stated('{"confidence": true}').reason == "$.confidence is not a number"
    logprobs = LogprobCheck(threshold=-0.3)

    def verdict(s: Subject) -> Verdict:
        return anyio.run(lambda: logprobs.verify(s, grader=_NoGrader()))

    assert verdict(subject("bug", logprob=-0.05)).passed
    assert verdict(subject("bug", logprob=-1.2)).reason == "mean token logprob -1.2 < -0.3"
    assert verdict(subject("bug")).reason == "the response carried no token logprobs"


def test_lengths_and_regex() -> None:
    at_least = check(type="min_length", chars=4)
    at_most = check(type="max_length", chars=4)
    assert at_least("four").passed and not at_least("two").passed
    assert at_most("four").passed
    assert at_most("fives").reason == "5 characters, wanted at most 4"
    assert check(type="regex", pattern=r"^\d+$")("42").passed


def test_python_check_reads_bool_and_tuple_and_refuses_anything_else() -> None:
    check = PythonCheck(lambda row, answer: answer == row["expected"], reference="m:f")
    assert anyio.run(lambda: check.verify(subject("bug", expected="bug"), grader=_NoGrader()))
    assert check.read((False, "tests failed: 2 of 5")) == Verdict(False, "tests failed: 2 of 5")
    assert check.read((True, None)) == Verdict(True)
    assert check.read("yes") == Verdict(False, "m:f returned str, not a bool or (bool, reason)")


class _Boom:
    name = "boom"

    def __call__(self, answer: str) -> Verdict:
        raise KeyError("confidence")


class _Counting:
    name = "slow"

    def __init__(self) -> None:
        self.calls = 0

    async def verify(self, subject: Subject, *, grader: Any) -> Verdict:
        self.calls += 1
        return Verdict(True)


class _NoGrader:
    async def ask(self, *, model: str, messages: list[Message], params: dict[str, Any]) -> str:
        raise GraderError("http_500: no")


def test_a_raising_check_is_a_failed_check_and_slow_checks_wait_for_quick_ones() -> None:
    slow = _Counting()
    suite = CheckSuite(quick=[RegexCheck("x"), _Boom()], slow=[slow])
    verdict = anyio.run(lambda: suite.verify(subject("x"), grader=_NoGrader()))
    assert verdict == Verdict(False, "raised KeyError: 'confidence'", check="boom")
    assert slow.calls == 0  # an answer that failed a quick check never reaches a slow one
    assert suite.name == "regex+boom+slow"


def test_judge_scores_and_its_failed_call_fails_the_check() -> None:
    judge = JudgeCheck(
        config(type="judge", model="g", prompt="Rate {answer} for {text}", threshold=7)
    )
    assert judge.columns == ("text",)

    class Grader:
        def __init__(self, reply: str) -> None:
            self.reply = reply
            self.asked: list[Message] = []

        async def ask(self, *, model: str, messages: list[Message], params: dict[str, Any]) -> str:
            self.asked = messages
            return self.reply

    good = Grader("Score: 8/10")
    assert anyio.run(lambda: judge.verify(subject("bug", text="crash"), grader=good)).passed
    assert good.asked == [{"role": "user", "content": "Rate bug for crash"}]
    low = anyio.run(lambda: judge.verify(subject("bug", text="t"), grader=Grader("6")))
    assert low == Verdict(False, "g scored 6 < 7")
    none = anyio.run(lambda: judge.verify(subject("bug", text="t"), grader=Grader("great")))
    assert none.reason == 'g gave no score: "great"'
    failed = anyio.run(lambda: judge.verify(subject("bug", text="t"), grader=_NoGrader()))
    assert failed.reason == "the judge's call failed: http_500: no"


def test_read_score() -> None:
    assert read_score("8/10", steps=None) == 8.0
    assert read_score('{"score": "7.5"}', steps=("score",)) == 7.5
    assert read_score(json.dumps({"score": None}), steps=("score",)) is None


def test_check_configuration_errors() -> None:
    with pytest.raises(ValidationError, match="either 'path' or 'logprobs = true'"):
        config(type="confidence", threshold=0.5)
    with pytest.raises(ValidationError, match="is not 'module:function'"):
        config(type="python", function="no_colon")
    with pytest.raises(ValidationError, match="a judge check needs 'prompt'"):
        config(type="judge", model="g", threshold=1)
    with pytest.raises(ValidationError, match="'chars' does not apply to a choices check"):
        config(type="choices", choices=["a"], chars=3)
    with pytest.raises(ValidationError, match="Input should be 'json_schema', 'regex'"):
        config(type="vibes")
    with pytest.raises(ValueError, match=r"check\[2\] \(confidence\)\.logprobs: the plan must ask"):
        build_checks(
            [
                config(type="min_length", chars=1),
                config(type="confidence", logprobs=True, threshold=0),
            ],
            params=Params(),
            base_dir=None,
        )
    with pytest.raises(ValueError, match="^check.function: cannot import 'no_such_module_here'"):
        build_checks(
            [config(type="python", function="no_such_module_here:f")],
            params=Params(),
            base_dir=None,
        )
