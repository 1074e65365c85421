"""Rules learned from the data: route the values of a column where a cheaper model loses
(almost) nothing against the top model to that cheaper model.

The sample is split in two. On the learning half, each value of the column is ranked by how
often the cheaper model misses what the top model gets right (smoothed, so a value seen
rarely ranks late). The policies are nested: the first value to the cheaper model, then the
first two, and so on; they form one family, ordered from the safest (fewest values sent to
the cheaper model) to the cheapest, and are tested on the other half, which played no part in
the ranking. That is what keeps the guarantee honest about a rule chosen from the data.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from batchroute.errors import DatasetError
from batchroute.tune.policies import Policy, by_cost
from batchroute.tune.sample import Answers

__all__ = ["Split", "check_rule_columns", "rule_families", "split_sample"]

MAX_VALUES = 64  # a column with more distinct values than this is not "low-cardinality"


@dataclass(frozen=True, slots=True)
class Split:
    learn: list[int]  # sample rows that rank values (or train the router)
    test: list[int]  # sample rows the learned policies are tested on


def split_sample(rows: int, *, seed: int) -> Split:
    order = list(range(rows))
    random.Random(f"tune-split-{seed}").shuffle(order)
    half = rows // 2
    return Split(sorted(order[:half]), sorted(order[half:]))


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _identifier(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def rules_toml(column: str, values: Sequence[Any], *, cheap: str, top: str) -> str:
    """The `[route]` of a learned rule: these values of `column` to `cheap`, the rest to `top`."""
    when = f"{_identifier(column)} IN ({', '.join(_literal(v) for v in values)})"
    return "\n".join(
        [
            "[route]",
            'strategy = "rules"',
            f"default = {json.dumps(top)}",
            "",
            "[[route.rules]]",
            f"name = {json.dumps(f'learned: {column}')}",
            f"when = {json.dumps(when)}",
            f"target = {json.dumps(cheap)}",
        ]
    )


def _ranked(
    values: Sequence[Any], *, rows: Sequence[int], cheap: Answers, top: Answers, net: bool
) -> list[Any]:
    """The column's values, those where `cheap` loses least against `top` first; with `net`,
    its wins (right where `top` is wrong) offset its losses, as the ratio statistic counts."""
    seen: dict[Any, list[int]] = {}
    for i in rows:
        if values[i] is not None:
            seen.setdefault(values[i], []).append(i)
    scores = {}
    for value, members in seen.items():
        losses = sum(1 for i in members if top.correct[i] and not cheap.correct[i])
        if net:
            losses -= sum(1 for i in members if cheap.correct[i] and not top.correct[i])
        scores[value] = (losses + 1) / (len(members) + 2)  # Laplace: rare values rank late
    return sorted(scores, key=lambda v: (scores[v], str(v)))


def check_rule_columns(frame: pl.DataFrame, columns: Sequence[str], *, source: object) -> None:
    """Each `--rules-on` column exists and has few enough text, integer or boolean values."""
    for column in columns:
        if column not in frame.columns:
            raise DatasetError(f"{source}: --rules-on {column}: no such column")
        distinct = {v for v in frame[column].to_list() if v is not None}
        if not 2 <= len(distinct) <= MAX_VALUES or any(isinstance(v, float) for v in distinct):
            raise DatasetError(
                f"{source}: --rules-on {column}: {len(distinct)} distinct values in the sample;"
                f" rules need 2 to {MAX_VALUES} text, integer or boolean values"
            )


def rule_families(
    frame: pl.DataFrame,
    table: Mapping[str, Answers],
    *,
    columns: Sequence[str],
    top: str,
    split: Split,
    source: object,
    net: bool,
) -> list[list[Policy]]:
    """One family per (column, cheaper model): nested rules, tested on the split's test half."""
    check_rule_columns(frame, columns, source=source)
    families = []
    for column in columns:
        values = frame[column].to_list()
        for cheap in by_cost(table):
            if cheap == top or sum(table[cheap].cost) >= sum(table[top].cost):
                continue
            ranked = _ranked(values, rows=split.learn, cheap=table[cheap], top=table[top], net=net)
            family = []
            for size in range(1, len(ranked) + 1):
                chosen = set(ranked[:size])
                picks = [table[cheap] if values[i] in chosen else table[top] for i in split.test]
                family.append(
                    Policy(
                        key=f"rules: {size} {column} value(s) to {cheap}, the rest to {top}",
                        tiers=(cheap, top),
                        cost=[a.cost[i] for a, i in zip(picks, split.test, strict=True)],
                        correct=[a.correct[i] for a, i in zip(picks, split.test, strict=True)],
                        escalated=[False] * len(split.test),
                        kind="rules",
                        detail={"toml": rules_toml(column, ranked[:size], cheap=cheap, top=top)},
                        rows=list(split.test),
                    )
                )
            families.append(family)
    return families
