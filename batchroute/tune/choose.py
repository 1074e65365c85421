"""Score every policy against the top model, apply the guarantee, pick the cheapest that holds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from batchroute.stats import Z_95
from batchroute.tune.guarantee import (
    Hypothesis,
    clopper_pearson_lower,
    clopper_pearson_upper,
    learn_then_test,
)
from batchroute.tune.policies import Policy

__all__ = ["Choice", "Scored", "choose", "pareto"]


@dataclass(frozen=True, slots=True)
class Scored:
    """A policy with its figures on the sample and, if it passed the test, its level."""

    policy: Policy
    kept: int  # rows the top model and the policy both answer right
    top_right: int  # rows the top model answers right
    kept_low: float  # one-sided lower bound of the kept share, at the level tested
    kept_high: float
    cost_low: float  # per row, a 95% normal interval of the mean
    cost_high: float
    accepted: bool

    @property
    def kept_share(self) -> float:
        return self.kept / self.top_right if self.top_right else 0.0


@dataclass(frozen=True, slots=True)
class Choice:
    top: str  # the most accurate candidate on the sample: the reference
    scored: list[Scored]  # every policy, cheapest first
    chosen: Scored | None  # the cheapest accepted policy; None when none holds the target
    families: int
    target: float
    confidence: float


def _cost_interval(costs: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(costs) if costs else 0.0
    if len(costs) < 2:
        return mean, mean
    half = Z_95 * statistics.stdev(costs) / math.sqrt(len(costs))
    return max(0.0, mean - half), mean + half


def choose(
    families: Sequence[Sequence[Policy]], *, top: Policy, target: float, confidence: float
) -> Choice:
    """Learn-then-Test over `families` at `1 - confidence`; the cheapest accepted policy."""
    delta = 1.0 - confidence
    right = [i for i, good in enumerate(top.correct) if good]

    def kept(policy: Policy) -> int:
        return sum(1 for i in right if policy.correct[i])

    hypotheses = [[Hypothesis(p.key, kept(p), len(right)) for p in family] for family in families]
    accepted = learn_then_test(hypotheses, target=target, delta=delta)
    level = delta / max(1, len(families))
    scored = []
    for family in families:
        for policy in family:
            k = kept(policy)
            low, high = _cost_interval(policy.cost)
            scored.append(
                Scored(
                    policy=policy,
                    kept=k,
                    top_right=len(right),
                    kept_low=clopper_pearson_lower(k, len(right), alpha=level),
                    kept_high=clopper_pearson_upper(k, len(right), alpha=level),
                    cost_low=low,
                    cost_high=high,
                    accepted=policy.key in accepted,
                )
            )
    scored.sort(key=lambda s: (s.policy.mean_cost, -s.kept, s.policy.key))
    chosen = next((s for s in scored if s.accepted), None)
    return Choice(top.key, scored, chosen, len(families), target, confidence)


def pareto(scored: Sequence[Scored]) -> list[Scored]:
    """Policies no other beats on both cost (lower) and kept share (higher), cheapest first."""
    front: list[Scored] = []
    best = -1.0
    for s in sorted(scored, key=lambda s: (s.policy.mean_cost, -s.kept_share)):
        if s.kept_share > best:
            front.append(s)
            best = s.kept_share
    return front
