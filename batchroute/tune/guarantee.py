"""The guarantee: exact binomial bounds and Learn-then-Test over families of policies.

The exact statistic is the **kept share**: among the sampled rows the top model answers right, the
share the policy also answers right. Each row where the top model is right is a Bernoulli
trial of the policy, so with `k` kept out of `n` the Clopper-Pearson bound is exact. It is a
lower bound of the ratio of accuracies (policy / top): the policy's accuracy is at least its
accuracy on the rows the top model gets right, which is the kept share times the top model's
accuracy. So a policy whose kept share is at least the target keeps at least that share of
the top model's accuracy; rows the policy gets right and the top model wrong only add to it.

H0 for a policy: its kept share is below the target `t`. Its p-value is P(Bin(n, t) >= k),
the chance of keeping `k` or more if the share were exactly `t` (and smaller below `t`).
(kept.py holds this statistic and the ratio of accuracies, tested by betting.)
Learn-then-Test (Angelopoulos et al., 2021) rejects along each family's grid, ordered from the
safest policy to the cheapest, at `delta / families` (Bonferroni across families, fixed
sequence within one): it stops at the first p-value above the level. Every accepted policy
then holds its target together with all the others with probability at least `1 - delta`,
so the cheapest of them may be picked after looking at the costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "Hypothesis",
    "binomial_tail",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "learn_then_test",
    "p_value",
]


def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (exact to float precision)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0 or p >= 1.0:
        return 1.0 if p >= 1.0 else 0.0
    # Each term from the one before: pmf(j + 1) = pmf(j) * (n - j) / (j + 1) * p / (1 - p),
    # summed relative to the largest so far; past the mode the terms only shrink, so the sum
    # stops once they fall below e**-40 of it (far below a float's precision of the sum).
    step = math.log(p) - math.log1p(-p)
    log_term = _log_pmf(k, n, p)
    top, total = log_term, 1.0
    mode = n * p
    for j in range(k, n):
        log_term += math.log((n - j) / (j + 1)) + step
        if log_term > top:
            total = total * math.exp(top - log_term) + 1.0
            top = log_term
        else:
            total += math.exp(log_term - top)
            if j > mode and log_term < top - 40.0:
                break
    return min(1.0, math.exp(top) * total)


def p_value(kept: int, n: int, *, target: float) -> float:
    """The p-value of H0 "the kept share is below `target`" after keeping `kept` of `n`."""
    if n == 0:
        return 1.0
    return binomial_tail(kept, n, target)


def _bisect(f: Callable[[float], float], *, want: float, increasing: bool) -> float:
    low, high = 0.0, 1.0
    for _ in range(40):  # 2**-40: far below any figure shown
        mid = (low + high) / 2
        value = f(mid)
        if (value < want) == increasing:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def clopper_pearson_lower(kept: int, n: int, *, alpha: float) -> float:
    """The one-sided (1 - alpha) lower bound of a proportion after `kept` of `n`."""
    if kept <= 0 or n == 0:
        return 0.0
    # The largest p whose chance of `kept` or more is still at most alpha.
    return _bisect(lambda p: binomial_tail(kept, n, p), want=alpha, increasing=True)


def clopper_pearson_upper(kept: int, n: int, *, alpha: float) -> float:
    """The one-sided (1 - alpha) upper bound of a proportion after `kept` of `n`."""
    if kept >= n:
        return 1.0
    # The smallest p whose chance of `kept` or fewer is at most alpha.
    return _bisect(lambda p: 1.0 - binomial_tail(kept + 1, n, p), want=alpha, increasing=False)


@dataclass(frozen=True, slots=True)
class Hypothesis:
    """One policy under test; `p_value(level)` is computed only when the test reaches it."""

    key: str
    p_value: Callable[[float], float]


def learn_then_test(families: Sequence[Sequence[Hypothesis]], *, delta: float) -> dict[str, float]:
    """The accepted policies' keys, each with the level it was tested at.

    Each family is ordered from its safest policy to its cheapest; testing stops at the
    first one that fails, since a fixed sequence spends the whole level on each test only
    because it never tests past a failure.
    """
    if not families:
        return {}
    level = delta / len(families)
    accepted: dict[str, float] = {}
    for family in families:
        for hypothesis in family:
            if hypothesis.p_value(level) > level:
                break
            accepted[hypothesis.key] = level
    return accepted
