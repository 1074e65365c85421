"""`compare --plot FILE.png`: the two comparison charts drawn with matplotlib into one PNG.

matplotlib is an optional extra (`pip install 'batchroute[plot]'`): a raster image needs a
renderer and fonts, which is what it is, while everything else in batchroute (the HTML
report's charts included, which are hand-written SVG) works without it. It is imported here
only, through the object API (`Figure` + the Agg canvas), so no global pyplot state is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchroute.charts import (
    cost_quality,
    front_steps,
    ink_on,
    model_colors,
    model_mix,
    place_labels,
)
from batchroute.comparison import Comparison
from batchroute.errors import ConfigError, OutputError

__all__ = ["write_png"]

NO_TRUTH = "no accuracy to plot:\npass --truth COLUMN or --truth-scorer module:function"


def write_png(comparison: Comparison, path: Path) -> None:
    """Cost versus quality (Pareto front marked) beside the model mix, as a PNG at `path`."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'batchroute[plot]' (the HTML report does not)"
        ) from None
    runs = comparison.frame.height
    figure = Figure(figsize=(14, max(4.8, 1.6 + 0.55 * runs)), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, width_ratios=(1, 1.15))
    _mix(right, comparison)
    _cost_quality(left, comparison)  # last: its labels are placed on the final layout
    try:
        figure.savefig(path, format="png")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the plot: {exc.strerror or exc}") from None


def _cost_quality(ax: Any, comparison: Comparison) -> None:
    ax.set_title("Cost versus quality", loc="left", fontweight="bold")
    ax.set_xlabel("cost per 1,000 rows ($)")
    ax.set_ylabel("accuracy")
    points = cost_quality(comparison)
    if not points:
        ax.text(0.5, 0.5, NO_TRUTH, ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    steps = front_steps(points)
    xs, ys = [x for x, _ in steps], [y for _, y in steps]
    ax.plot(xs, ys, color="#0072B2", linestyle="--", linewidth=1.2, label="Pareto front")
    for front in (True, False):
        chosen = [p for p in points if p.on_front == front]
        if chosen:
            ax.scatter(
                [p.cost_per_1k for p in chosen],
                [p.accuracy for p in chosen],
                s=70,
                zorder=3,
                color="#0072B2" if front else "white",
                edgecolors="#0072B2" if front else "#666666",
                label="on the front" if front else "dominated",
            )
    ax.set_xlim(left=0, right=max(p.cost_per_1k for p in points) * 1.25 or 1)
    ax.margins(y=0.12)
    ax.yaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.legend(loc="best", fontsize=9)
    ax.figure.draw_without_rendering()  # lays the figure out, so pixel positions are final
    # Screen pixels with y down, as place_labels expects; matplotlib's y points up.
    anchors = [tuple(ax.transData.transform((p.cost_per_1k, p.accuracy))) for p in points]
    anchors = [(px, -py) for px, py in anchors]
    spots = place_labels(anchors, [len(p.run) * 7.0 for p in points], height=15)
    scale = 72 / ax.figure.dpi  # offsets are in points, placement in pixels
    for p, (dx, dy, leftward) in zip(points, spots, strict=True):
        where = (p.cost_per_1k, p.accuracy)
        ax.annotate(
            p.run,
            where,
            xytext=(dx * scale, -dy * scale),
            textcoords="offset points",
            fontsize=9,
            ha="right" if leftward else "left",
            va="baseline",
        )


def _mix(ax: Any, comparison: Comparison) -> None:
    ax.set_title("Model mix (share of answered rows)", loc="left", fontweight="bold")
    bars = model_mix(comparison)
    colors = model_colors(bars)
    labels = [bar.run for bar in bars]
    seen: set[str] = set()
    for y, bar in enumerate(bars):
        start = 0.0
        for model, share in bar.shares:
            label = None if model in seen else model
            seen.add(model)
            ax.barh(y, share, left=start, color=colors[model], label=label, height=0.6)
            if share >= 0.08:
                ink = ink_on(colors[model])
                ax.text(
                    start + share / 2,
                    y,
                    f"{share:.0%}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=ink,
                )
            start += share
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=8, frameon=False)
