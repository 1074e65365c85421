"""Rule predicates: SQL expressions over a batch's columns, evaluated by polars, first match wins.

A predicate is a SQL expression (`task_type = 'code' AND length(text) < 4000`) that polars
parses into an expression and evaluates over a whole batch at once; no Python runs per row.
SQL's three-valued logic holds: a predicate that is NULL for a row (a null column) does not
match it, the next rule gets the row.

A predicate reads the row's columns and nothing else. polars runs a subquery while it parses
(`text IN (SELECT column_1 FROM read_csv('/etc/passwd'))` read the file and showed its first
line in the error), so `safe_sql` looks at the text before polars sees it: no subquery, no
table function, no aggregate or window, only the scalar functions of an allow-list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl

from batchroute.errors import one_line

# Errors polars raises for a predicate it cannot parse or evaluate. A panic in its Rust core
# surfaces as PanicException, which is a BaseException: name it, so it is a config error too.
_POLARS_ERRORS = (pl.exceptions.PolarsError, pl.exceptions.PanicException)


class PredicateError(ValueError):
    """A predicate that does not parse, names a missing column, or is not true/false."""


# The lexical pieces of polars' SQL that matter here: string literals ('' escapes a quote;
# a backslash is a plain character, as polars reads it), quoted identifiers, words, and
# what may start a comment or a dollar-quoted string, which are refused rather than parsed.
_TOKENS = re.compile(
    r"""(?P<string>'(?:[^']|'')*')
    |(?P<ident>"(?:[^"]|"")*"|`[^`]*`)
    |(?P<word>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<refused>--|/\*|\$|;)
    |(?P<open>\()|(?P<close>\))
    |(?P<space>\s+)|(?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
# Scalar functions of one row's values. Anything else called is refused: table functions
# (read_csv, read_parquet, ...), aggregates and windows (count, max, ... over other rows).
_SCALAR_FUNCTIONS = frozenset(
    """abs acos acosd asin asind atan atan2 atan2d atand cbrt ceil ceiling cos cosd cot cotd
    degrees exp floor ln log log10 log1p log2 mod pi pow power radians round sign sin sind sqrt
    tan tand trunc
    bit_length btrim char_length character_length concat concat_ws ends_with initcap left
    length lower ltrim normalize octet_length regexp_like replace reverse right rtrim
    split_part starts_with strpos strptime substr upper
    coalesce greatest if ifnull least nullif nvl
    date date_part datepart strftime timestamp""".split()
)
# Keywords that may stand before a parenthesis: `x IN (...)`, `NOT (...)`, `CAST(x AS int)`.
_SYNTAX = frozenset(
    """and or not in is like ilike between case when then else end as any all some distinct
    cast try_cast extract position substring trim overlay""".split()
)
# FROM belongs to these forms only (`EXTRACT(year FROM d)`, `a IS DISTINCT FROM b`).
_FROM_INSIDE = frozenset({"extract", "substring", "trim", "overlay"})
# What makes a subquery. A column of one of these names is written quoted: "values".
_QUERY_WORDS = frozenset("select with exists union intersect except values table join".split())


def safe_sql(sql: str) -> None:
    """Raise PredicateError unless `sql` can only read the row's own columns."""
    tokens = [m for m in _TOKENS.finditer(sql) if m.lastgroup != "space"]
    calls: list[str] = []  # the word before each open parenthesis: a function or keyword
    previous = ""
    for index, token in enumerate(tokens):
        kind, text = token.lastgroup, token.group()
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if kind == "refused":
            what = {";": "a second statement", "$": "a dollar-quoted string"}.get(text, "a comment")
            raise PredicateError(f"{what} ({text!r}) is not allowed in a rule")
        if kind == "open":
            calls.append(previous)
        elif kind == "close" and calls:
            calls.pop()
        previous = text.lower() if kind == "word" else ""
        opens = following is not None and following.lastgroup == "open"
        if kind == "ident" and opens:  # "read_csv"(...) is still a call
            raise PredicateError(f"{text}() is not allowed: a quoted name cannot be called")
        if kind != "word":
            continue
        if following is not None and following.lastgroup == "string":
            # E'..', N'..', X'41': literals polars reads in ways of their own; '...' will do.
            if following.start() == token.end() and text.lower() not in _SYNTAX:
                raise PredicateError(f"a prefixed literal ({text}'...') is not allowed")
        _check_word(text, opens=opens, calls=calls, before=_lower(tokens, index - 1))


def _lower(tokens: list[re.Match[str]], index: int) -> str:
    return tokens[index].group().lower() if index >= 0 else ""


def _check_word(text: str, *, opens: bool, calls: list[str], before: str) -> None:
    """A word is a column or a keyword, or, before a parenthesis, a function or a keyword."""
    word = text.lower()
    if word in _QUERY_WORDS or (
        word == "from" and before != "distinct" and (not calls or calls[-1] not in _FROM_INSIDE)
    ):
        raise PredicateError(
            f"{text.upper()} is not allowed: a rule is an expression over the row's own"
            " columns, not a query"
        )
    if opens and word not in _SYNTAX and word not in _SCALAR_FUNCTIONS:
        raise PredicateError(
            f"{text}() is not allowed: a rule may call scalar functions of the row's own"
            " columns only (no table functions, aggregates or windows)"
        )


@dataclass(frozen=True, slots=True)
class Predicate:
    """One rule's `when`, parsed."""

    sql: str
    expr: pl.Expr

    @classmethod
    def parse(cls, sql: str) -> Predicate:
        """Parse `sql`; raises PredicateError when it reads more than the row (`safe_sql`)
        or polars cannot read it as an expression."""
        safe_sql(sql)
        try:
            expr = pl.sql_expr(sql)
        except _POLARS_ERRORS as exc:
            raise PredicateError(f"not a SQL expression polars can read: {one_line(exc)}") from None
        return cls(sql=sql, expr=expr)

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(self.expr.meta.root_names()))

    def check(self, schema: Mapping[str, pl.DataType]) -> None:
        """Evaluate on an empty frame of `schema`: missing columns and type errors show now.

        Raises PredicateError naming the first missing column, or why it cannot evaluate.
        """
        for column in self.columns:
            if column not in schema:
                known = ", ".join(schema)
                raise PredicateError(
                    f"names column {column!r}, which is not in the dataset (columns: {known})"
                )
        try:
            dtype = pl.DataFrame(schema=dict(schema)).select(self.expr).to_series().dtype
        except _POLARS_ERRORS as exc:
            raise PredicateError(f"cannot be evaluated on the dataset: {one_line(exc)}") from None
        if dtype != pl.Boolean:
            raise PredicateError(f"gives {dtype}, not true/false")


def first_match(frame: pl.DataFrame, *, predicates: Sequence[Predicate]) -> list[int]:
    """For each row, the index of the first predicate true for it; len(predicates) if none.

    One nested when/then/otherwise over the batch; a null condition counts as false, which is
    SQL's WHERE semantics.
    """
    if not predicates:
        return [0] * frame.height
    expr = pl.lit(len(predicates), dtype=pl.Int32)
    # Built from the last rule up, so the first rule's branch is outermost and wins.
    for index in range(len(predicates) - 1, -1, -1):
        expr = pl.when(predicates[index].expr).then(pl.lit(index, dtype=pl.Int32)).otherwise(expr)
    try:
        picked = frame.select(expr.alias("rule")).to_series().to_list()
    except _POLARS_ERRORS as exc:
        raise PredicateError(f"cannot be evaluated on this batch: {one_line(exc)}") from None
    if len(picked) == 1 and frame.height != 1:
        # Predicates that name no column (`true`, `1 = 1`) give one value for the batch.
        picked = picked * frame.height
    return picked
