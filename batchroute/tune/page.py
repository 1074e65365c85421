"""`tune --plot` and `tune --report`: the frontier as an SVG file, and an HTML page around it.

The page is built like `batchroute report`'s (`report.html_page`: the same style, no script,
nothing fetched), so it opens from disk anywhere: the frontier chart, the Pareto-optimal
policies with their intervals, and what `tune` printed, word for word.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path

from batchroute.report import html_page
from batchroute.tune.choose import Choice, Scored, pareto
from batchroute.tune.frontier import frontier_svg, write_text

__all__ = ["render_tune_page", "write_pictures"]

_HEADERS = (
    ("", False),
    ("policy", False),
    ("$/1k rows", True),
    ("95% interval", True),
    ("kept", True),
    ("bounds", True),
    ("escalated", True),
    ("accuracy", True),
    ("holds the target", False),
)


def _row(s: Scored, *, chosen: bool) -> str:
    cost = s.policy.mean_cost * 1000
    cells = (
        "chosen" if chosen else "",
        s.policy.key,
        f"{cost:.4f}",
        f"{s.cost_low * 1000:.4f}-{s.cost_high * 1000:.4f}",
        f"{s.kept:.1%}",
        f"{s.kept_low:.1%}-{s.kept_high:.1%}",
        f"{s.policy.escalation:.1%}",
        f"{s.policy.accuracy:.1%}",
        "yes" if s.accepted else "no",
    )
    return (
        "<tr>"
        + "".join(
            f'<td class="num">{escape(c)}</td>' if right else f"<td>{escape(c)}</td>"
            for c, (_, right) in zip(cells, _HEADERS, strict=True)
        )
        + "</tr>"
    )


def render_tune_page(choice: Choice, *, title: str, printed: Sequence[str]) -> str:
    """The whole page: the frontier, the front's table (the choice included) and the output."""
    shown = pareto(choice.scored)
    if choice.chosen is not None and all(s is not choice.chosen for s in shown):
        shown = sorted([*shown, choice.chosen], key=lambda s: (s.policy.mean_cost, -s.kept))
    head = "".join(
        f'<th class="num">{escape(h)}</th>' if right else f"<th>{escape(h)}</th>"
        for h, right in _HEADERS
    )
    rows = "".join(_row(s, chosen=s is choice.chosen) for s in shown)
    body = f"""<h2>Cost-quality frontier of the sample</h2>
<p>{len(choice.scored)} policies evaluated offline against {escape(choice.top)}, the most
accurate candidate on the sample; target {choice.target:.4g} kept at
{choice.confidence:.0%} confidence.</p>
<div class="charts"><figure><figcaption>Cost versus kept accuracy</figcaption>
{frontier_svg(choice)}</figure></div>
<h2>Pareto-optimal policies</h2>
<div class="scroll"><table id="front">
<thead><tr>{head}</tr></thead>
<tbody>{rows}</tbody>
</table></div>
<h2>What tune printed</h2>
<div class="scroll"><pre>{escape(chr(10).join(printed))}</pre></div>
"""
    return html_page(title, body)


def write_pictures(
    choice: Choice,
    *,
    plot: Path | None,
    report: Path | None,
    title: str,
    printed: Sequence[str],
    say: Callable[[str], None],
) -> None:
    """Write the frontier SVG to `plot` and the page to `report`, those given."""
    if plot is not None:
        write_text(plot, frontier_svg(choice) + "\n", what="plot")
        say(f"plot: {plot}")
    if report is not None:
        write_text(report, render_tune_page(choice, title=title, printed=printed), what="report")
        say(f"report: {report}")
