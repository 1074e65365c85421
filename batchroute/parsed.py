"""The parsed answer: a job's JSON schema mapped to an Arrow type, and answers read into it.

    string, enum or const of strings    String
    number                              Float64
    integer                             Int64 (an integral float such as 3.0 too)
    boolean                             Boolean
    array with `items`                  List of the items' type
    object with `properties`            Struct of the properties (other keys are dropped)
    ["T", "null"], anyOf/oneOf [T, null], $ref to "#/..."    as T
    anything else                       String holding the value as JSON text: a map
                                        (`additionalProperties` without `properties`), an
                                        anyOf/oneOf of different types, an array without
                                        `items`, a recursive $ref, a schema with no type

Types are read, constraints are not: a value of the wrong type is null (an answer that is not
JSON, or whose root has the wrong type, is a null struct), while a string outside its enum or
a number under its minimum is kept; `check_passed` says whether the whole schema held.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

__all__ = ["AnswerParser", "answer_schema", "parser_for", "schema_dtype"]

PARSED = "parsed"  # the results column
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class _Node:
    """One schema node compiled: its kind, its dtype, and its items or fields."""

    kind: str  # string | number | integer | boolean | json | list | struct
    dtype: pl.DataType
    items: _Node | None = None
    fields: tuple[tuple[str, _Node], ...] = ()

    def read(self, value: Any) -> Any:
        """`value` (parsed JSON) as this node's Python value; None for the wrong type."""
        if value is None:
            return None
        kind = self.kind
        if kind == "string":
            return value if isinstance(value, str) else None
        if kind == "boolean":
            return value if isinstance(value, bool) else None
        if kind == "number":
            return _as_float(value)
        if kind == "integer":
            return _as_int(value)
        if kind == "list":
            assert self.items is not None
            return [self.items.read(v) for v in value] if isinstance(value, list) else None
        if kind == "struct":
            if not isinstance(value, dict):
                return None
            return {name: node.read(value.get(name)) for name, node in self.fields}
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer past the largest double
        return None
    # JSON has no Infinity or NaN; Python's json module reads them anyway, so they end here.
    return number if math.isfinite(number) else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, int) and _INT64[0] <= value <= _INT64[1]:
        return value
    return None


_JSON = _Node("json", pl.String())
_SCALARS = {
    "string": _Node("string", pl.String()),
    "number": _Node("number", pl.Float64()),
    "integer": _Node("integer", pl.Int64()),
    "boolean": _Node("boolean", pl.Boolean()),
}


class _Compiler:
    """Walks a schema from its root, resolving local `$ref`s (a cycle becomes JSON text)."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self._root = root

    def node(self, schema: Any, *, refs: tuple[str, ...] = ()) -> _Node:
        if not isinstance(schema, Mapping):
            return _JSON  # `true`, `false` or junk: no type to read
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target = self._resolve(ref)
            if target is None or ref in refs:
                return _JSON
            return self.node(target, refs=(*refs, ref))
        if "const" in schema:
            return _of_values([schema["const"]])
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return _of_values(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return self._one_of(schema[key], refs=refs)
        all_of = schema.get("allOf")
        if isinstance(all_of, list):
            return self.node(all_of[0], refs=refs) if len(all_of) == 1 else _JSON
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = kinds[0] if len(kinds) == 1 else None
        if kind is None and isinstance(schema.get("properties"), Mapping):
            kind = "object"
        if kind is None and isinstance(schema.get("items"), Mapping):
            kind = "array"
        if isinstance(kind, str) and kind in _SCALARS:
            return _SCALARS[kind]
        if kind == "array" and isinstance(schema.get("items"), Mapping):
            items = self.node(schema["items"], refs=refs)
            return _Node("list", pl.List(items.dtype), items=items)
        if kind == "object" and isinstance(schema.get("properties"), Mapping):
            props = schema["properties"]
            if props:
                fields = tuple((str(k), self.node(v, refs=refs)) for k, v in props.items())
                dtype = pl.Struct([pl.Field(name, n.dtype) for name, n in fields])
                return _Node("struct", dtype, fields=fields)
        return _JSON

    def _one_of(self, options: list[Any], *, refs: tuple[str, ...]) -> _Node:
        """One type when every branch but `null` has the same one; else JSON text."""
        nodes = [self.node(o, refs=refs) for o in options if not _is_null(o)]
        if nodes and all(n == nodes[0] for n in nodes):
            return nodes[0]
        return _JSON

    def _resolve(self, ref: str) -> Any:
        """A `#/a/b` pointer into the root schema; None for anything else."""
        if not ref.startswith("#"):
            return None
        node: Any = self._root
        for raw in ref[1:].split("/")[1:] if ref != "#" else []:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node


def _is_null(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null" and len(schema) == 1


def _of_values(values: Sequence[Any]) -> _Node:
    """The type of an enum or const: all strings, all booleans, all integers or all numbers."""
    values = [v for v in values if v is not None]
    if not values:
        return _JSON
    if all(isinstance(v, str) for v in values):
        return _SCALARS["string"]
    if all(isinstance(v, bool) for v in values):
        return _SCALARS["boolean"]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) == len(values):
        integral = all(isinstance(v, int) for v in numbers)
        return _SCALARS["integer" if integral else "number"]
    return _JSON


def schema_dtype(schema: Mapping[str, Any]) -> pl.DataType:
    """The polars (Arrow) type that answers to `schema` are read into."""
    return _Compiler(schema).node(schema).dtype


class AnswerParser:
    """Reads answers (JSON text) into the typed values of one schema."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        self._root = _Compiler(schema).node(schema)
        self.dtype = self._root.dtype

    def read(self, answer: str | None) -> Any:
        """The answer's value: None when it is missing or not JSON."""
        if answer is None:
            return None
        try:
            return self._root.read(json.loads(answer))
        except (json.JSONDecodeError, RecursionError):  # not JSON, or nested past reading
            return None

    def parse(self, answers: Sequence[str | None], *, name: str = PARSED) -> pl.Series:
        """The answers as one typed column."""
        return pl.Series(name, [self.read(a) for a in answers], dtype=self.dtype, strict=True)


def answer_schema(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema answers are read with, from a job's settings (`Job.settings()`, or the
    `job` of a results file's metadata): the response format's, else the first json_schema
    check's. A plan's own response format or checks do not change it."""
    params = settings.get("params") or {}
    response = params.get("response_format") or {}
    if response.get("type") == "json_schema" and isinstance(response.get("schema"), dict):
        return dict(response["schema"])
    for check in settings.get("check") or ():
        if check.get("type") == "json_schema" and isinstance(check.get("schema"), dict):
            return dict(check["schema"])
    return None


def parser_for(settings: Mapping[str, Any]) -> AnswerParser | None:
    """The parser of a job's answers (see `answer_schema`); None when it has no JSON schema."""
    schema = answer_schema(settings)
    return AnswerParser(schema) if schema is not None else None
