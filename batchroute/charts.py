"""What the comparison charts show, independent of how they are drawn (SVG or matplotlib).

Two charts: cost versus quality (each run a point at its cost per 1,000 rows and accuracy,
the Pareto front marked: no other run is both cheaper and more accurate) and the model mix
(one stacked bar per run: the share of answered rows each model gave the final answer to).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from batchroute.comparison import Comparison

__all__ = [
    "PALETTE",
    "MixBar",
    "Point",
    "cost_quality",
    "front_steps",
    "ink_on",
    "model_colors",
    "model_mix",
    "nice_ticks",
    "pareto_front",
    "place_labels",
]

# Okabe & Ito's colour-blind-safe palette, then greys: models keep one colour in every chart.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
    "#999999",
    "#666666",
)


@dataclass(frozen=True, slots=True)
class Point:
    """One run on the cost-versus-quality chart."""

    run: str
    cost_per_1k: float
    accuracy: float
    on_front: bool


@dataclass(frozen=True, slots=True)
class MixBar:
    """One run's bar on the model-mix chart: (model, share) from the largest share down."""

    run: str
    shares: tuple[tuple[str, float], ...]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (cost, quality): True when no other point is at most as costly and at least
    as good, and strictly one of the two."""
    flags = []
    for i, (cost, quality) in enumerate(points):
        dominated = any(
            c <= cost and q >= quality and (c < cost or q > quality)
            for j, (c, q) in enumerate(points)
            if j != i
        )
        flags.append(not dominated)
    return flags


def cost_quality(comparison: Comparison) -> list[Point]:
    """The runs that have both a cost per row and an accuracy, marked on or off the front.

    Runs at the very same place (a rerun answered from the store) become one point whose
    label names them all, so no label hides another.
    """
    merged: dict[tuple[float, float], list[str]] = {}
    for r in comparison.frame.iter_rows(named=True):
        if r["cost_per_row_usd"] is not None and r["accuracy"] is not None:
            where = (round(r["cost_per_row_usd"] * 1000, 9), round(r["accuracy"], 9))
            merged.setdefault(where, []).append(r["run"])
    coords = list(merged)
    flags = pareto_front(coords)
    return [
        Point(" = ".join(names), cost, accuracy, flag)
        for (cost, accuracy), names, flag in zip(coords, merged.values(), flags, strict=True)
    ]


def front_steps(points: Sequence[Point]) -> list[tuple[float, float]]:
    """The front as a staircase: the best accuracy that each budget can buy.

    From each front point the line runs right at its accuracy to the next front point's
    cost, then up to that point.
    """
    front = sorted((p.cost_per_1k, p.accuracy) for p in points if p.on_front)
    steps: list[tuple[float, float]] = []
    for cost, accuracy in front:
        if steps:
            steps.append((cost, steps[-1][1]))
        steps.append((cost, accuracy))
    return steps


def model_mix(comparison: Comparison) -> list[MixBar]:
    return [
        MixBar(r["run"], tuple((s["name"], s["share"]) for s in r["model_mix"]))
        for r in comparison.frame.iter_rows(named=True)
    ]


def model_colors(bars: Sequence[MixBar]) -> dict[str, str]:
    """A colour per model, in order of first appearance, the same in every chart."""
    names: dict[str, None] = {}
    for bar in bars:
        for model, _ in bar.shares:
            names.setdefault(model)
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def nice_ticks(low: float, high: float, *, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten) covering [low, high]."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value < high + step * 0.999:
        ticks.append(round(value, 12))
        value += step
    return ticks


def ink_on(color: str) -> str:
    """Black or white, whichever reads better on the `#RRGGBB` background `color`."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#ffffff"


# Where a label may sit relative to its point, in order of preference (pixels, y down).
_SPOTS = ((9, -9), (9, 17), (-9, -9), (-9, 17), (9, -24), (9, 32))


def place_labels(
    anchors: Sequence[tuple[float, float]], widths: Sequence[float], *, height: float = 14
) -> list[tuple[float, float, bool]]:
    """(dx, dy, to the left) per label so that labels overlap neither each other nor the
    other points, trying a few spots around each point; greedy, in screen pixels."""
    placed: list[tuple[float, float, float, float]] = []
    out: list[tuple[float, float, bool]] = []
    for index, ((x, y), width) in enumerate(zip(anchors, widths, strict=True)):
        others = [a for i, a in enumerate(anchors) if i != index]  # its own point is beside it
        choice = None
        for dx, dy in _SPOTS:
            left = x + dx - width if dx < 0 else x + dx
            box = (left, y + dy - height + 3, left + width, y + dy + 3)
            clear = all(_apart(box, other) for other in placed) and all(
                _apart(box, (px - 6, py - 6, px + 6, py + 6)) for px, py in others
            )
            if clear:
                choice = (dx, dy, box)
                break
        if choice is None:  # crowded: the first spot, overlapping if it must
            dx, dy = _SPOTS[0]
            choice = (dx, dy, (x + dx, y + dy - height + 3, x + dx + width, y + dy + 3))
        placed.append(choice[2])
        out.append((choice[0], choice[1], choice[0] < 0))
    return out


def _apart(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    gap = 4  # labels closer than this read as one block
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
