"""Rule predicates: SQL expressions over a batch's columns, evaluated by polars, first match wins.

A predicate is a SQL expression (`task_type = 'code' AND length(text) < 4000`) that polars
parses into an expression and evaluates over a whole batch at once; no Python runs per row.
SQL's three-valued logic holds: a predicate that is NULL for a row (a null column) does not
match it, the next rule gets the row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl

# Errors polars raises for a predicate it cannot parse or evaluate. A panic in its Rust core
# surfaces as PanicException, which is a BaseException: name it, so it is a config error too.
_POLARS_ERRORS = (pl.exceptions.PolarsError, pl.exceptions.PanicException)


class PredicateError(ValueError):
    """A predicate that does not parse, names a missing column, or is not true/false."""


@dataclass(frozen=True, slots=True)
class Predicate:
    """One rule's `when`, parsed."""

    sql: str
    expr: pl.Expr

    @classmethod
    def parse(cls, sql: str) -> Predicate:
        """Parse `sql`; raises PredicateError when polars cannot read it as an expression."""
        try:
            expr = pl.sql_expr(sql)
        except _POLARS_ERRORS as exc:
            raise PredicateError(
                f"not a SQL expression polars can read: {_first_line(exc)}"
            ) from None
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
            raise PredicateError(
                f"cannot be evaluated on the dataset: {_first_line(exc)}"
            ) from None
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
        raise PredicateError(f"cannot be evaluated on this batch: {_first_line(exc)}") from None
    if len(picked) == 1 and frame.height != 1:
        # Predicates that name no column (`true`, `1 = 1`) give one value for the batch.
        picked = picked * frame.height
    return picked


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
