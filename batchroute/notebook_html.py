"""Rich HTML for notebooks: what a `RunReport`, a `Run` and a `Comparison` show as `_repr_html_`.

Fragments, not pages: a notebook puts them in its own page. Inline styles only and no script,
so they look the same in Jupyter, VS Code and a static export; every value is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from batchroute.comparison import Comparison
    from batchroute.runner import RunReport
    from batchroute.runs import Run

__all__ = ["comparison_html", "report_html", "run_html"]

_TABLE = "border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:13px"
_CELL = "padding:3px 8px;border-bottom:1px solid #e3e3e3;white-space:nowrap;text-align:"
_PREVIEW_ROWS = 5
# What the summary of a run shows, in order, with how each figure reads.
_FIGURES: tuple[tuple[str, str], ...] = (
    ("rows", "{}"),
    ("ok", "{}"),
    ("failed", "{}"),
    ("skipped", "{}"),
    ("unverified", "{}"),
    ("calls", "{}"),
    ("escalation_rate", "{:.1%}"),
    ("fallback_rate", "{:.1%}"),
    ("repair_rate", "{:.1%}"),
    ("cost_usd", "${:.4f}"),
    ("cost_per_row_usd", "${:.6f}"),
    ("cached_usd", "${:.4f}"),
    ("top_tier_cost_usd", "${:.4f}"),
    ("elapsed_s", "{:.1f} s"),
)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Sequence[bool]) -> str:
    def cell(tag: str, text: str, numeric: bool) -> str:
        align = "right" if numeric else "left"
        return f'<{tag} style="{_CELL}{align}">{escape(text)}</{tag}>'

    head = "".join(cell("th", h, r) for h, r in zip(headers, right, strict=True))
    body = "".join(
        "<tr>" + "".join(cell("td", c, r) for c, r in zip(row, right, strict=True)) + "</tr>"
        for row in rows
    )
    return f'<table style="{_TABLE}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figures(summary: Mapping[str, Any]) -> str:
    """The summary's figures as a two-column table (those it has)."""
    rows = []
    for key, fmt in _FIGURES:
        value = summary.get(key)
        if value is None or (key == "repair_rate" and not value):
            continue
        rows.append((key, fmt.format(value)))
    return _table(("figure", "value"), rows, right=(False, True))


def _frame(frame: pl.DataFrame) -> str:
    """The first rows of a frame, each value as polars prints it (structs and lists too)."""
    head = frame.head(_PREVIEW_ROWS)
    numeric = [dtype.is_numeric() for dtype in head.dtypes]
    headers = [f"{name} ({dtype})" for name, dtype in head.schema.items()]
    rows = [["null" if v is None else str(v) for v in row] for row in head.iter_rows()]
    return _table(headers, rows, right=numeric)


def report_html(report: RunReport) -> str:
    """A finished run: where its outputs are, its figures, and why it stopped, if it did."""
    parts = [
        f"<div><strong>batchroute run {escape(report.run_id)}</strong>",
        f"<p>{escape(report.summary_line)}</p>",
    ]
    if report.stop_error is not None:
        parts.append(f"<p><strong>Stopped early:</strong> {escape(str(report.stop_error))}</p>")
    for hint in report.hints:
        parts.append(f"<p>Hint: {escape(hint)}</p>")
    parts.append(_figures(report.summary))
    parts.append(
        f"<p>results: <code>{escape(str(report.results_path))}</code><br>"
        f"calls: <code>{escape(str(report.calls_path))}</code></p></div>"
    )
    return "".join(parts)


def run_html(run: Run) -> str:
    """A run read back: its identity, its figures and the first rows of its results, with
    the parsed answer's fields when the job had a JSON schema."""
    meta = run.metadata
    title = (
        f"<strong>{escape(run.name)}</strong>: {escape(run.strategy)},"
        f" {run.results.height} rows, {run.calls.height} calls"
        f" (run {escape(str(meta.get('run_id', '?')))},"
        f" batchroute {escape(str(meta.get('batchroute_version', '?')))})"
    )
    shown = [
        c
        for c in ("row_id", "model", "status", "check_passed", "escalated", "cost_usd")
        if c in run.results.columns
    ]
    preview = run.results.select(shown)
    parsed = run.parsed_column()
    if parsed is not None:
        preview = preview.with_columns(parsed.alias("parsed"))
        if isinstance(parsed.dtype, pl.Struct):
            preview = preview.unnest("parsed", separator=".")
    summary = meta.get("summary") or {}
    return (
        f"<div><p>{title}</p>{_figures(summary)}"
        f"<p>First {min(_PREVIEW_ROWS, run.results.height)} rows"
        f" (<code>run.results</code>, <code>run.parsed()</code>):</p>{_frame(preview)}</div>"
    )


def comparison_html(comparison: Comparison) -> str:
    """The comparison table with its notes, and the cost-quality and model-mix charts."""
    from batchroute.charts import cost_quality, model_mix
    from batchroute.compare_format import display_rows
    from batchroute.svg_charts import cost_quality_svg, model_mix_svg

    headers, rows, right = display_rows(comparison)
    notes = "".join(f"<li>{escape(n)}</li>" for n in comparison.notes)
    return (
        f"<div>{_table(headers, rows, right=right)}"
        f'<ul style="color:#444;font-size:12px">{notes}</ul>'
        f'<div style="display:flex;flex-wrap:wrap;gap:16px">'
        f"<figure><figcaption>Cost versus quality</figcaption>"
        f"{cost_quality_svg(cost_quality(comparison))}</figure>"
        f"<figure><figcaption>Model mix</figcaption>"
        f"{model_mix_svg(model_mix(comparison))}</figure></div></div>"
    )
