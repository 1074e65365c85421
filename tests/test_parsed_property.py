"""The schema-to-Arrow mapping against a plain-Python reading: random schemas, random answers."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchroute.parsed import AnswerParser, schema_dtype

# --- random JSON schemas ------------------------------------------------------------------

NAMES = st.text(alphabet="abcxyz_é 1", min_size=1, max_size=6)
SCALAR_TYPES = st.sampled_from(["string", "number", "integer", "boolean"])


def _scalar_schemas() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        SCALAR_TYPES.map(lambda t: {"type": t}),
        SCALAR_TYPES.map(lambda t: {"type": [t, "null"]}),
        st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, unique=True).map(
            lambda v: {"type": "string", "enum": v}
        ),
        st.lists(st.integers(-3, 3), min_size=1, unique=True).map(lambda v: {"enum": v}),
        st.just({"enum": ["a", 1]}),  # mixed: JSON text
        st.just({"const": True}),
        st.just({"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        st.just({"anyOf": [{"type": "integer"}, {"type": "string"}]}),  # JSON text
        st.just({"oneOf": [{"type": "number"}, {"type": "number", "minimum": 0}]}),
        st.just({"type": ["string", "integer"]}),  # JSON text
        st.just({}),  # no type: JSON text
        st.just({"allOf": [True]}),  # the `true` schema: JSON text
        st.just({"type": "object", "additionalProperties": {"type": "integer"}}),  # a map
        st.just({"type": "array"}),  # no items: JSON text
        st.just({"$ref": "#/$defs/Item"}),
        st.just({"$ref": "#/$defs/Node"}),  # recursive: JSON text below the first level
        st.just({"$ref": "https://example.com/remote.json"}),  # not local: JSON text
    )


def _extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        children.map(lambda c: {"type": "array", "items": c}),
        st.dictionaries(NAMES, children, min_size=1, max_size=4).map(
            lambda p: {"type": "object", "properties": p}
        ),
        st.dictionaries(NAMES, children, min_size=1, max_size=3).map(
            lambda p: {"properties": p, "required": sorted(p)[:1]}  # object by its properties
        ),
        children.map(lambda c: {"allOf": [c]}),
    )


DEFS = {
    "Item": {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "tag": {"type": "string"}},
    },
    "Node": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "next": {"$ref": "#/$defs/Node"}},
    },
}

SCHEMAS = st.recursive(_scalar_schemas(), _extend, max_leaves=8).map(lambda s: {**s, "$defs": DEFS})

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
    max_leaves=10,
)


@st.composite
def _fitting(draw: st.DrawFn, schema: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """A value mostly shaped like `schema`, sometimes not, so both branches are read."""
    if depth > 4 or draw(st.integers(0, 9)) == 0:
        return draw(JSON_VALUES)
    if not isinstance(schema, dict):
        return draw(JSON_VALUES)
    if "$ref" in schema:
        target = _resolve(root, schema["$ref"])
        return draw(_fitting(target, root, depth + 1)) if target is not None else None
    if "enum" in schema:
        return draw(st.sampled_from(schema["enum"]))
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return draw(_fitting(draw(st.sampled_from(schema[key])), root, depth + 1))
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = draw(st.sampled_from(kind))
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "string":
        return draw(st.text(max_size=4))
    if kind == "number":
        return draw(st.floats(allow_nan=False) | st.integers(-100, 100))
    if kind == "integer":
        whole = st.floats(-1e20, 1e20).map(lambda f: float(round(f)))
        return draw(st.integers(-(2**64), 2**64) | whole | st.floats(-1e3, 1e3))
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "array" and "items" in schema:
        return [
            draw(_fitting(schema["items"], root, depth + 1)) for _ in range(draw(st.integers(0, 3)))
        ]
    if kind == "object" and "properties" in schema:
        out = {}
        for name, sub in schema["properties"].items():
            if draw(st.booleans()) or draw(st.booleans()):
                out[name] = draw(_fitting(sub, root, depth + 1))
        return out
    return draw(JSON_VALUES)


# --- the plain-Python reading -------------------------------------------------------------


def _resolve(root: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _kind(schema: Any, root: dict[str, Any], seen: frozenset[str]) -> Any:
    """ "string", "number", "integer", "boolean" or "json"; ("list", k) or ("struct", {...})."""
    if not isinstance(schema, dict):
        return "json"
    if "$ref" in schema:
        target = _resolve(root, schema["$ref"])
        if target is None or schema["$ref"] in seen:
            return "json"
        return _kind(target, root, seen | {schema["$ref"]})
    values = [schema["const"]] if "const" in schema else schema.get("enum")
    if values:
        values = [v for v in values if v is not None]
        if values and all(type(v) is str for v in values):
            return "string"
        if values and all(type(v) is bool for v in values):
            return "boolean"
        if values and all(type(v) is int for v in values):
            return "integer"
        if values and all(type(v) in (int, float) for v in values):
            return "number"
        return "json"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            kinds = [_kind(o, root, seen) for o in schema[key] if o != {"type": "null"}]
            return kinds[0] if kinds and all(k == kinds[0] for k in kinds) else "json"
    if "allOf" in schema:
        return _kind(schema["allOf"][0], root, seen) if len(schema["allOf"]) == 1 else "json"
    kind = schema.get("type")
    if isinstance(kind, list):
        rest = [k for k in kind if k != "null"]
        kind = rest[0] if len(rest) == 1 else None
    if kind is None and "properties" in schema:
        kind = "object"
    if kind in ("string", "number", "integer", "boolean"):
        return kind
    if kind == "array" and isinstance(schema.get("items"), dict):
        return ("list", _kind(schema["items"], root, seen))
    if kind == "object" and schema.get("properties"):
        return ("struct", {n: _kind(s, root, seen) for n, s in schema["properties"].items()})
    return "json"


def _dtype(kind: Any) -> pl.DataType:
    if isinstance(kind, tuple) and kind[0] == "list":
        return pl.List(_dtype(kind[1]))
    if isinstance(kind, tuple):
        return pl.Struct({name: _dtype(k) for name, k in kind[1].items()})
    return {
        "string": pl.String(),
        "number": pl.Float64(),
        "integer": pl.Int64(),
        "boolean": pl.Boolean(),
        "json": pl.String(),
    }[kind]


def _read(kind: Any, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(kind, tuple) and kind[0] == "list":
        return [_read(kind[1], v) for v in value] if type(value) is list else None
    if isinstance(kind, tuple):
        if type(value) is not dict:
            return None
        return {name: _read(k, value.get(name)) for name, k in kind[1].items()}
    if kind == "string":
        return value if type(value) is str else None
    if kind == "boolean":
        return value if type(value) is bool else None
    if kind == "number":
        if type(value) not in (int, float) or abs(value) > 1.7976931348623157e308:
            return None
        return float(value)
    if kind == "integer":
        if type(value) is float and math.isfinite(value) and value == math.floor(value):
            value = int(value)
        return value if type(value) is int and -(2**63) <= value < 2**63 else None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), schema=SCHEMAS)
def test_answers_read_as_the_plain_reading_says(
    data: st.DataObject, schema: dict[str, Any]
) -> None:
    values = data.draw(st.lists(_fitting(schema, schema), min_size=1, max_size=5))
    answers: list[str | None] = [json.dumps(v) for v in values]
    answers += [None, "not json {", "[1, 2"]
    kind = _kind(schema, schema, frozenset())
    parser = AnswerParser(schema)

    column = parser.parse(answers)

    assert schema_dtype(schema) == _dtype(kind) == column.dtype
    expected = [_read(kind, v) for v in values] + [None, None, None]
    assert column.to_list() == expected
    # The same values after a trip through Parquet, as any reader of the results sees them.
    buffer = io.BytesIO()
    pl.DataFrame([column]).write_parquet(buffer)
    buffer.seek(0)
    assert pl.from_arrow(pq.read_table(buffer))["parsed"].to_list() == expected


def test_infinity_and_nan_are_not_numbers() -> None:
    """JSON has neither; Python's json module reads them, so the parser must refuse them."""
    parser = AnswerParser({"type": "object", "properties": {"x": {"type": "number"}}})
    column = parser.parse(['{"x": Infinity}', '{"x": -Infinity}', '{"x": NaN}', '{"x": 1.5}'])
    assert column.to_list() == [{"x": None}, {"x": None}, {"x": None}, {"x": 1.5}]
