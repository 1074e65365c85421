"""Train the learned router on the sample's outcomes, and make its policies for the guarantee.

The label of a row is "the cheaper model's answer will do": it is right, or the top model's
is wrong too (so sending the row to the cheaper model loses nothing). A logistic regression
on the row's hashed features (learned.py) is fitted on the learning half of the sample by a
few epochs of stochastic gradient descent, in pure Python. Its threshold grid, fixed before
any answer is seen and ordered from the safest (0.99: only rows it is sure of go cheap) to
the cheapest, is one family, tested on the other half, which the model never saw.
Examples from earlier runs (`--from-runs`, from_runs.py) join the learning half only.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from batchroute.job import Job
from batchroute.learned import RouterModel, features
from batchroute.tune.policies import UNIT_GRID, Policy, by_cost
from batchroute.tune.rules_learn import Split
from batchroute.tune.sample import Answers

if TYPE_CHECKING:  # from_runs reads the prompt's columns from here
    from batchroute.tune.from_runs import RunExamples

__all__ = ["router_families", "text_columns", "train"]

BUCKETS = 2**16
EPOCHS, RATE, L2 = 6, 0.5, 1e-4


def text_columns(job: Job) -> tuple[str, ...]:
    """The columns a row's prompt is made of: the templates' placeholders or the messages."""
    if job.input.messages is not None:
        return (job.input.messages,)
    columns: list[str] = []
    for template in (job.input.system_template(), job.input.template()):
        if template is not None:
            columns += template.columns
    return tuple(dict.fromkeys(columns))


def train(
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[bool],
    *,
    text: Sequence[str],
    categorical: Sequence[str],
    seed: int,
) -> tuple[float, dict[int, float]]:
    """(bias, weights) of a logistic regression fitted by SGD with L2 on the active weights."""
    found = [
        features(r, text_columns=text, categorical_columns=categorical, buckets=BUCKETS)
        for r in rows
    ]
    bias, weights = 0.0, dict[int, float]()
    order = list(range(len(rows)))
    rng = random.Random(f"tune-router-{seed}")
    for epoch in range(EPOCHS):
        rng.shuffle(order)
        rate = RATE / math.sqrt(1 + epoch)
        for i in order:
            x = found[i]
            score = bias + sum(weights.get(s, 0.0) * v for s, v in x.items())
            p = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, score))))
            gradient = p - (1.0 if labels[i] else 0.0)
            bias -= rate * gradient
            for s, v in x.items():
                w = weights.get(s, 0.0)
                weights[s] = w - rate * (gradient * v + L2 * w)
    return bias, weights


def router_families(
    frame_rows: Sequence[Mapping[str, Any]],
    table: Mapping[str, Answers],
    *,
    job: Job,
    categorical: Sequence[str],
    top: str,
    split: Split,
    seed: int,
    extra: RunExamples | None = None,
) -> list[list[Policy]]:
    """One family per cheaper model: the router's threshold grid on the test half. `extra`
    rows (earlier runs') are trained on with the learning half; the test half stays the
    sample's own, so the guarantee's test sees no row the router learned from."""
    text = text_columns(job)
    families = []
    for cheap in by_cost(table):
        if cheap == top or sum(table[cheap].cost) >= sum(table[top].cost):
            continue
        low, high = table[cheap], table[top]
        labels = [low.correct[i] or not high.correct[i] for i in split.learn]
        rows = [frame_rows[i] for i in split.learn]
        more_rows, more_labels = ([], []) if extra is None else extra.labelled(cheap=cheap, top=top)
        bias, weights = train(
            [*rows, *more_rows],
            labels + more_labels,
            text=text,
            categorical=categorical,
            seed=seed,
        )
        model = RouterModel(
            cheap=cheap,
            top=top,
            threshold=1.0,
            text_columns=text,
            categorical_columns=tuple(categorical),
            buckets=BUCKETS,
            bias=bias,
            weights=weights,
            trained_on=len(rows) + len(more_rows),
            from_runs=len(more_rows),
        )
        chances = [model.probability(frame_rows[i]) for i in split.test]
        family = []
        for threshold in UNIT_GRID:
            picks = [low if p >= threshold else high for p in chances]
            tuned = replace(model, threshold=threshold)
            family.append(
                Policy(
                    key=f"learned router: {cheap} when p >= {threshold:g}, else {top}",
                    tiers=(cheap, top),
                    cost=[a.cost[i] for a, i in zip(picks, split.test, strict=True)],
                    correct=[a.correct[i] for a, i in zip(picks, split.test, strict=True)],
                    escalated=[False] * len(split.test),
                    kind="learned",
                    detail={"model": tuned},
                    rows=list(split.test),
                )
            )
        families.append(family)
    return families
