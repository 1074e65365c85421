"""Checks: json_schema and regex verdicts with reasons, and building a check from a job."""

from __future__ import annotations

from typing import Any

import pytest

from batchroute.checks import JsonSchemaCheck, RegexCheck, build_check
from batchroute.job import CheckConfig, Params

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["answer", "confidence"],
    "properties": {
        "answer": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0.6},
    },
}


def _check_config(**fields: Any) -> CheckConfig:
    return CheckConfig.model_validate(fields)


# ---- json_schema ----------------------------------------------------------------------------


def test_json_schema_passes_a_valid_answer() -> None:
    verdict = JsonSchemaCheck(SCHEMA)('{"answer": "refund", "confidence": 0.9}')
    assert verdict.passed and verdict.reason is None


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("refund, I think", "not JSON"),
        ('{"answer": "refund"', "not JSON"),
        ("", "not JSON"),
        ('{"answer": "refund"}', "'confidence' is a required property"),
        ('{"answer": "refund", "confidence": 0.2}', "0.2 is less than the minimum of 0.6"),
        ('{"answer": 7, "confidence": 0.9}', "7 is not of type 'string'"),
        ('["refund", 0.9]', "is not of type 'object'"),
    ],
)
def test_json_schema_fails_with_a_reason(answer: str, reason: str) -> None:
    verdict = JsonSchemaCheck(SCHEMA)(answer)
    assert not verdict.passed
    assert verdict.reason is not None and reason in verdict.reason


def test_json_schema_reason_points_at_the_failing_field() -> None:
    verdict = JsonSchemaCheck(SCHEMA)('{"answer": "refund", "confidence": 0.2}')
    assert verdict.reason is not None
    assert verdict.reason.startswith("schema: ") and verdict.reason.endswith("at /confidence")


def test_json_schema_gives_a_repeated_answer_the_same_verdict_without_validating_again() -> None:
    check = JsonSchemaCheck(SCHEMA)
    validations = 0
    validate = check._validate

    def counted(answer: str) -> Any:
        nonlocal validations
        validations += 1
        return validate(answer)

    check._validate = counted  # type: ignore[method-assign]
    good, weak = '{"answer": "refund", "confidence": 0.9}', '{"answer": "x", "confidence": 0.2}'
    long_answer = '{"answer": "' + "y" * 300 + '", "confidence": 0.9}'
    for _ in range(3):
        assert check(good).passed
        assert check(weak) == JsonSchemaCheck(SCHEMA)(weak)  # reason included
        assert check(long_answer).passed
    assert validations == 2 + 3  # short answers once each; a long one is not kept


def test_json_schema_not_json_reason_says_where() -> None:
    verdict = JsonSchemaCheck(SCHEMA)('{"answer": }')
    assert verdict.reason is not None and "at char 11" in verdict.reason


# ---- regex ----------------------------------------------------------------------------------


def test_regex_passes_when_the_pattern_matches_anywhere() -> None:
    check = RegexCheck(r"\b(yes|no)\b")
    assert check("The answer is yes.").passed
    assert check("no").passed


def test_regex_fails_with_the_pattern_in_the_reason() -> None:
    verdict = RegexCheck(r"^\d+$")("forty-two")
    assert not verdict.passed
    assert verdict.reason == r"no match for /^\d+$/"


# ---- build_check ----------------------------------------------------------------------------


def test_no_check_configured_is_no_check() -> None:
    assert build_check(None, params=Params()) is None


def test_build_check_uses_the_configured_schema() -> None:
    check = build_check(_check_config(type="json_schema", schema=SCHEMA), params=Params())
    assert check is not None and check.name == "json_schema"
    assert not check('{"answer": "x"}').passed
    assert check('{"answer": "x", "confidence": 1}').passed


def test_build_check_takes_the_schema_from_the_response_format() -> None:
    params = Params.model_validate(
        {"response_format": {"type": "json_schema", "name": "label", "schema": SCHEMA}}
    )
    check = build_check(_check_config(type="json_schema"), params=params)
    assert check is not None
    assert check('{"answer": "x", "confidence": 0.7}').passed
    verdict = check('{"answer": "x", "confidence": 0.1}')
    assert not verdict.passed and "minimum" in (verdict.reason or "")


def test_the_check_schema_wins_over_the_response_format() -> None:
    params = Params.model_validate(
        {"response_format": {"type": "json_schema", "schema": {"type": "array"}}}
    )
    check = build_check(_check_config(type="json_schema", schema=SCHEMA), params=params)
    assert check is not None and check('{"answer": "x", "confidence": 0.7}').passed


@pytest.mark.parametrize(
    "response_format", [None, {"type": "json_object"}, {"type": "json_schema"}]
)
def test_a_json_schema_check_without_any_schema_is_a_value_error(
    response_format: dict[str, Any] | None,
) -> None:
    params = Params.model_validate({"response_format": response_format})
    with pytest.raises(ValueError, match="needs a schema"):
        build_check(_check_config(type="json_schema"), params=params)


def test_build_check_regex() -> None:
    check = build_check(_check_config(type="regex", pattern="^(A|B|C)$"), params=Params())
    assert check is not None and check.name == "regex"
    assert check("B").passed and not check("D").passed


@pytest.mark.parametrize("pattern", ["(unclosed", "[a-", "*star", "(?P<x>a)(?P<x>b)"])
def test_an_invalid_regex_is_a_value_error_naming_pattern(pattern: str) -> None:
    with pytest.raises(ValueError, match="^pattern: not a valid regular expression"):
        build_check(_check_config(type="regex", pattern=pattern), params=Params())


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "objekt"},
        {"type": "object", "required": "answer"},
        {"properties": {"n": {"minimum": "zero"}}},
    ],
)
def test_an_invalid_schema_is_a_value_error_naming_schema(schema: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="^schema: not a valid JSON schema"):
        build_check(_check_config(type="json_schema", schema=schema), params=Params())


def test_check_config_rejects_a_pattern_on_a_schema_check_and_a_regex_without_one() -> None:
    with pytest.raises(ValueError, match="needs 'pattern'"):
        _check_config(type="regex")
    with pytest.raises(ValueError, match="does not apply"):
        _check_config(type="json_schema", schema=SCHEMA, pattern="x")
