"""Rule predicates: parsing, validation against a schema, and first-match evaluation in polars.

The property tests draw random predicates from a small SQL grammar, render each both as SQL
for polars and as a plain-Python evaluator with SQL's three-valued logic, and check that the
rule polars picks for every random row is the one the Python evaluation picks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchroute.rules import Predicate, PredicateError, first_match

SCHEMA = {"a": pl.Int64(), "b": pl.Int64(), "s": pl.String()}


def test_first_match_wins_and_null_does_not_match() -> None:
    frame = pl.DataFrame({"kind": ["code", "chat", None, "code"], "n": [1, 50, 7, None]})
    rules = [Predicate.parse("n > 10"), Predicate.parse("kind = 'code'")]
    # Row 3 has n null: "n > 10" is NULL, not a match, so the second rule gets it.
    assert first_match(frame, predicates=rules) == [1, 0, 2, 1]


def test_a_predicate_naming_no_column_applies_to_the_whole_batch() -> None:
    frame = pl.DataFrame({"x": [1, 2, 3]})
    assert first_match(frame, predicates=[Predicate.parse("1 = 2"), Predicate.parse("true")]) == [
        1,
        1,
        1,
    ]
    assert first_match(frame.head(0), predicates=[Predicate.parse("x > 1")]) == []


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("kind = ", "not a SQL expression"),
        ("SELECT 1", "SELECT is not allowed"),  # refused before polars reads it
        ("no_such_function(kind)", r"no_such_function\(\) is not allowed"),
    ],
)
def test_unparseable_predicates_are_errors(sql: str, problem: str) -> None:
    with pytest.raises(PredicateError, match=problem):
        Predicate.parse(sql)


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("tier = 'enterprise'", "names column 'tier', which is not in the dataset"),
        ("s > 5", "cannot be evaluated on the dataset"),
        ("a + 1", "gives Int64, not true/false"),
        ("length(a) > 2", "cannot be evaluated"),
    ],
)
def test_predicates_are_checked_against_the_schema(sql: str, problem: str) -> None:
    with pytest.raises(PredicateError, match=problem):
        Predicate.parse(sql).check(SCHEMA)


def test_a_good_predicate_passes_the_schema_check() -> None:
    Predicate.parse("s = 'summarize' AND length(s) < 4000 OR a IS NULL").check(SCHEMA)


# --- property tests ------------------------------------------------------------------------

Row = dict[str, Any]
Truth = bool | None  # SQL's three values: true, false, unknown (NULL)


@dataclass(frozen=True)
class Expr:
    sql: str
    eval: Callable[[Row], Truth]


def _and(p: Truth, q: Truth) -> Truth:
    if p is False or q is False:
        return False
    return None if p is None or q is None else True


def _or(p: Truth, q: Truth) -> Truth:
    if p is True or q is True:
        return True
    return None if p is None or q is None else False


_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "=": lambda x, y: x == y,
    "<>": lambda x, y: x != y,
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
}
WORDS = ["", "a", "ab", "code", "chat", "summarize"]


def _compare(column: str, op: str, value: int) -> Expr:
    def run(row: Row) -> Truth:
        x = row[column]
        return None if x is None else _COMPARE[op](x, value)

    return Expr(f"({column} {op} {value})", run)


def _string_is(value: str) -> Expr:
    return Expr(f"(s = '{value}')", lambda row: None if row["s"] is None else row["s"] == value)


def _length_under(n: int) -> Expr:
    return Expr(f"(length(s) < {n})", lambda row: None if row["s"] is None else len(row["s"]) < n)


def _is_null(column: str, negate: bool) -> Expr:
    sql = f"({column} IS {'NOT ' if negate else ''}NULL)"
    return Expr(sql, lambda row: (row[column] is None) != negate)


def _in(column: str, values: list[int]) -> Expr:
    def run(row: Row) -> Truth:
        x = row[column]
        return None if x is None else x in values

    return Expr(f"({column} IN ({', '.join(map(str, values))}))", run)


def _not(p: Expr) -> Expr:
    return Expr(f"(NOT {p.sql})", lambda row: None if (v := p.eval(row)) is None else not v)


def _both(p: Expr, q: Expr) -> Expr:
    return Expr(f"({p.sql} AND {q.sql})", lambda row: _and(p.eval(row), q.eval(row)))


def _either(p: Expr, q: Expr) -> Expr:
    return Expr(f"({p.sql} OR {q.sql})", lambda row: _or(p.eval(row), q.eval(row)))


small_ints = st.integers(min_value=-5, max_value=5)
columns = st.sampled_from(["a", "b"])
atoms = st.one_of(
    st.builds(_compare, columns, st.sampled_from(list(_COMPARE)), small_ints),
    st.builds(_string_is, st.sampled_from(WORDS)),
    st.builds(_length_under, st.integers(min_value=0, max_value=10)),
    st.builds(_is_null, st.sampled_from(["a", "b", "s"]), st.booleans()),
    st.builds(_in, columns, st.lists(small_ints, min_size=1, max_size=3)),
)
predicates = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.builds(_not, inner), st.builds(_both, inner, inner), st.builds(_either, inner, inner)
    ),
    max_leaves=6,
)
rows = st.fixed_dictionaries(
    {
        "a": st.none() | small_ints,
        "b": st.none() | small_ints,
        "s": st.none() | st.sampled_from(WORDS),
    }
)


def _python_first_match(rules: list[Expr], row: Row) -> int:
    for index, rule in enumerate(rules):
        if rule.eval(row) is True:  # NULL is not a match, as in a WHERE clause
            return index
    return len(rules)


@settings(max_examples=250, deadline=None)
@given(rules=st.lists(predicates, min_size=1, max_size=4), data=st.lists(rows, max_size=25))
def test_polars_picks_the_rule_python_picks(rules: list[Expr], data: list[Row]) -> None:
    frame = pl.DataFrame(data, schema=SCHEMA)
    parsed = [Predicate.parse(rule.sql) for rule in rules]
    for predicate in parsed:
        predicate.check(SCHEMA)  # every well-typed predicate passes validation
    expected = [_python_first_match(rules, row) for row in data]
    assert first_match(frame, predicates=parsed) == expected


@settings(max_examples=150, deadline=None)
@given(predicate=predicates, data=st.lists(rows, min_size=1, max_size=25))
def test_each_predicate_is_true_exactly_where_python_says(predicate: Expr, data: list[Row]) -> None:
    frame = pl.DataFrame(data, schema=SCHEMA)
    values = frame.select(Predicate.parse(predicate.sql).expr).to_series().to_list()
    if len(values) == 1 and len(data) > 1:
        values = values * len(data)
    assert values == [predicate.eval(row) for row in data]
