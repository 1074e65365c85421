"""The comparison charts as inline SVG, written by hand for the HTML report.

Hand-written because the report must be one self-contained file that opens anywhere without
a server or the internet: SVG is text the browser draws crisply at any zoom, needs no
dependency (matplotlib stays optional) and keeps the page small (a few kilobytes per chart).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from html import escape

from batchroute.charts import (
    MixBar,
    Point,
    front_steps,
    ink_on,
    model_colors,
    nice_ticks,
    place_labels,
)

__all__ = ["FONT", "FRONT", "GREY", "Frame", "axes", "cost_quality_svg", "model_mix_svg"]

FONT = 'font-family="system-ui, sans-serif"'
FRONT, GREY, GRID = "#0072B2", "#666666", "#e3e3e3"


def _scale(low: float, high: float, start: float, end: float) -> Callable[[float], float]:
    span = (high - low) or 1.0
    return lambda v: start + (v - low) / span * (end - start)


@dataclass(frozen=True, slots=True)
class Frame:
    """Where a chart's plotting area is, and its data-to-pixel scales."""

    x: Callable[[float], float]
    y: Callable[[float], float]
    left: float
    right: float
    top: float
    bottom: float


def axes(
    x_ticks: list[float],
    y_ticks: list[float],
    *,
    width: int,
    height: int,
    x_label: str,
    y_label: str,
) -> tuple[list[str], Frame]:
    """The grid, tick labels (x as numbers, y as percentages) and axis titles of a chart."""
    left, right, top, bottom = 64, width - 24, 20, height - 48
    x = _scale(x_ticks[0], x_ticks[-1], left, right)
    y = _scale(y_ticks[0], y_ticks[-1], bottom, top)
    parts, grid = [], f'stroke="{GRID}"'
    for t in x_ticks:
        parts.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{bottom}" {grid}/>')
        parts.append(f'<text x="{x(t):.1f}" y="{bottom + 16}" text-anchor="middle">{t:g}</text>')
    for t in y_ticks:
        parts.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{right}" y2="{y(t):.1f}" {grid}/>')
        parts.append(
            f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t * 100:.4g}%</text>'
        )
    parts.append(
        f'<text x="{(left + right) / 2}" y="{height - 10}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text transform="translate(16 {(top + bottom) / 2}) rotate(-90)"'
        f' text-anchor="middle">{escape(y_label)}</text>'
    )
    return parts, Frame(x, y, left, right, top, bottom)


def cost_quality_svg(points: list[Point], *, width: int = 600, height: int = 400) -> str:
    """Each run at (cost per 1k rows, accuracy); front points filled, the front a dashed line."""
    label = "Cost versus quality: cost per 1,000 rows against accuracy, Pareto front marked"
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="cost-quality"'
        f' viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
        f' role="img" aria-label="{label}" {FONT} font-size="12">'
    )
    if not points:
        text = "No accuracy to plot: pass --truth COLUMN or --truth-scorer module:function."
        return (
            f'{head}<rect width="{width}" height="{height}" fill="#fafafa"/>'
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">{text}</text></svg>'
        )
    x_ticks = nice_ticks(0.0, max(p.cost_per_1k for p in points) * 1.15)
    y_low = min(p.accuracy for p in points)
    y_high = max(p.accuracy for p in points)
    pad = max((y_high - y_low) * 0.15, 0.02)
    y_ticks = nice_ticks(max(0.0, y_low - pad), min(1.0, y_high + pad))
    grid_parts, frame = axes(
        x_ticks,
        y_ticks,
        width=width,
        height=height,
        x_label="cost per 1,000 rows ($)",
        y_label="accuracy",
    )
    x, y, right, bottom = frame.x, frame.y, frame.right, frame.bottom
    parts = [head, *grid_parts]
    steps = front_steps(points)
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{x(a):.1f},{y(b):.1f}" for i, (a, b) in enumerate(steps)
    )
    parts.append(
        f'<path class="front" d="{path}" fill="none" stroke="{FRONT}" stroke-width="1.5"'
        ' stroke-dasharray="6 4"/>'
    )
    anchors = [(x(p.cost_per_1k), y(p.accuracy)) for p in points]
    spots = place_labels(anchors, [len(p.run) * 6.6 for p in points])
    for p, (px, py), (dx, dy, leftward) in zip(points, anchors, spots, strict=True):
        fill, stroke = (FRONT, FRONT) if p.on_front else ("#ffffff", GREY)
        tip = f"{p.run}: ${p.cost_per_1k:.4f} per 1k rows, {p.accuracy:.1%}"
        anchor = ' text-anchor="end"' if leftward else ""
        parts.append(
            f'<circle class="run{" on-front" if p.on_front else ""}" cx="{px:.1f}"'
            f' cy="{py:.1f}" r="6" fill="{fill}" stroke="{stroke}" stroke-width="2">'
            f"<title>{escape(tip)}</title></circle>"
            f'<text class="label" x="{px + dx:.1f}" y="{py + dy:.1f}"{anchor}>'
            f"{escape(p.run)}</text>"
        )
    parts.append(_legend_front(right - 150, bottom - 60))
    parts.append("</svg>")
    return "".join(parts)


def _legend_front(left: float, top: float) -> str:
    return (
        f'<g class="legend" transform="translate({left} {top})">'
        f'<rect width="146" height="56" fill="#ffffff" stroke="{GRID}"/>'
        f'<line x1="8" y1="13" x2="30" y2="13" stroke="{FRONT}" stroke-dasharray="6 4"'
        ' stroke-width="1.5"/><text x="36" y="17">Pareto front</text>'
        f'<circle cx="19" cy="29" r="5" fill="{FRONT}" stroke="{FRONT}" stroke-width="2"/>'
        '<text x="36" y="33">run on the front</text>'
        f'<circle cx="19" cy="45" r="5" fill="#ffffff" stroke="{GREY}" stroke-width="2"/>'
        '<text x="36" y="49">dominated run</text></g>'
    )


def model_mix_svg(bars: list[MixBar], *, width: int = 600) -> str:
    """One stacked bar per run: the share of answered rows per final model."""
    colors = model_colors(bars)
    label_w, bar_h, gap, top = 170, 24, 12, 12
    legend_rows = (len(colors) + 1) // 2
    height = top + len(bars) * (bar_h + gap) + 16 + legend_rows * 20 + 8
    x = _scale(0.0, 1.0, label_w, width - 16)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="model-mix"'
        f' viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img"'
        f' aria-label="Model mix: share of answered rows per model, per run" {FONT}'
        ' font-size="12">'
    ]
    for i, bar in enumerate(bars):
        y0 = top + i * (bar_h + gap)
        name = bar.run if len(bar.run) <= 24 else bar.run[:23] + "…"
        parts.append(
            f'<text x="{label_w - 8}" y="{y0 + bar_h / 2 + 4}" text-anchor="end">'
            f"{escape(name)}<title>{escape(bar.run)}</title></text>"
        )
        start = 0.0
        for model, share in bar.shares:
            x0, x1 = x(start), x(start + share)
            tip = f"{bar.run}: {model} {share:.1%}"
            parts.append(
                f'<rect class="segment" x="{x0:.1f}" y="{y0}" width="{max(x1 - x0, 0.5):.1f}"'
                f' height="{bar_h}" fill="{colors[model]}"><title>{escape(tip)}</title></rect>'
            )
            if x1 - x0 >= 34:
                parts.append(
                    f'<text x="{(x0 + x1) / 2:.1f}" y="{y0 + bar_h / 2 + 4}"'
                    f' text-anchor="middle" fill="{ink_on(colors[model])}">{share:.0%}</text>'
                )
            start += share
        if not bar.shares:
            parts.append(f'<text x="{label_w}" y="{y0 + bar_h / 2 + 4}">no answered rows</text>')
    legend_top = top + len(bars) * (bar_h + gap) + 8
    for i, (model, color) in enumerate(colors.items()):
        lx = label_w + (i % 2) * ((width - label_w) / 2)
        ly = legend_top + (i // 2) * 20
        parts.append(
            f'<rect x="{lx:.1f}" y="{ly}" width="12" height="12" fill="{color}"/>'
            f'<text x="{lx + 18:.1f}" y="{ly + 10}">{escape(model)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
