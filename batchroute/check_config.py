"""Check settings of a job file: one table per check type, validated when the job loads."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from batchroute.prompts import PromptTemplate

# `module:function`, where the module may be dotted (`mychecks.code:tests_pass`).
_FUNCTION_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# A JSON path as users write it: `confidence`, `$.confidence`, `result.scores[0]`.
_PATH_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_json_path(path: str) -> tuple[str | int, ...]:
    """The steps of a JSON path: keys and list indexes. Raises ValueError for a malformed one."""
    text = path.strip()
    text = text[1:] if text.startswith("$") else text
    steps: list[str | int] = []
    position = 0
    while position < len(text):
        match = _PATH_STEP.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"{path!r} is not a JSON path like 'confidence' or '$.a.b[0]'")
        key, index = match.groups()
        steps.append(int(index) if index is not None else key)
        position = match.end()
    if not steps:
        raise ValueError(f"{path!r} is not a JSON path: it names no field")
    return tuple(steps)


def _valid_path(path: str) -> str:
    parse_json_path(path)
    return path


JsonPath = Annotated[str, AfterValidator(_valid_path)]


class JsonSchemaCheckConfig(_Check):
    """The answer parses as JSON and validates against a schema (default: the response's)."""

    type: Literal["json_schema"]
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None


class RegexCheckConfig(_Check):
    """The answer contains a match of `pattern`."""

    type: Literal["regex"]
    pattern: str


class ChoicesCheckConfig(_Check):
    """The answer, or the JSON field at `path`, is one of `choices`."""

    type: Literal["choices"]
    choices: Annotated[tuple[str, ...], Field(min_length=1)]
    path: JsonPath | None = None
    case_sensitive: bool = False


class ConfidenceCheckConfig(_Check):
    """A number at `path` of the JSON answer, or the mean token logprob, is at least `threshold`."""

    type: Literal["confidence"]
    threshold: float
    path: JsonPath | None = None
    logprobs: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ConfidenceCheckConfig:
        if (self.path is None) == (not self.logprobs):
            raise ValueError("a confidence check takes either 'path' or 'logprobs = true'")
        return self


class LengthCheckConfig(_Check):
    """The answer has at least (`min_length`) or at most (`max_length`) `chars` characters."""

    type: Literal["min_length", "max_length"]
    chars: Annotated[int, Field(ge=0)]


class PythonCheckConfig(_Check):
    """`module:function(row, answer)` returns a bool or (bool, reason)."""

    type: Literal["python"]
    function: str

    @field_validator("function")
    @classmethod
    def _is_reference(cls, value: str) -> str:
        if not _FUNCTION_REF.match(value):
            raise ValueError(f"{value!r} is not 'module:function'")
        return value


class JudgeCheckConfig(_Check):
    """A grader model scores the answer with a rubric; the answer passes at `threshold`."""

    type: Literal["judge"]
    model: str
    prompt: str  # {answer} is the answer under judgement; other placeholders name columns
    system: str | None = None
    threshold: float
    score_path: JsonPath | None = None  # set: the judge is asked for JSON and the score read here
    max_tokens: Annotated[int, Field(gt=0)] = 64
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0

    @model_validator(mode="after")
    def _templates_parse(self) -> JudgeCheckConfig:
        PromptTemplate.parse(self.prompt)
        if self.system is not None:
            PromptTemplate.parse(self.system)
        return self


CheckConfig = Annotated[
    JsonSchemaCheckConfig
    | RegexCheckConfig
    | ChoicesCheckConfig
    | ConfidenceCheckConfig
    | LengthCheckConfig
    | PythonCheckConfig
    | JudgeCheckConfig,
    Field(discriminator="type"),
]
Checks = tuple[CheckConfig, ...]


def as_check_list(value: Any) -> Any:
    """`[check]` (one table) and `[[check]]` (a list of tables) both mean a list of checks."""
    return [value] if isinstance(value, dict) else value
