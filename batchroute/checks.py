"""Checks: decide whether an answer is good enough, or the row escalates to the next tier."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema

from batchroute.job import CheckConfig, Params


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    reason: str | None = None  # why it failed, short enough for a table cell


class Check(Protocol):
    name: str

    def __call__(self, answer: str) -> Verdict: ...


class JsonSchemaCheck:
    """The answer parses as JSON and validates against a JSON schema."""

    name = "json_schema"

    def __init__(self, schema: dict[str, Any]) -> None:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
        self._validator = validator_class(schema)

    def __call__(self, answer: str) -> Verdict:
        try:
            value = json.loads(answer)
        except json.JSONDecodeError as exc:
            return Verdict(False, f"not JSON: {exc.msg} at char {exc.pos}")
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        if error is None:
            return Verdict(True)
        where = "/".join(str(p) for p in error.absolute_path)
        return Verdict(False, f"schema: {error.message}" + (f" at /{where}" if where else ""))


class RegexCheck:
    """The answer contains a match of a regular expression."""

    name = "regex"

    def __init__(self, pattern: str) -> None:
        self._pattern = re.compile(pattern)

    def __call__(self, answer: str) -> Verdict:
        if self._pattern.search(answer):
            return Verdict(True)
        return Verdict(False, f"no match for /{self._pattern.pattern}/")


def build_check(config: CheckConfig | None, *, params: Params) -> Check | None:
    """The check of a plan; a json_schema check without a schema uses the response format's.

    Raises ValueError (or jsonschema's SchemaError) for a schema or pattern that cannot work.
    """
    if config is None:
        return None
    if config.type == "regex":
        assert config.pattern is not None
        try:
            return RegexCheck(config.pattern)
        except re.error as exc:
            raise ValueError(f"pattern: not a valid regular expression: {exc}") from None
    schema = config.schema_
    if schema is None and params.response_format is not None:
        schema = params.response_format.schema_
    if schema is None:
        raise ValueError("schema: a json_schema check needs a schema (or a json_schema response)")
    try:
        return JsonSchemaCheck(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise ValueError(f"schema: not a valid JSON schema: {exc.message}") from None
