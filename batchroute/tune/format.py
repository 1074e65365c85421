"""What `batchroute tune` prints: the sample's cost, the Pareto front, the choice, the forecast."""

from __future__ import annotations

from collections.abc import Sequence

from batchroute.prediction import TunePrediction
from batchroute.tune.choose import Choice, Scored, pareto

__all__ = ["format_choice", "format_front", "format_forecast"]

_MEANING = {
    "ratio": "the policy's accuracy over the reference's",
    "share": "the share of the reference's right answers the policy also gets right",
}
_SHOWN = 12  # rows of the front printed; the cheapest and the most accurate are what matter


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def format_front(choice: Choice, *, rows: Sequence[Scored] | None = None) -> str:
    """The Pareto-optimal policies: cost per 1k rows and kept share, each with its interval."""
    front = list(rows) if rows is not None else pareto(choice.scored)
    level = 1 - (1 - choice.confidence) / max(1, choice.families)
    lines = [
        f"Pareto front of {len(choice.scored)} policies on the sample (reference: {choice.top};"
        f" kept = {_MEANING[choice.statistic]}; bounds at {level:.4g} per family,"
        f" {choice.families} families)",
        f"{'':2}{'policy':<58} {'USD/1k rows (95%)':>26} {'kept (bounds)':>22}"
        f" {'escal.':>7} {'acc.':>6}",
    ]
    for s in front[-_SHOWN:]:
        mark = "* " if choice.chosen is s else ("+ " if s.accepted else "  ")
        cost = f"{s.policy.mean_cost * 1000:.4f} ({s.cost_low * 1000:.4f}-{s.cost_high * 1000:.4f})"
        kept = f"{s.kept:.1%} ({s.kept_low:.1%}-{s.kept_high:.1%})"
        lines.append(
            f"{mark}{_cut(s.policy.key, 58):<58} {cost:>26} {kept:>22}"
            f" {s.policy.escalation:>7.1%} {s.policy.accuracy:>6.1%}"
        )
    lines.append("* chosen   + holds the target with the stated confidence")
    return "\n".join(lines)


def format_choice(choice: Choice) -> str:
    if choice.chosen is None:
        best = sorted(choice.scored, key=lambda s: -s.kept)[:3]
        shown = "; ".join(f"{s.policy.key} (kept >= {s.kept_low:.1%})" for s in best)
        return (
            f"no policy keeps {choice.target:.0%} of {choice.top}'s accuracy with"
            f" {choice.confidence:.0%} confidence; the best bounds: {shown}"
        )
    s = choice.chosen
    return (
        f"chosen: {s.policy.key}: keeps {s.kept:.1%} of {choice.top}'s accuracy"
        f" ({choice.statistic}) on the sample (at least {s.kept_low:.1%}; target"
        f" {choice.target:.0%} at {choice.confidence:.0%} confidence),"
        f" ${s.policy.mean_cost * 1000:.4f} per 1k rows"
    )


def format_forecast(
    choice: Choice, *, prediction: TunePrediction, top: Scored | None, shared: bool
) -> str:
    """The full run's cost, from the chosen policy's cost per row on the sample."""
    s = choice.chosen
    if s is None:
        return ""
    cost, rows = prediction.usd_per_1k_rows, prediction.total_rows / 1000
    line = (
        f"full run of {prediction.total_rows} rows: about ${cost.predicted * rows:.4f}"
        f" (95%: ${cost.low * rows:.4f}-${cost.high * rows:.4f}), counting the sampled rows"
        " as new although their calls are stored"
    )
    if shared:
        line += "; identical prompts counted once, as the run shares their call"
    if top is not None:
        # On the same rows: a learned policy is measured on the half it was not learned from.
        rows_of = s.policy.rows if s.policy.rows is not None else range(len(top.policy.cost))
        top_cost = sum(top.policy.cost[r] for r in rows_of)
        if top_cost > 0:
            line += f"; {sum(s.policy.cost) / top_cost:.0%} of {choice.top} alone on those rows"
    return line
