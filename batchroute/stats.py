"""Small statistics shared by the estimate, shadow sampling and the run summaries."""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


def wilson(successes: int, n: int, *, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: honest at small n and near 0 or 1, unlike
    the normal one."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    # At 0 or n successes a bound is exactly 0 or 1; say so rather than leave float noise.
    low = 0.0 if successes == 0 else max(0.0, (centre - spread) / scale)
    high = 1.0 if successes == n else min(1.0, (centre + spread) / scale)
    return low, high
