"""Checks: decide whether an answer is good enough, or the row escalates to the next tier.

Most checks look at the answer alone and are plain callables, `check(answer) -> Verdict`
(`Check`). The others need the answer's context: the mean token logprob, the row (a user's
`python` function, run in a worker thread since it may run tests) or a model call (the
`judge`). They are `ContextCheck`s, given the answer as a `Subject` and a `Grader` through
which the executor makes and records their calls. A `CheckSuite` holds a plan's checks: all
must pass, and the answer-only ones run first so a malformed answer never costs a judge call.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import re
import string
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin

import anyio
import anyio.from_thread
import anyio.lowlevel

from batchroute.check_config import CheckConfig, parse_json_path
from batchroute.job import Params
from batchroute.prompts import Message

# What a label loses before it is compared: surrounding space, punctuation and quotes.
_LABEL_JUNK = string.whitespace + string.punctuation + "“”‘’«»"


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    reason: str | None = None  # why it failed, short enough for a table cell
    check: str | None = None  # which check of a suite failed
    # The answer has the asked-for form and failed on its content (a schema's numeric bound,
    # such as a confidence `minimum`): a repair turn would only restate it (repair.py).
    content: bool = False


@dataclass(frozen=True, slots=True)
class Subject:
    """What a check judges: the answer, the row it answers, and how it was produced."""

    answer: str
    row: Mapping[str, Any]
    model: str
    mean_logprob: float | None = None  # of the answer's tokens, when the plan asked for them


class Check(Protocol):
    """A check of the answer alone; quick, so it runs on the event loop."""

    name: str

    def __call__(self, answer: str) -> Verdict: ...


class GraderError(Exception):
    """A grader's call failed after its retries and fallbacks."""


class Grader(Protocol):
    """How a check asks a model: through the run's Caller, recorded and charged to the row."""

    async def ask(self, *, model: str, messages: list[Message], params: dict[str, Any]) -> str:
        """The model's answer; raises GraderError when the call fails."""
        ...


class ContextCheck(Protocol):
    """A check that needs more than the answer: logprobs, the row, or a model (`judge`)."""

    name: str

    async def verify(self, subject: Subject, *, grader: Grader) -> Verdict: ...


def normalize_label(text: str) -> str:
    """`"Hard."`, `' hard '` and `**HARD**` all become `hard`."""
    return text.strip(_LABEL_JUNK).casefold()


def value_at(answer: str, *, steps: Sequence[str | int]) -> Any:
    """The value at a parsed JSON path of the answer; raises ValueError saying what is missing."""
    try:
        value: Any = json.loads(answer)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at char {exc.pos}") from None
    for step in steps:
        if isinstance(step, int) and isinstance(value, list) and step < len(value):
            value = value[step]
        elif isinstance(step, str) and isinstance(value, dict) and step in value:
            value = value[step]
        else:
            raise ValueError(f"no {_show_path(steps)} in the answer")
    return value


def _show_path(steps: Sequence[str | int]) -> str:
    return "$" + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps)


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


# Schema keywords whose failure is about a value's size, not the answer's form.
_CONTENT_KEYWORDS = frozenset(
    {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
)
_SEEN_CHARS, _SEEN_ANSWERS = 256, 4096  # at most about a megabyte of remembered answers


class JsonSchemaCheck:
    """The answer parses as JSON and validates against a JSON schema."""

    name = "json_schema"

    def __init__(self, schema: dict[str, Any]) -> None:
        # Imported here, not at the top: jsonschema is a twelfth of a run's start-up, which
        # only jobs with this check should pay.
        import jsonschema

        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
        registry = _closed_registry(schema, validator_class=validator_class)
        self._validator = validator_class(schema, registry=registry)
        self._best_match = jsonschema.exceptions.best_match
        self._seen: dict[str, Verdict] = {}

    def __call__(self, answer: str) -> Verdict:
        # A verdict depends on the answer alone, and short answers repeat (a label and a
        # confidence make a few hundred distinct answers over any number of rows). Validating
        # is the dearest step of a cascade's row (bench/RESULTS.md, cascade cost), so the
        # verdicts of short answers are kept, in a bounded table.
        if len(answer) > _SEEN_CHARS:
            return self._validate(answer)
        verdict = self._seen.get(answer)
        if verdict is None:
            verdict = self._validate(answer)
            if len(self._seen) < _SEEN_ANSWERS:
                self._seen[answer] = verdict
        return verdict

    def _validate(self, answer: str) -> Verdict:
        try:
            value = json.loads(answer)
        except json.JSONDecodeError as exc:
            return Verdict(False, f"not JSON: {exc.msg} at char {exc.pos}")
        error = self._best_match(self._validator.iter_errors(value))
        if error is None:
            return Verdict(True)
        where = "/".join(str(p) for p in error.absolute_path)
        reason = f"schema: {error.message}" + (f" at /{where}" if where else "")
        return Verdict(False, reason, content=error.validator in _CONTENT_KEYWORDS)


class RemoteRefError(ValueError):
    """A `$ref` of a json_schema check points outside the schema."""


def _closed_registry(schema: dict[str, Any], *, validator_class: Any) -> Any:
    """A registry holding only `schema` (and the subschemas it names by `$id`); raises
    RemoteRefError for a `$ref` that resolves to anything else.

    Without a registry, jsonschema fetched a remote `$ref` (http, file) on every answer it
    validated: a network call or a file read per row. A `Registry` built without a
    `retrieve` function retrieves nothing, so nothing is fetched even if a reference were
    missed here; this walk makes such a reference a configuration error before the run.
    """
    from jsonschema_specifications import REGISTRY as META_SCHEMAS
    from referencing import Registry, Resource
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import specification_with

    dialect = specification_with(validator_class.META_SCHEMA.get("$schema", ""))
    root = Resource.from_contents(schema, default_specification=dialect)
    base = root.id() or ""
    # The published meta-schemas come bundled (a `$ref` to one reads no network either).
    registry: Registry[Any] = META_SCHEMAS.with_resource(base, root).crawl()
    for scope, ref in _refs(schema, base=base):
        try:
            registry.resolver(base_uri=scope).lookup(ref)
        except Unresolvable:
            raise RemoteRefError(
                f"$ref {ref!r} points outside the schema; only references within it"
                " ('#/$defs/NAME') are resolved"
            ) from None
    return registry


_DATA_KEYWORDS = frozenset({"enum", "const", "examples", "default"})  # values, not schemas


def _refs(node: Any, *, base: str) -> Iterator[tuple[str, str]]:
    """Every `$ref` and `$dynamicRef` of a schema, with the base URI it resolves against."""
    if isinstance(node, dict):
        if isinstance(node.get("$id"), str):
            base = urljoin(base, node["$id"])
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                yield base, value
            elif key not in _DATA_KEYWORDS:
                yield from _refs(value, base=base)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item, base=base)


class RegexCheck:
    """The answer contains a match of a regular expression."""

    name = "regex"

    def __init__(self, pattern: str) -> None:
        self._pattern = re.compile(pattern)

    def __call__(self, answer: str) -> Verdict:
        if self._pattern.search(answer):
            return Verdict(True)
        return Verdict(False, f"no match for /{self._pattern.pattern}/")


class ChoicesCheck:
    """The answer, or a JSON field of it, is one of a set (labels compared normalised)."""

    name = "choices"

    def __init__(
        self, choices: Sequence[str], *, path: str | None = None, case_sensitive: bool = False
    ) -> None:
        self._fold = str.strip if case_sensitive else normalize_label
        self._choices = frozenset(self._fold(c) for c in choices)
        # Named in the reason, so that a repair turn tells the model what it may answer.
        listed = ", ".join(dict.fromkeys(c.strip() for c in choices))
        self._listed = listed if len(listed) <= 200 else listed[:197] + "..."
        self._steps = parse_json_path(path) if path is not None else None

    def __call__(self, answer: str) -> Verdict:
        value: Any = answer
        if self._steps is not None:
            try:
                value = value_at(answer, steps=self._steps)
            except ValueError as exc:
                return Verdict(False, str(exc))
        if isinstance(value, str | int | float) and self._fold(str(value)) in self._choices:
            return Verdict(True)
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:37] + "..."
        return Verdict(False, f"{shown!r} is not one of: {self._listed}")


class ConfidenceCheck:
    """The number at a JSON path of the answer (a stated confidence) is at least a threshold."""

    name = "confidence"

    def __init__(self, *, path: str, threshold: float) -> None:
        self._steps = parse_json_path(path)
        self._threshold = threshold

    def __call__(self, answer: str) -> Verdict:
        what = _show_path(self._steps)
        try:
            value = as_number(value_at(answer, steps=self._steps))
        except ValueError as exc:
            return Verdict(False, str(exc))
        if value is None:
            return Verdict(False, f"{what} is not a number")
        if value >= self._threshold:
            return Verdict(True)
        return Verdict(False, f"{what} {value:.3g} < {self._threshold:g}")


class LogprobCheck:
    """The answer's mean token logprob is at least a threshold (the plan asks for logprobs)."""

    name = "confidence"

    def __init__(self, *, threshold: float) -> None:
        self._threshold = threshold

    async def verify(self, subject: Subject, *, grader: Grader) -> Verdict:
        value = subject.mean_logprob
        if value is None:
            return Verdict(False, "the response carried no token logprobs")
        if value >= self._threshold:
            return Verdict(True)
        return Verdict(False, f"mean token logprob {value:.3g} < {self._threshold:g}")


class LengthCheck:
    """The answer has at least (`min_length`) or at most (`max_length`) so many characters."""

    def __init__(self, *, chars: int, at_least: bool) -> None:
        self.name = "min_length" if at_least else "max_length"
        self._chars = chars
        self._at_least = at_least

    def __call__(self, answer: str) -> Verdict:
        size = len(answer)
        if (size >= self._chars) if self._at_least else (size <= self._chars):
            return Verdict(True)
        bound = "at least" if self._at_least else "at most"
        return Verdict(False, f"{size} characters, wanted {bound} {self._chars}")


class PythonCheck:
    """A user function `f(row, answer)` returning a bool or (bool, reason), on its own thread,
    for at most `timeout_s`.

    A thread, because "run the tests on this code" may take seconds and must not stall the
    event loop that all other rows share. A thread cannot be stopped: past the timeout the
    check fails with reason "timeout" and the row moves on while the function runs to its
    end in the background (a daemon thread, so a stuck one does not hold the process open).
    A subprocess could be killed, but would need the function, the row and the answer to be
    picklable and pay a process start (or a pool's upkeep) per check; a check that truly
    hangs is rarer than one that is slow, and the timeout bounds what the run waits for.
    """

    name = "python"

    def __init__(
        self, function: Callable[..., Any], *, reference: str, timeout_s: float = 60.0
    ) -> None:
        self._function = function
        self._reference = reference
        self._timeout_s = timeout_s

    async def verify(self, subject: Subject, *, grader: Grader) -> Verdict:
        call = _ThreadCall(self._function, dict(subject.row), subject.answer)
        with anyio.move_on_after(self._timeout_s):
            return self.read(await call.result())
        return Verdict(False, f"timeout: {self._reference} ran past {self._timeout_s:g} s")

    def read(self, outcome: Any) -> Verdict:
        if isinstance(outcome, bool):
            return Verdict(outcome, None if outcome else f"{self._reference} returned False")
        if (
            isinstance(outcome, tuple)
            and len(outcome) == 2
            and isinstance(outcome[0], bool)
            and (outcome[1] is None or isinstance(outcome[1], str))
        ):
            passed, reason = outcome
            return Verdict(passed, None if passed else reason or f"{self._reference} failed")
        kind = type(outcome).__name__
        return Verdict(False, f"{self._reference} returned {kind}, not a bool or (bool, reason)")


class _ThreadCall:
    """`function(*args)` on a new daemon thread; `result()` waits for it without blocking
    the event loop, and can be cancelled, which leaves the thread to finish alone."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self._done = anyio.Event()
        self._token = anyio.lowlevel.current_token()
        self._outcome: tuple[bool, Any] = (False, None)
        thread = threading.Thread(target=self._run, args=(function, *args), daemon=True)
        thread.start()

    def _run(self, function: Callable[..., Any], *args: Any) -> None:
        try:
            self._outcome = (True, function(*args))
        except BaseException as exc:  # the user's code: handed to the waiting task
            self._outcome = (False, exc)
        try:
            anyio.from_thread.run_sync(self._done.set, token=self._token)
        except RuntimeError:
            pass  # the event loop has ended: nobody waits for this result any more

    async def result(self) -> Any:
        await self._done.wait()
        finished, value = self._outcome
        if not finished:
            raise value
        return value


def import_function(reference: str, *, base_dir: Path | None) -> Callable[..., Any]:
    """Import `module:function`, looking first in the job's directory.

    The directory is first on sys.path only while the module imports (a check's module may
    import its siblings at the top); it is not left there for every later import of the
    process to find. Raises ValueError with a message for the job file's error line.
    """
    module_name, _, attribute = reference.partition(":")
    try:
        with _IMPORT_LOCK, _first_on_path(base_dir):
            module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module runs at import: any error is a config error
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"{module_name!r} has no function {attribute!r}")
    return function


_IMPORT_LOCK = threading.Lock()  # sys.path is the process's: one scoped change at a time


@contextlib.contextmanager
def _first_on_path(directory: Path | None) -> Iterator[None]:
    if directory is None or str(directory) in sys.path:
        yield
        return
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        sys.path.remove(str(directory))


class CheckSuite:
    """A plan's checks: all must pass; the first failure is the verdict."""

    def __init__(
        self,
        *,
        quick: Sequence[Check] = (),
        slow: Sequence[ContextCheck] = (),
        columns: Sequence[str] = (),
    ) -> None:
        self._quick = tuple(quick)
        self._slow = tuple(slow)
        self.columns = tuple(columns)  # dataset columns the checks read (a judge's rubric)
        names = [c.name for c in self._quick] + [c.name for c in self._slow]
        self.name = "+".join(names)

    async def verify(self, subject: Subject, *, grader: Grader) -> Verdict:
        for check in self._quick:
            try:
                verdict = check(subject.answer)
            except Exception as exc:  # a check that raises fails the answer, never the row
                verdict = _raised(exc)
            if not verdict.passed:
                return replace(verdict, check=check.name)
        for slow in self._slow:
            try:
                verdict = await slow.verify(subject, grader=grader)
            except Exception as exc:  # above all a user's python check: any exception at all
                verdict = _raised(exc)
            if not verdict.passed:
                return replace(verdict, check=slow.name)
        return Verdict(True)


def _raised(exc: Exception) -> Verdict:
    return Verdict(False, f"raised {type(exc).__name__}: {exc}")


ANSWER_CHECKS = ("json_schema", "regex", "choices", "confidence", "min_length", "max_length")


def build_check(config: CheckConfig | None, *, params: Params) -> Check | None:
    """The check of one answer-only config (a `confidence` on logprobs is not one).

    A json_schema check without a schema uses the response format's. Raises ValueError
    ("key: problem") for a schema, pattern or path that cannot work.
    """
    if config is None:
        return None
    if config.type not in ANSWER_CHECKS or config.logprobs:
        raise ValueError(f"type: a {config.type} check needs more than the answer")
    if config.type == "regex":
        assert config.pattern is not None
        try:
            return RegexCheck(config.pattern)
        except re.error as exc:
            raise ValueError(f"pattern: not a valid regular expression: {exc}") from None
    if config.type == "choices":
        assert config.choices is not None
        return ChoicesCheck(config.choices, path=config.path, case_sensitive=config.case_sensitive)
    if config.type == "confidence":
        assert config.path is not None and config.threshold is not None
        return ConfidenceCheck(path=config.path, threshold=config.threshold)
    if config.type in ("min_length", "max_length"):
        assert config.chars is not None
        return LengthCheck(chars=config.chars, at_least=config.type == "min_length")
    schema = config.schema_
    if schema is None and params.response_format is not None:
        schema = params.response_format.schema_
    if schema is None:
        raise ValueError("schema: a json_schema check needs a schema (or a json_schema response)")
    import jsonschema  # see JsonSchemaCheck

    try:
        return JsonSchemaCheck(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise ValueError(f"schema: not a valid JSON schema: {exc.message}") from None
    except RemoteRefError as exc:
        raise ValueError(f"schema: {exc}") from None
