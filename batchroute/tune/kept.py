"""The two kept-accuracy statistics a policy is held to, each with a p-value and bounds.

Both are paired: a policy and the top model answer the same sampled rows.

- `ratio` (the default): the policy's accuracy over the top model's, what the target means.
  H0 "ratio < t" is "E[y_policy - t * y_top] < 0" for a per-row z = y_policy - t * y_top in
  [-t, 1]. It is tested with a betting confidence sequence (Waudby-Smith and Ramdas, 2023,
  the predictable plug-in bet, one-sided): the wealth of betting that the mean of z is above
  0 is a nonnegative supermartingale under H0, so by Ville's inequality 1 / (its maximum)
  is a valid p-value at any sample size, without a normal approximation. The rows are bet
  on in a seeded random order, which makes them exchangeable whatever order the data has.
  Rows the policy gets right and the top model wrong count for the policy. Since the share
  below is a lower bound of the ratio, its exact test is valid for the ratio too; the ratio's
  p-value is twice the smaller of the two (Bonferroni), which keeps the exact test's power
  where the policy loses almost nothing (betting is weakest there: it may never stake it all).
- `share`: of the rows the top model gets right, the share the policy also gets right; an
  exact binomial (Clopper-Pearson). It never credits the policy for the top model's misses,
  so it is a lower bound of the ratio: stricter, exact, and simpler to explain.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Literal

from batchroute.tune.guarantee import clopper_pearson_lower, clopper_pearson_upper, p_value

__all__ = ["Kept", "KeptStatistic"]

KeptStatistic = Literal["ratio", "share"]
_CAP = 0.75  # the largest bet, as a share of what the wealth could lose: never all of it


def _bet_p_value(xs: Sequence[float], *, mean0: float, alpha: float) -> float:
    """p-value of H0 "E[x] <= mean0" for x in [0, 1], by betting on x - mean0 (PrPl)."""
    n = len(xs)
    if n == 0 or mean0 >= 1.0:
        return 1.0
    wealth, best = 1.0, 1.0
    total, squares = 0.5, 0.25  # the prior of the plug-in mean and variance: one half-row
    log_1_alpha = math.log(1 / alpha)
    for i, x in enumerate(xs):
        mean = total / (i + 1)
        variance = squares / (i + 1)
        bet = math.sqrt(2 * log_1_alpha / (n * variance))
        bet = min(bet, _CAP / mean0) if mean0 > 0 else bet
        wealth *= 1 + bet * (x - mean0)
        best = max(best, wealth)
        squares += (x - mean) ** 2
        total += x
    return min(1.0, 1.0 / best)


class Kept:
    """Kept accuracy of policies against one top model's outcomes on the same rows."""

    def __init__(self, statistic: KeptStatistic, *, top: Sequence[bool], seed: int) -> None:
        self.statistic = statistic
        self._top = list(top)
        self._order = list(range(len(top)))
        random.Random(f"tune-bets-{seed}").shuffle(self._order)

    def _pairs(self, correct: Sequence[bool], rows: Sequence[int] | None) -> list[tuple[int, int]]:
        """(top right, policy right) per row, in the seeded betting order."""
        index = rows if rows is not None else range(len(correct))
        pairs = {r: (int(self._top[r]), int(c)) for r, c in zip(index, correct, strict=True)}
        return [pairs[r] for r in self._order if r in pairs]

    def point(self, correct: Sequence[bool], rows: Sequence[int] | None) -> float:
        pairs = self._pairs(correct, rows)
        right = sum(t for t, _ in pairs)
        if self.statistic == "share":
            return sum(1 for t, p in pairs if t and p) / right if right else 0.0
        return sum(p for _, p in pairs) / right if right else 0.0

    def p_value(
        self, correct: Sequence[bool], rows: Sequence[int] | None, *, target: float, alpha: float
    ) -> float:
        """The p-value of H0 "kept < target" for this policy."""
        pairs = self._pairs(correct, rows)
        kept = sum(1 for t, p in pairs if t and p)
        exact = p_value(kept, sum(t for t, _ in pairs), target=target)
        if self.statistic == "share":
            return exact
        # z = p - target * t in [-target, 1], mapped onto [0, 1]; H0: E[z] < 0.
        xs = [(p - target * t + target) / (1 + target) for t, p in pairs]
        bet = _bet_p_value(xs, mean0=target / (1 + target), alpha=alpha / 2)
        return min(1.0, 2 * min(exact, bet))

    def bounds(
        self, correct: Sequence[bool], rows: Sequence[int] | None, *, alpha: float
    ) -> tuple[float, float]:
        """One-sided (1 - alpha) lower and upper bounds of the kept accuracy."""
        pairs = self._pairs(correct, rows)
        kept, right = sum(1 for t, p in pairs if t and p), sum(t for t, _ in pairs)
        if self.statistic == "share":
            return (
                clopper_pearson_lower(kept, right, alpha=alpha),
                clopper_pearson_upper(kept, right, alpha=alpha),
            )
        alpha /= 2  # as in p_value: the exact share's bound and the bet's, each at half

        def rejects_below(ratio: float) -> bool:  # "kept < ratio" is rejected
            xs = [(p - ratio * t + ratio) / (1 + ratio) for t, p in pairs]
            return _bet_p_value(xs, mean0=ratio / (1 + ratio), alpha=alpha) <= alpha

        def rejects_above(ratio: float) -> bool:  # "kept > ratio" is rejected
            xs = [1 - (p - ratio * t + ratio) / (1 + ratio) for t, p in pairs]
            return _bet_p_value(xs, mean0=1 / (1 + ratio), alpha=alpha) <= alpha

        low = max(
            clopper_pearson_lower(kept, right, alpha=alpha), _edge(rejects_below, rising=True)
        )
        return low, _edge(rejects_above, rising=False)


def _edge(rejects: Callable[[float], bool], *, rising: bool, high: float = 4.0) -> float:
    """Bisect [0, high] for where `rejects` flips: the confidence bound of the ratio."""
    low, top = 0.0, high
    for _ in range(24):  # 4 / 2**24: far below any figure shown
        mid = (low + top) / 2
        if rejects(mid) == rising:
            low = mid
        else:
            top = mid
    return low if rising else top
