"""Score every policy against the top model, apply the guarantee, pick the cheapest that holds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from batchroute.stats import Z_95
from batchroute.tune.guarantee import Hypothesis, learn_then_test
from batchroute.tune.kept import Kept, KeptStatistic
from batchroute.tune.policies import Policy

__all__ = ["Choice", "Scored", "choose", "cost_interval", "pareto"]


@dataclass(frozen=True, slots=True)
class Scored:
    """A policy with its figures on the sample and whether it passed the test."""

    policy: Policy
    kept: float  # the kept accuracy on the sample (ratio or share, as chosen)
    cost_low: float  # per row, a 95% normal interval of the mean
    cost_high: float
    accepted: bool
    # One-sided bounds of the kept accuracy at the level of the test; computed only for the
    # policies shown (NaN otherwise), since each costs a search.
    kept_low: float = math.nan
    kept_high: float = math.nan


@dataclass(frozen=True, slots=True)
class Choice:
    top: str  # the most accurate candidate on the sample: the reference
    scored: list[Scored]  # every policy, cheapest first
    chosen: Scored | None  # the cheapest accepted policy; None when none holds the target
    families: int
    target: float
    confidence: float
    statistic: KeptStatistic


def cost_interval(costs: Sequence[float]) -> tuple[float, float]:
    """A 95% normal interval of the mean of `costs` (the mean itself with fewer than two)."""
    mean = statistics.fmean(costs) if costs else 0.0
    if len(costs) < 2:
        return mean, mean
    half = Z_95 * statistics.stdev(costs) / math.sqrt(len(costs))
    return max(0.0, mean - half), mean + half


def choose(
    families: Sequence[Sequence[Policy]],
    *,
    top: Policy,
    target: float,
    confidence: float,
    statistic: KeptStatistic = "ratio",
    seed: int = 0,
    with_bounds: bool = True,
) -> Choice:
    """Learn-then-Test over `families` at `1 - confidence`; the cheapest accepted policy.

    `with_bounds` computes the shown policies' confidence bounds (for the table), a search
    each that the choice itself does not need.
    """
    delta = 1.0 - confidence
    kept = Kept(statistic, top=top.correct, seed=seed)

    def test(policy: Policy) -> Hypothesis:
        def p_value(level: float) -> float:
            return kept.p_value(policy.correct, policy.rows, target=target, alpha=level)

        return Hypothesis(policy.key, p_value)

    hypotheses = [[test(p) for p in family] for family in families]
    accepted = learn_then_test(hypotheses, delta=delta)
    scored = []
    for family in families:
        for policy in family:
            low, high = cost_interval(policy.cost)
            point = kept.point(policy.correct, policy.rows)
            scored.append(Scored(policy, point, low, high, accepted=policy.key in accepted))
    scored.sort(key=lambda s: (s.policy.mean_cost, -s.kept, s.policy.key))
    chosen = next((s for s in scored if s.accepted), None)
    level = delta / max(1, len(families))
    shown = {id(s) for s in pareto(scored)} | {id(chosen)} if with_bounds else set()
    shown |= {id(s) for s in sorted(scored, key=lambda s: -s.kept)[:3]} if with_bounds else set()
    for index, s in enumerate(scored):
        if id(s) in shown:
            low, high = kept.bounds(s.policy.correct, s.policy.rows, alpha=level)
            scored[index] = Scored(
                s.policy, s.kept, s.cost_low, s.cost_high, s.accepted, kept_low=low, kept_high=high
            )
            chosen = scored[index] if s is chosen else chosen
    return Choice(top.key, scored, chosen, len(families), target, confidence, statistic)


def pareto(scored: Sequence[Scored]) -> list[Scored]:
    """Policies no other beats on both cost (lower) and kept accuracy (higher), cheapest first."""
    front: list[Scored] = []
    best = -1.0
    for s in sorted(scored, key=lambda s: (s.policy.mean_cost, -s.kept)):
        if s.kept > best:
            front.append(s)
            best = s.kept
    return front
