"""The sample's cost-quality frontier as inline SVG: every policy, the front, the choice.

Drawn with the comparison charts' own parts (`svg_charts.axes`, `charts.front_steps`), so
`tune --plot` and `tune --report` look like `batchroute report`: one self-contained SVG, no
dependency, no script. x is the policy's mean cost per 1,000 sampled rows, y its kept
accuracy against the top model (what the target is about), and the front is the staircase of
the table `tune` prints (`choose.pareto`).
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from batchroute.charts import Point, front_steps, nice_ticks
from batchroute.errors import OutputError
from batchroute.svg_charts import FONT, FRONT, GREY, axes
from batchroute.tune.choose import Choice, Scored, pareto

__all__ = ["check_chart_target", "frontier_svg", "write_text"]

CHOSEN, HOLDS = "#D55E00", "#009E73"  # Okabe & Ito vermillion and green, as in the palette
_LABEL = 84  # characters of the chosen policy's name shown; its tooltip has all of it


def _tip(s: Scored) -> str:
    holds = "holds the target" if s.accepted else "does not hold the target"
    return (
        f"{s.policy.key}: ${s.policy.mean_cost * 1000:.4f} per 1k rows, kept {s.kept:.1%},"
        f" accuracy {s.policy.accuracy:.1%}, escalated {s.policy.escalation:.1%}; {holds}"
    )


def frontier_svg(choice: Choice, *, width: int = 720, height: int = 440) -> str:
    """Every policy at (cost per 1k rows, kept); the front joined, the choice ringed and named."""
    label = (
        "Cost-quality frontier of the sample: cost per 1,000 rows against kept accuracy,"
        " every policy a point, the Pareto front joined, the chosen policy ringed"
    )
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="tune-frontier"'
        f' viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
        f' role="img" aria-label="{label}" {FONT} font-size="12">'
    )
    scored = choice.scored
    if not scored:
        return f'{head}<text x="{width / 2}" y="{height / 2}">No policy.</text></svg>'
    front = {id(s) for s in pareto(scored)}
    costs = [s.policy.mean_cost * 1000 for s in scored]
    kept = [s.kept for s in scored] + [choice.target]
    pad = max((max(kept) - min(kept)) * 0.1, 0.02)
    x_ticks = nice_ticks(0.0, max(costs) * 1.1 or 1.0)
    y_ticks = nice_ticks(max(0.0, min(kept) - pad), max(kept) + pad)
    parts, frame = axes(
        x_ticks,
        y_ticks,
        width=width,
        height=height,
        x_label="cost per 1,000 rows ($), mean on the sample",
        y_label="kept accuracy (of the top model's)",
    )
    x, y = frame.x, frame.y
    reference = f"Cost-quality frontier of the sample; kept is against {choice.top}"
    parts.insert(0, f"{head}<title>{escape(reference)}</title>")
    ty = y(choice.target)
    parts.append(
        f'<line class="target" x1="{frame.left}" y1="{ty:.1f}" x2="{frame.right}"'
        f' y2="{ty:.1f}" stroke="{CHOSEN}" stroke-width="1.2" stroke-dasharray="2 3"/>'
        f'<text class="target-label" x="{frame.right - 4}" y="{ty - 5:.1f}" text-anchor="end"'
        f' fill="{CHOSEN}">target {choice.target:.4g} at {choice.confidence:.0%} confidence'
        "</text>"
    )
    points = [
        Point(s.policy.key, c, s.kept, id(s) in front) for s, c in zip(scored, costs, strict=True)
    ]
    steps = front_steps(points)
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{x(a):.1f},{y(b):.1f}" for i, (a, b) in enumerate(steps)
    )
    parts.append(
        f'<path class="front" d="{path}" fill="none" stroke="{FRONT}" stroke-width="1.5"/>'
    )
    # The dominated first, so the front's markers sit on top of any they overlap.
    for s, cost in sorted(zip(scored, costs, strict=True), key=lambda sc: id(sc[0]) in front):
        on_front = id(s) in front
        fill = FRONT if on_front else "#ffffff"
        stroke = HOLDS if s.accepted else (FRONT if on_front else GREY)
        classes = "policy" + (" on-front" if on_front else "") + (" holds" if s.accepted else "")
        parts.append(
            f'<circle class="{classes}" cx="{x(cost):.1f}" cy="{y(s.kept):.1f}" r="4.5"'
            f' fill="{fill}" stroke="{stroke}" stroke-width="1.8">'
            f"<title>{escape(_tip(s))}</title></circle>"
        )
    if choice.chosen is not None:
        s = choice.chosen
        parts.append(_chosen(s, x=x(s.policy.mean_cost * 1000), y=y(s.kept), left=frame.left))
    parts.append(_legend(frame.right - 214, frame.bottom - 92, chosen=choice.chosen is not None))
    parts.append("</svg>")
    return "".join(parts)


def _chosen(s: Scored, *, x: float, y: float, left: float) -> str:
    """A ring round the chosen policy and its name above it, ending at its left when it fits.

    Up and to the left of a policy on the front nothing can be (a point there would be both
    cheaper and better), so that is where the name goes; a name too long for that space starts
    at the chart's left edge instead, still above the ring.
    """
    name = s.policy.key if len(s.policy.key) <= _LABEL else s.policy.key[: _LABEL - 1] + "~"
    text = f"chosen: {name}"
    fits = x - 12 - len(text) * 7.0 >= left
    where = f'x="{x - 12:.1f}" text-anchor="end"' if fits else f'x="{left + 4}"'
    return (
        f'<circle class="chosen" cx="{x:.1f}" cy="{y:.1f}" r="10" fill="none"'
        f' stroke="{CHOSEN}" stroke-width="2.5"><title>{escape("chosen: " + _tip(s))}</title>'
        "</circle>"
        f'<text class="chosen-label" {where} y="{y - 14:.1f}"'
        f' fill="{CHOSEN}" font-weight="600">{escape(text)}</text>'
    )


def _legend(left: float, top: float, *, chosen: bool) -> str:
    last = "chosen policy" if chosen else "no policy holds the target"
    return (
        f'<g class="legend" transform="translate({left} {top})">'
        '<rect width="210" height="88" fill="#ffffff" stroke="#e3e3e3"/>'
        f'<line x1="8" y1="13" x2="30" y2="13" stroke="{FRONT}" stroke-width="1.5"/>'
        '<text x="36" y="17">Pareto front</text>'
        f'<circle cx="19" cy="29" r="4.5" fill="{FRONT}" stroke="{FRONT}" stroke-width="1.8"/>'
        '<text x="36" y="33">policy on the front</text>'
        f'<circle cx="19" cy="45" r="4.5" fill="#ffffff" stroke="{GREY}" stroke-width="1.8"/>'
        '<text x="36" y="49">dominated policy</text>'
        f'<circle cx="19" cy="61" r="4.5" fill="#ffffff" stroke="{HOLDS}" stroke-width="1.8"/>'
        '<text x="36" y="65">green ring: holds the target</text>'
        f'<circle cx="19" cy="77" r="7" fill="none" stroke="{CHOSEN}" stroke-width="2.5"/>'
        f'<text x="36" y="81">{last}</text></g>'
    )


def check_chart_target(
    path: Path | None, *, flag: str, suffixes: tuple[str, ...], force: bool
) -> None:
    """Before anything is spent: `path` has a suffix the format allows and is not in the way."""
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        raise OutputError(f"{flag} {path}: tune writes {suffixes[0]}; name the file *{suffixes[0]}")
    if path.exists() and not force:
        raise OutputError(f"{flag} {path}: already exists; pass --force to replace it")


def write_text(path: Path, text: str, *, what: str) -> None:
    """Write `text` to `path` (UTF-8), making its folder; OutputError when it cannot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the {what}: {exc.strerror or exc}") from None
