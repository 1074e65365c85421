"""`batchroute report`: one static HTML page with the comparison table, its notes and charts.

Everything is inline (styles, SVG charts) and the page's Content-Security-Policy forbids
fetching anything, so it opens from disk, from a mail attachment or a CI artifact, with no
server and no internet, and shows the same thing everywhere. No script runs in it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from pathlib import Path

from batchroute.charts import cost_quality, model_mix
from batchroute.compare_format import (
    PREDICTION_HEADERS,
    display_rows,
    prediction_rows,
    prediction_title,
    shares_text,
    shown_keys,
)
from batchroute.comparison import Comparison
from batchroute.errors import OutputError
from batchroute.svg_charts import cost_quality_svg, model_mix_svg
from batchroute.version import __version__

__all__ = ["html_page", "render_report", "write_report"]

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #1a1a1a; margin: 24px auto;
       max-width: 1500px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #555; margin: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 8px; border-bottom: 1px solid #e3e3e3; text-align: left;
         white-space: nowrap; vertical-align: top; }
#comparison { font-size: 13px; }
#plans td.text { white-space: normal; min-width: 16em; max-width: 40em; }
th { background: #f4f6f8; font-weight: 600; }
td.num, th.num { text-align: right; }
tbody tr:hover { background: #f9fbfd; }
ul.notes { color: #444; padding-left: 20px; }
.charts { display: flex; flex-wrap: wrap; gap: 24px; }
figure { margin: 0; border: 1px solid #e3e3e3; border-radius: 6px; padding: 12px; }
figcaption { font-weight: 600; margin-bottom: 8px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; color: #333; }
dt { font-weight: 600; }
"""

_GLOSSARY = (
    ("escalated", "share of rows run that moved past their first tier because a check failed"),
    ("fallback", "share of rows run where a failed call moved to a fallback model"),
    ("$/1k rows", "total cost divided by the rows run, times 1,000"),
    ("total $", "every charge of the run's calls (the store's original charge when cached)"),
    ("new $ / cached $", "charged in this run / reused from the call store, not paid again"),
    ("saving", "1 - total / the cost of the same rows all on the top tier (see the notes)"),
    ("p50 s / p95 s", "median and 95th percentile of a row's summed call latency"),
    ("accuracy", "share of rows run whose answer is right by the truth given"),
    ("kept", "accuracy divided by that of the run that put every row on the top tier"),
    ("plans", "the plans the router chose, with the share of rows each got"),
    ("model mix", "share of answered rows whose final answer came from each model"),
)


def render_report(comparison: Comparison, *, title: str | None = None) -> str:
    """The whole page as a string."""
    # Plans and model mix are long text: they get a table of their own, in full.
    keys = [k for k in shown_keys(comparison) if k not in ("plans", "model_mix")]
    headers, rows, right = display_rows(comparison, keys=keys)
    runs = comparison.runs
    title = title or f"batchroute: {len(runs)} run{'s' if len(runs) != 1 else ''} compared"
    head_cells = "".join(
        f'<th class="num">{escape(h)}</th>' if r else f"<th>{escape(h)}</th>"
        for h, r in zip(headers, right, strict=True)
    )
    body_rows = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(c)}</td>' if r else f"<td>{escape(c)}</td>"
            for c, r in zip(row, right, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    notes = "".join(f"<li>{escape(n)}</li>" for n in comparison.notes)
    mixes = "".join(
        f"<tr><td>{escape(r['run'])}</td><td>{escape(r['strategy'])}</td>"
        f'<td class="text">{escape(shares_text(r["plans"]))}</td>'
        f'<td class="text">{escape(shares_text(r["model_mix"]))}</td></tr>'
        for r in comparison.frame.iter_rows(named=True)
    )
    files = "".join(
        "<tr>"
        + "".join(
            f"<td>{escape(str(v))}</td>"
            for v in (
                run.name,
                run.path,
                run.metadata.get("run_id", "?"),
                run.metadata.get("started_at", "?"),
                run.metadata.get("input", "?"),
                run.metadata.get("batchroute_version", "?"),
            )
        )
        + "</tr>"
        for run in runs
    )
    glossary = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in _GLOSSARY)
    body = f"""<h2>Runs</h2>
<div class="scroll"><table id="comparison">
<thead><tr>{head_cells}</tr></thead>
<tbody>{body_rows}</tbody>
</table></div>
<ul class="notes">{notes}</ul>
{_predictions(comparison)}<h2>Plans and models</h2>
<div class="scroll"><table id="plans">
<thead><tr><th>run</th><th>strategy</th><th>plans (share of rows)</th>
<th>model mix (share of answered rows)</th></tr></thead>
<tbody>{mixes}</tbody>
</table></div>
<h2>Charts</h2>
<div class="charts">
<figure><figcaption>Cost versus quality</figcaption>
{cost_quality_svg(cost_quality(comparison))}</figure>
<figure><figcaption>Model mix</figcaption>
{model_mix_svg(model_mix(comparison))}</figure>
</div>
<h2>Columns</h2>
<dl>{glossary}</dl>
<h2>Files</h2>
<div class="scroll"><table id="files">
<thead><tr><th>run</th><th>results file</th><th>run id</th><th>started</th><th>input</th>
<th>version</th></tr></thead>
<tbody>{files}</tbody>
</table></div>
"""
    return html_page(title, body)


def _predictions(comparison: Comparison) -> str:
    """Predicted by `tune` against the run, for runs of a tuned job; nothing otherwise."""
    if not comparison.predictions:
        return ""
    parts = ["<h2>Predicted by tune, and what the run did</h2>"]
    head = "".join(f"<th>{escape(h)}</th>" for h in PREDICTION_HEADERS)
    for item in comparison.predictions:
        rows = "".join(
            "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
            for row in prediction_rows(item)
        )
        parts.append(
            f"<p>{escape(prediction_title(item))}</p>"
            f'<table class="predicted"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
            "</table>"
        )
    return "\n".join(parts) + "\n"


def html_page(title: str, body: str) -> str:
    """A whole page around `body`: the report's style, its no-fetch policy, the title and
    when and by what it was made. `tune --report` uses it too, so both pages look alike."""
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p class="meta">Made {made} by batchroute {escape(__version__)}.</p>
{body}</body>
</html>
"""


def write_report(comparison: Comparison, path: Path, *, title: str | None = None) -> None:
    """Write the page to `path` (UTF-8); OutputError when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # as `batchroute run` makes its folder
        path.write_text(render_report(comparison, title=title), encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the report: {exc.strerror or exc}") from None
