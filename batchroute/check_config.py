"""Check settings of a job file: one `[check]` table per check, validated when the job loads."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from batchroute.prompts import PromptTemplate

# `module:function`, where the module may be dotted (`mychecks.code:tests_pass`).
_FUNCTION_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# A JSON path as users write it: `confidence`, `$.confidence`, `result.scores[0]`.
_PATH_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")

CheckType = Literal[
    "json_schema",
    "regex",
    "choices",
    "confidence",
    "min_length",
    "max_length",
    "python",
    "judge",
]
# Per type: the keys it needs, then the keys it may take. Any other key given is an error, so
# `pattern` on a json_schema check is caught rather than ignored.
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "json_schema": ((), ("schema_",)),
    "regex": (("pattern",), ()),
    "choices": (("choices",), ("path", "case_sensitive")),
    "confidence": (("threshold",), ("path", "logprobs")),
    "min_length": (("chars",), ()),
    "max_length": (("chars",), ()),
    "python": (("function",), ("timeout_s",)),
    "judge": (
        ("model", "prompt", "threshold"),
        ("system", "score_path", "max_tokens", "temperature"),
    ),
}


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


def _valid_function(reference: str) -> str:
    if not _FUNCTION_REF.match(reference):
        raise ValueError(f"{reference!r} is not 'module:function'")
    return reference


JsonPath = Annotated[str, AfterValidator(_valid_path)]


class CheckConfig(BaseModel):
    """One check. Which keys apply depends on `type`; see the README's key table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: CheckType
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None  # json_schema
    pattern: str | None = None  # regex
    choices: Annotated[tuple[str, ...], Field(min_length=1)] | None = None  # choices
    path: JsonPath | None = None  # choices, confidence: a JSON field of the answer
    case_sensitive: bool = False  # choices
    threshold: float | None = None  # confidence, judge
    logprobs: bool = False  # confidence: the mean token logprob instead of a field
    chars: Annotated[int, Field(ge=0)] | None = None  # min_length, max_length
    function: Annotated[str, AfterValidator(_valid_function)] | None = None  # python
    timeout_s: Annotated[float, Field(gt=0)] = 60.0  # python: past it, the check fails
    model: str | None = None  # judge: the grader
    prompt: str | None = None  # judge: {answer} is the answer, other placeholders columns
    system: str | None = None  # judge
    score_path: JsonPath | None = None  # judge: set, the reply is JSON and the score is here
    max_tokens: Annotated[int, Field(gt=0)] = 64  # judge
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0  # judge

    @model_validator(mode="after")
    def _keys_fit_the_type(self) -> CheckConfig:
        required, optional = _KEYS[self.type]
        for key in required:
            if getattr(self, key) is None:
                raise ValueError(f"a {self.type} check needs {key!r}")
        for key in sorted(self.model_fields_set - {"type", *required, *optional}):
            shown = "schema" if key == "schema_" else key
            raise ValueError(f"{shown!r} does not apply to a {self.type} check")
        if self.type == "confidence" and (self.path is None) == (not self.logprobs):
            raise ValueError("a confidence check takes either 'path' or 'logprobs = true'")
        for template in (self.prompt, self.system):
            if template is not None:
                PromptTemplate.parse(template)
        return self


Checks = tuple[CheckConfig, ...]


def as_check_list(value: Any) -> Any:
    """`[check]` (one table) and `[[check]]` (a list of tables) both mean a list of checks."""
    return [value] if isinstance(value, dict) else value
