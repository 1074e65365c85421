"""Compare runs: one line of figures per run, computed from its results, calls and metadata.

Definitions (the README's "Compare runs" says the same for users):

- rows **run** are those not `skipped`; rates, cost per row, latency and accuracy are over them.
- **total** is every charge of the run's calls except shadow sampling's (kept apart, as in the
  run's own summary); **cached** is the part taken from the store, charged when first made;
  **new** is total - cached.
- the **top tier** is the model with the highest mean charge per successful answer call over
  all the compared runs (or `top_tier=`). The **baseline** is what the run's rows would have
  cost all on it: per row, the row's own successful answer call on the top tier in any of the
  runs; else the row's first answer call's tokens at the top tier's price from a job's
  `[models]` table; else the top tier's mean charge per call. **saving** = 1 - total/baseline.
- **kept** is accuracy divided by that of a compared run of the same rows that answered every
  row with the top tier; blank when there is none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import polars as pl

from batchroute.errors import DatasetError
from batchroute.job import Prices
from batchroute.prediction import RunPrediction, check_predictions
from batchroute.runs import Run, read_run, read_runs
from batchroute.truth import Scorer, Truth

__all__ = [
    "Comparison",
    "Run",
    "compare",
    "compare_runs",
    "compare_table",
    "read_run",
    "read_runs",
]

_MIX = pl.List(pl.Struct({"name": pl.String(), "share": pl.Float64()}))


@dataclass(frozen=True)
class Comparison:
    """The table (one row per run) and the notes that say how its figures were made."""

    frame: pl.DataFrame
    runs: tuple[Run, ...]
    top_tier: str | None
    notes: tuple[str, ...] = field(default=())
    # Runs of a job written by `batchroute tune`: its predictions against what the run did.
    predictions: tuple[RunPrediction, ...] = field(default=())

    def _repr_html_(self) -> str:
        """The table, its notes and the charts, in a notebook."""
        from batchroute.notebook_html import comparison_html

        return comparison_html(self)


def compare(
    paths: Sequence[Path | str] | Path | str,
    *,
    truth: str | Scorer | None = None,
    answer_path: str | None = None,
    top_tier: str | None = None,
    allow_mixed: bool = False,
) -> pl.DataFrame:
    """The comparison table of runs as a DataFrame: one row per run (see the module doc).

    `truth` is a column of the input (exact match after normalisation) or a scorer
    `f(row, answer) -> bool | (bool, reason)`; with it come `accuracy` and `accuracy_kept`.
    """
    return compare_table(
        paths, truth=truth, answer_path=answer_path, top_tier=top_tier, allow_mixed=allow_mixed
    ).frame


def compare_table(
    paths: Sequence[Path | str] | Path | str,
    *,
    truth: str | Scorer | None = None,
    answer_path: str | None = None,
    top_tier: str | None = None,
    allow_mixed: bool = False,
) -> Comparison:
    """`compare`, keeping the notes and the runs with the table: what the command line
    prints, and in a notebook the table with its notes and charts."""
    if isinstance(paths, str | Path):
        paths = [paths]
    runs = read_runs(paths)
    spec = None if truth is None else Truth.of(truth, answer_path=answer_path)
    return compare_runs(runs, truth=spec, top_tier=top_tier, allow_mixed=allow_mixed)


def compare_runs(
    runs: Sequence[Run],
    *,
    truth: Truth | None = None,
    top_tier: str | None = None,
    allow_mixed: bool = False,
) -> Comparison:
    """The comparison of runs already read; see `compare`."""
    if not runs:
        raise DatasetError("no runs to compare")
    datasets = _datasets(runs, allow_mixed=allow_mixed)
    answers = _answer_calls(runs, datasets)
    top = top_tier or _top_tier(answers)
    price = _top_price(runs, top) if top is not None else None
    rows = []
    for index, (run, dataset) in enumerate(zip(runs, datasets, strict=True)):
        fig = _figures(run, truth=truth, top=top)
        baseline, measured = _baseline(
            run, answers.filter(pl.col("dataset") == dataset), index=index, top=top, price=price
        )
        # A total with unknown charges in it is a lower bound: no saving can be claimed.
        known = fig["total_usd"] is not None and not fig["unknown_cost_calls"]
        saving = 1 - fig["total_usd"] / baseline if baseline and known else None
        rows.append(
            {"run": run.name, **fig, "baseline_usd": baseline, "baseline_measured": measured}
            | {"saving": saving, "dataset": dataset, "path": str(run.path)}
        )
    frame = pl.DataFrame(rows, schema=_SCHEMA)
    frame, kept_from = _kept(frame)
    frame = frame.select(_ORDER)
    notes = _notes(frame, top=top, price=price, truth=truth, kept_from=kept_from)
    predicted = check_predictions(
        frame.to_dicts(), [r.metadata for r in runs], truth=truth is not None
    )
    return Comparison(frame, tuple(runs), top, notes, tuple(predicted))


_SCHEMA: dict[str, Any] = {
    "run": pl.String(),
    "strategy": pl.String(),
    "plans": _MIX,
    "rows": pl.Int64(),
    "ok": pl.Int64(),
    "failed": pl.Int64(),
    "skipped": pl.Int64(),
    "calls": pl.Int64(),
    "escalation_rate": pl.Float64(),
    "fallback_rate": pl.Float64(),
    "repair_rate": pl.Float64(),
    "cost_per_row_usd": pl.Float64(),
    "total_usd": pl.Float64(),
    "new_spend_usd": pl.Float64(),
    "cached_usd": pl.Float64(),
    "shadow_usd": pl.Float64(),
    "unknown_cost_calls": pl.Int64(),
    "latency_p50_s": pl.Float64(),
    "latency_p95_s": pl.Float64(),
    "model_mix": _MIX,
    "accuracy": pl.Float64(),
    "all_top_tier": pl.Boolean(),
    "baseline_usd": pl.Float64(),
    "baseline_measured": pl.Float64(),
    "saving": pl.Float64(),
    "dataset": pl.String(),
    "path": pl.String(),
}
_ORDER = [
    *[k for k in _SCHEMA if k not in ("all_top_tier", "dataset", "path")],
    "accuracy_kept",
    "dataset",
    "path",
]


def _datasets(runs: Sequence[Run], *, allow_mixed: bool) -> list[str]:
    """A dataset name per run (its input path); runs over the same row ids share one."""
    names: dict[frozenset[str], str] = {}
    for run in runs:
        ids = frozenset(str(i) for i in run.results["row_id"].to_list())
        if ids not in names:
            name = str(run.metadata.get("input", run.name))
            taken = set(names.values())
            names[ids] = name if name not in taken else f"{name} ({len(names) + 1})"
    per_run = [names[frozenset(str(i) for i in r.results["row_id"].to_list())] for r in runs]
    if len(names) > 1 and not allow_mixed:
        first = runs[0]
        other = next(r for r, n in zip(runs, per_run, strict=True) if n != per_run[0])
        raise DatasetError(
            f"runs of different datasets: {first.name} has {first.results.height} rows of"
            f" {per_run[0]}, {other.name} has other rows ({other.results.height} of"
            f" {other.metadata.get('input', '?')}); pass --allow-mixed to compare them anyway"
        )
    return per_run


def _answer_calls(runs: Sequence[Run], datasets: Sequence[str]) -> pl.DataFrame:
    """Every successful answer call of every run, keyed by run, dataset and row."""
    frames = []
    for index, (run, dataset) in enumerate(zip(runs, datasets, strict=True)):
        calls = run.calls
        purpose = pl.col("purpose") == "answer" if "purpose" in calls.columns else pl.lit(True)
        shadow = pl.col("shadow").not_() if "shadow" in calls.columns else pl.lit(True)
        frames.append(
            calls.with_row_index("order")
            .filter(purpose & shadow & pl.col("error_kind").is_null())
            .select(
                pl.lit(index).alias("run"),
                pl.lit(dataset).alias("dataset"),
                pl.col("row_id").cast(pl.String),
                "order",
                "model",
                "charge_usd",
                "prompt_tokens",
                "completion_tokens",
            )
        )
    return pl.concat(frames)


def _top_tier(answers: pl.DataFrame) -> str | None:
    charged = answers.filter(pl.col("charge_usd").is_not_null())
    if charged.height == 0:
        return None
    means = charged.group_by("model").agg(pl.col("charge_usd").mean()).sort("charge_usd")
    return str(means["model"][-1])


def _top_price(runs: Sequence[Run], top: str) -> Prices | None:
    for run in runs:
        prices = run.metadata.get("job", {}).get("models", {}).get(top, {}).get("usd_per_mtok")
        if prices:
            return Prices(input=float(prices["input"]), output=float(prices["output"]))
    return None


def _figures(run: Run, *, truth: Truth | None, top: str | None) -> dict[str, Any]:
    """The run's own figures: counts, rates, money, latency, mixes and accuracy."""
    results, calls = run.results, run.calls
    status = results["status"]
    ran = results.filter(pl.col("status") != "skipped")
    shadow = calls["shadow"] if "shadow" in calls.columns else pl.Series([False] * calls.height)
    charged = calls.filter(shadow.not_())
    charge = charged["charge_usd"].fill_null(0.0)
    # Answered calls with no known charge: their cost is unknown, never zero.
    answered = charged["status_code"].is_between(200, 299).fill_null(False)
    unpriced = int((charged["charge_usd"].is_null() & answered).sum())
    cost_known = not unpriced or charged["charge_usd"].drop_nulls().len() > 0
    total = float(charge.sum()) if cost_known else None
    cached = float(charge.filter(charged["cached"].fill_null(False)).sum())
    ok = results.filter(pl.col("status") == "ok")
    accuracy = None
    if truth is not None and ran.height:
        accuracy = _mean(truth.correct(ran, run=run.name))
    latency = ran["latency_s"].drop_nulls()
    return {
        "strategy": run.strategy,
        "plans": _shares(results["plan"]),
        "rows": results.height,
        "ok": int((status == "ok").sum()),
        "failed": int((status == "failed").sum()),
        "skipped": int((status == "skipped").sum()),
        "calls": charged.height,
        "escalation_rate": _mean(ran["escalated"]),
        "fallback_rate": _mean(ran["fallback_used"]),
        # rows a repair turn saved from escalating (`run.repair_attempts`); 0 before repairs
        "repair_rate": _mean(ran["repaired"]) if "repaired" in ran.columns else 0.0,
        "cost_per_row_usd": total / ran.height if ran.height and total is not None else None,
        "total_usd": total,
        # cached is part of total, so only float noise could make the difference negative
        "new_spend_usd": max(total - cached, 0.0) if total is not None else None,
        "unknown_cost_calls": unpriced,
        "cached_usd": cached,
        "shadow_usd": float(calls.filter(shadow)["charge_usd"].fill_null(0.0).sum()),
        "latency_p50_s": latency.quantile(0.5, "linear") if latency.len() else None,
        "latency_p95_s": latency.quantile(0.95, "linear") if latency.len() else None,
        "model_mix": _shares(ok["model"]),
        "accuracy": accuracy,
        "all_top_tier": bool(ran.height)
        and ran.height == ok.height
        and top is not None  # no charged answer call: no top tier (polars cannot == None)
        and bool((ok["model"] == top).all()),
    }


def _mean(column: pl.Series) -> float | None:
    """The mean of a bool or number column as a float; None when it has no values."""
    value = column.cast(pl.Float64).mean() if column.len() else None
    return None if value is None else float(cast(float, value))


def _shares(column: pl.Series) -> list[dict[str, Any]]:
    """Each value's share of the column, largest first (ties by name)."""
    if column.len() == 0:
        return []
    counts = column.fill_null("(none)").value_counts(name="n")
    counts = counts.sort(["n", column.name], descending=[True, False])
    total = column.len()
    return [{"name": v, "share": n / total} for v, n in counts.iter_rows()]


def _baseline(
    run: Run,
    answers: pl.DataFrame,
    *,
    index: int,
    top: str | None,
    price: Prices | None,
) -> tuple[float | None, float | None]:
    """(cost of the run's rows all on the top tier, share of rows measured rather than priced)."""
    if top is None:
        return None, None
    ids = (
        run.results.filter(pl.col("status") != "skipped")
        .select(pl.col("row_id").cast(pl.String))
        .unique(maintain_order=True)
    )
    if ids.height == 0:
        return None, None
    on_top = answers.filter((pl.col("model") == top) & pl.col("charge_usd").is_not_null())
    measured = on_top.sort("run", "order").group_by("row_id").agg(pl.col("charge_usd").first())
    first = (
        answers.filter(pl.col("run") == index)
        .sort("order")
        .group_by("row_id")
        .agg(pl.col("prompt_tokens").first(), pl.col("completion_tokens").first())
    )
    priced = pl.lit(None, dtype=pl.Float64)
    if price is not None:
        tokens_in = pl.col("prompt_tokens").cast(pl.Float64)
        tokens_out = pl.col("completion_tokens").fill_null(0).cast(pl.Float64)
        # Prices.cost is linear in each count: its per-token prices price whole columns.
        priced = tokens_in * price.cost(1, 0) + tokens_out * price.cost(0, 1)
    mean = on_top["charge_usd"].mean() if on_top.height else None
    table = ids.join(measured, on="row_id", how="left").join(first, on="row_id", how="left")
    cost = table.select(
        pl.coalesce(pl.col("charge_usd"), priced, pl.lit(mean, dtype=pl.Float64)).alias("c"),
        pl.col("charge_usd").is_not_null().alias("measured"),
    )
    if cost["c"].null_count():
        return None, None
    return float(cost["c"].sum()), _mean(cost["measured"])


def _kept(frame: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, str]]:
    """Accuracy over that of the run, per dataset, that put every row on the top tier."""
    base: dict[str, tuple[str, float]] = {}
    for row in frame.iter_rows(named=True):
        if row["all_top_tier"] and row["accuracy"] is not None:
            base.setdefault(row["dataset"], (row["run"], row["accuracy"]))
    kept = [
        row["accuracy"] / base[row["dataset"]][1]
        if row["accuracy"] is not None and row["dataset"] in base and base[row["dataset"]][1]
        else None
        for row in frame.iter_rows(named=True)
    ]
    frame = frame.with_columns(pl.Series("accuracy_kept", kept, dtype=pl.Float64))
    return frame, {dataset: name for dataset, (name, _) in base.items()}


def _notes(
    frame: pl.DataFrame,
    *,
    top: str | None,
    price: Prices | None,
    truth: Truth | None,
    kept_from: dict[str, str],
) -> tuple[str, ...]:
    """How the figures were made, in sentences a reader of the table needs."""
    notes = []
    if top is None:
        notes.append("saving: no charged answer call in these runs, so no top-tier baseline")
    else:
        measured = frame["baseline_measured"].drop_nulls()
        values = sorted(measured.to_list())
        share = f"{values[0]:.0%}" if values else "none"
        if values and values[-1] != values[0]:
            share = f"{values[0]:.0%}-{values[-1]:.0%}"
        priced = (
            f"priced from its first answer's tokens at the job's {top} price, else "
            if price
            else ""
        )
        notes.append(
            f"saving: against every row run on {top}, the top tier (highest mean charge per"
            f" answer call); per row its own {top} answer call in one of these runs ({share} of"
            f" rows), else {priced}{top}'s mean charge per call"
        )
    notes.append(
        "new $ was charged in the run; cached $ is what answers reused from the store cost"
        " when first made, so both depend on what the store held when the run started (the"
        " same run against another store splits its total differently); shadow sampling is"
        " not in the total"
    )
    unknown = int(frame["unknown_cost_calls"].sum())
    if unknown:
        notes.append(
            f"unknown: {unknown} answered calls came with no charge header and no price;"
            " a total marked '+ unknown' counts only the known charges, and no saving is shown"
        )
    if truth is None:
        notes.append("accuracy: pass --truth COLUMN or --truth-scorer module:function")
    else:
        notes.append(
            f"accuracy: {truth.name} over the rows run (failed rows count as wrong)"
            + (
                "; kept: accuracy / that of "
                + ", ".join(sorted(set(kept_from.values())))
                + f" (every row answered by {top})"
                if kept_from
                else f"; kept needs a run that answered every row with {top}"
            )
        )
    return tuple(notes)
