"""Candidate policies, evaluated offline on the sample's answers: no further call is made.

A policy says, per sampled row, what it would have cost, whether its answer is right and
whether the row escalated. The families (each one tested as a fixed sequence, guarantee.py):

- each model alone (a family of one);
- cascades over ordered subsets of two and three candidates, cheapest first, escalating on
  the job's checks (one policy) or on a signal under a threshold (a family per signal, its
  thresholds ordered from the safest, which escalates most, to the cheapest);
- rules learned from the data and the learned router (rules_learn.py, router_model.py).

A tier whose call failed (after retries and fallbacks) escalates like a failed check, and
costs what it was charged.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from batchroute.tune.sample import Answers
from batchroute.tune.signals import Signal

__all__ = ["Gate", "Policy", "cascade_families", "evaluate_cascade", "single_families"]

GRID = 19  # thresholds per signal: the 5%, 10%, ... 95% quantiles of the first tier's values


@dataclass(frozen=True, slots=True)
class Gate:
    """What lets a tier's answer stand: the job's checks, or a signal at a threshold."""

    signal: Signal | None = None  # None: the job's checks
    threshold: float | None = None

    def describe(self) -> str:
        if self.signal is None:
            return "check"
        return f"{self.signal.name} >= {self.threshold:.4g}"


@dataclass(frozen=True, slots=True)
class Policy:
    """One candidate route and its outcome on every sampled row."""

    key: str
    tiers: tuple[str, ...]
    cost: list[float]
    correct: list[bool]
    escalated: list[bool]
    gate: Gate | None = None
    # Rules and the learned router route rows rather than cascade them (their own writers).
    kind: str = "fixed"
    detail: dict[str, object] = field(default_factory=dict)
    # The sample rows the outcome lists stand for (None: all). A learned policy is tested on
    # the rows it was not learned from.
    rows: list[int] | None = None

    @property
    def mean_cost(self) -> float:
        return sum(self.cost) / len(self.cost) if self.cost else 0.0

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0

    @property
    def escalation(self) -> float:
        return sum(self.escalated) / len(self.escalated) if self.escalated else 0.0


def single_families(table: Mapping[str, Answers]) -> list[list[Policy]]:
    """Each model alone, a family of one."""
    return [
        [Policy(key=m, tiers=(m,), cost=a.cost, correct=a.correct, escalated=[False] * len(a.cost))]
        for m, a in table.items()
    ]


def evaluate_cascade(
    tiers: Sequence[str], *, table: Mapping[str, Answers], passes: Mapping[str, Sequence[bool]]
) -> tuple[list[float], list[bool], list[bool]]:
    """Per row: the cost of the tiers tried, the kept answer's correctness, and escalation."""
    rows = len(table[tiers[0]].cost)
    cost, correct, escalated = [], [], []
    for i in range(rows):
        spent = 0.0
        for depth, model in enumerate(tiers):
            spent += table[model].cost[i]
            last = depth == len(tiers) - 1
            if last or (table[model].ok[i] and passes[model][i]):
                cost.append(spent)
                correct.append(table[model].correct[i])
                escalated.append(depth > 0)
                break
    return cost, correct, escalated


def by_cost(table: Mapping[str, Answers]) -> list[str]:
    """The candidates, cheapest on the sample first."""
    return sorted(table, key=lambda m: (sum(table[m].cost), m))


def cascade_families(
    table: Mapping[str, Answers],
    *,
    verdicts: Mapping[str, list[bool]] | None,
    signals: Sequence[Signal],
) -> list[list[Policy]]:
    """Cascades of 2 and 3 tiers (cheapest first) with each gate; one family per gate."""
    ordered = by_cost(table)
    values = {s.name: {m: s.read(a) for m, a in table.items()} for s in signals}
    families: list[list[Policy]] = []
    for size in (2, 3):
        for tiers in itertools.combinations(ordered, size):
            name = " > ".join(tiers)
            if verdicts is not None:
                gate = Gate()
                outcome = evaluate_cascade(tiers, table=table, passes=verdicts)
                families.append([Policy(f"{name} [check]", tiers, *outcome, gate=gate)])
            for signal in signals:
                family = []
                for threshold in thresholds(values[signal.name][tiers[0]]):
                    gate = Gate(signal, threshold)
                    passes = {
                        m: [v is not None and v >= threshold for v in values[signal.name][m]]
                        for m in tiers
                    }
                    outcome = evaluate_cascade(tiers, table=table, passes=passes)
                    key = f"{name} [{gate.describe()}]"
                    family.append(Policy(key, tiers, *outcome, gate=gate))
                if family:
                    families.append(family)
    return families


UNIT_GRID = [0.99, 0.98, 0.97, 0.96, *(x / 20 for x in range(19, 0, -1))]


def thresholds(values: Sequence[float | None]) -> list[float]:
    """The grid of one signal, from the highest threshold (safest) down to the lowest.

    A signal within [0, 1] (a stated confidence) gets a fixed grid, chosen before seeing any
    answer, as Learn-then-Test asks; another (a mean logprob) gets its quantiles over the
    sample, which depend on the signal's values only, not on which answers are right.
    """
    known = sorted(v for v in values if v is not None)
    if not known:
        return []
    if 0.0 <= known[0] and known[-1] <= 1.0:
        return list(UNIT_GRID)
    grid = {
        known[min(len(known) - 1, int(q * len(known) / (GRID + 1)))] for q in range(1, GRID + 1)
    }
    return sorted(grid, reverse=True)
