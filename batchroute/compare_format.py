"""The comparison as text: an aligned terminal table, CSV, JSON or Markdown."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from typing import Any

from batchroute.comparison import Comparison
from batchroute.prediction import Checked, RunPrediction

__all__ = ["FORMATS", "display_rows", "prediction_rows", "render", "shares_text", "shown_keys"]

FORMATS = ("table", "csv", "json", "markdown")


def _fixed(value: float | None, digits: int) -> str:
    # Adding 0.0 turns a -0.0 from float noise (a sum minus the same sum) into 0.0.
    return "-" if value is None else f"{round(value, digits) + 0.0:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else _fixed(value * 100, 1) + "%"


def _usd(value: float | None) -> str:
    return _fixed(value, 4)


def _per_1k(value: float | None) -> str:
    return "-" if value is None else _fixed(value * 1000, 4)


def _seconds(value: float | None) -> str:
    return _fixed(value, 3)


def _plans(plans: list[dict[str, Any]]) -> str:
    if len(plans) == 1:
        return str(plans[0]["name"])
    return f"{len(plans)} plans"


def _mix(shares: list[dict[str, Any]]) -> str:
    return ", ".join(f"{s['name']} {s['share']:.1%}" for s in shares) or "-"


# (header, column of the frame, formatter, right-aligned); shadow $ shows only when spent.
_COLUMNS: list[tuple[str, str, Callable[[Any], str], bool]] = [
    ("run", "run", str, False),
    ("strategy", "strategy", str, False),
    ("plan", "plans", _plans, False),
    ("rows", "rows", str, True),
    ("ok", "ok", str, True),
    ("failed", "failed", str, True),
    ("skipped", "skipped", str, True),
    ("escalated", "escalation_rate", _pct, True),
    ("fallback", "fallback_rate", _pct, True),
    ("repaired", "repair_rate", _pct, True),
    ("$/1k rows", "cost_per_row_usd", _per_1k, True),
    ("total $", "total_usd", _usd, True),
    ("new $", "new_spend_usd", _usd, True),
    ("cached $", "cached_usd", _usd, True),
    ("shadow $", "shadow_usd", _usd, True),
    ("saving", "saving", _pct, True),
    ("p50 s", "latency_p50_s", _seconds, True),
    ("p95 s", "latency_p95_s", _seconds, True),
    ("accuracy", "accuracy", _pct, True),
    ("kept", "accuracy_kept", _pct, True),
    ("model mix", "model_mix", _mix, False),
]


def _shown(comparison: Comparison) -> list[tuple[str, str, Callable[[Any], str], bool]]:
    frame = comparison.frame
    shadow = any(v for v in frame["shadow_usd"].to_list())
    truth = frame["accuracy"].null_count() < frame.height
    hidden = set()
    if not shadow:
        hidden.add("shadow_usd")
    if not any(frame["repair_rate"].to_list()):  # shown for runs with repair turns only
        hidden.add("repair_rate")
    if not truth:
        hidden |= {"accuracy", "accuracy_kept"}
    return [c for c in _COLUMNS if c[1] not in hidden]


def display_rows(
    comparison: Comparison, *, keys: Sequence[str] | None = None
) -> tuple[list[str], list[list[str]], list[bool]]:
    """(headers, rows of cell strings, right-aligned flags): what the table and HTML show;
    `keys` picks frame columns (in that order) from those shown."""
    columns = _shown(comparison)
    if keys is not None:
        by_key = {c[1]: c for c in columns}
        columns = [by_key[k] for k in keys if k in by_key]
    rows = [
        [_cell(record, key, fmt) for _, key, fmt, _ in columns]
        for record in comparison.frame.iter_rows(named=True)
    ]
    return [c[0] for c in columns], rows, [c[3] for c in columns]


# Money figures that leave out the charges nobody knows: shown as such, never as zero.
_COSTS = ("cost_per_row_usd", "total_usd", "new_spend_usd")


def _cell(record: dict[str, Any], key: str, fmt: Callable[[Any], str]) -> str:
    if key in _COSTS and record.get("unknown_cost_calls"):
        value = record[key]
        return "unknown" if value is None else f"{fmt(value)} + unknown"
    return fmt(record[key])


def shown_keys(comparison: Comparison) -> list[str]:
    """The frame columns the table shows, in order."""
    return [c[1] for c in _shown(comparison)]


def shares_text(shares: list[dict[str, Any]]) -> str:
    """`a 52.2%, b 47.8%`: every name with its share."""
    return _mix(shares)


PREDICTION_HEADERS = ["figure", "predicted", "interval", "actual", "inside"]


def prediction_title(item: RunPrediction) -> str:
    p = item.prediction
    return (
        f"{item.run}: predicted by tune for {p.policy} from a {p.sample_rows}-row sample"
        f" (seed {p.seed}; kept against {p.reference}, target {p.target_kept:.4g})"
    )


def prediction_rows(item: RunPrediction) -> list[list[str]]:
    """Per figure: the prediction, its interval (and level), the run's figure, inside or not."""
    rows = []
    for c in item.checked:
        show = _per_1k_usd if c.figure == "$/1k rows" else _pct
        interval = f"{show(c.predicted.low)}-{show(c.predicted.high)} ({c.predicted.level:.1%})"
        inside = (c.why_missing or "-") if c.inside is None else ("yes" if c.inside else "NO")
        rows.append([c.figure, show(c.predicted.predicted), interval, show(c.actual), inside])
    return rows


def _per_1k_usd(value: float | None) -> str:
    return _fixed(value, 4)


def _predictions_text(comparison: Comparison, *, markdown: bool) -> list[str]:
    out: list[str] = []
    for item in comparison.predictions:
        headers, rows = PREDICTION_HEADERS, prediction_rows(item)
        out += ["", prediction_title(item) + ":"]
        if markdown:
            out += ["", "| " + " | ".join(headers) + " |", "|---|---:|---:|---:|---|"]
            out += ["| " + " | ".join(r) + " |" for r in rows]
            continue
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        for cells in (headers, *rows):
            padded = [
                c.ljust(w) if i in (0, 4) else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            out.append("  " + "  ".join(padded).rstrip())
    return out


def _checked_json(c: Checked) -> dict[str, Any]:
    return {
        "figure": c.figure,
        "predicted": c.predicted.predicted,
        "low": c.predicted.low,
        "high": c.predicted.high,
        "level": c.predicted.level,
        "actual": c.actual,
        "inside": c.inside,
    }


def render(comparison: Comparison, *, fmt: str) -> str:
    """The comparison in `fmt`: "table", "csv", "json" or "markdown"."""
    if fmt == "csv":
        return _csv(comparison)
    if fmt == "json":
        return _json(comparison)
    if fmt == "markdown":
        return _markdown(comparison)
    return _table(comparison)


def _table(comparison: Comparison) -> str:
    headers, rows, right = display_rows(comparison)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(padded).rstrip()

    out = [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows), ""]
    out += [f"* {note}" for note in comparison.notes]
    out += _predictions_text(comparison, markdown=False)
    return "\n".join(out)


def _markdown(comparison: Comparison) -> str:
    headers, rows, right = display_rows(comparison)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("---:" if r else "---" for r in right) + "|"
    out = [line(headers), rule, *(line(r) for r in rows), ""]
    out += [f"- {note}" for note in comparison.notes]
    out += _predictions_text(comparison, markdown=True)
    return "\n".join(out)


def _flat(value: Any) -> Any:
    """Lists of {name, share} become `name=share;name=share`: CSV cells are flat."""
    if isinstance(value, list):
        return ";".join(f"{v['name']}={v['share']:.6g}" for v in value)
    return value


def _csv(comparison: Comparison) -> str:
    buffer = io.StringIO()
    frame = comparison.frame
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(frame.columns)
    for record in frame.iter_rows():
        writer.writerow(["" if v is None else _flat(v) for v in record])
    return buffer.getvalue().rstrip("\n")


def _json(comparison: Comparison) -> str:
    document = {
        "top_tier": comparison.top_tier,
        "notes": list(comparison.notes),
        "runs": comparison.frame.to_dicts(),
    }
    if comparison.predictions:
        document["predictions"] = [
            {
                "run": item.run,
                "tune": item.prediction.model_dump(mode="json"),
                "checked": [_checked_json(c) for c in item.checked],
            }
            for item in comparison.predictions
        ]
    return json.dumps(document, indent=2)
