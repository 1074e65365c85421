"""A tuned job's `[tune]` table (what `tune` predicted for its full run) and the run against it.

`batchroute tune` writes the table into the tuned job; a run carries every job setting into
its outputs' Parquet metadata (`job`), so the prediction travels with the results and
`batchroute compare` finds it there with no other file to keep beside them. It lives outside
the `tune` package because `job.py` validates it and the package imports `job.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from batchroute.job_sections import Section

__all__ = [
    "Checked",
    "Interval",
    "RunPrediction",
    "TunePrediction",
    "check_predictions",
    "prediction_of",
]


class Interval(Section):
    """A predicted figure and its interval; `level` is the interval's two-sided confidence."""

    predicted: float
    low: float
    high: float
    level: float

    def holds(self, actual: float) -> bool:
        return self.low <= actual <= self.high


class TunePrediction(Section):
    """`[tune]`: the chosen policy's figures on the sample, as predictions for the full run."""

    policy: str
    reference: str  # the top model on the sample, that kept accuracy is measured against
    sample_rows: int
    total_rows: int
    seed: int
    target_kept: float
    confidence: float
    kept_statistic: Literal["ratio", "share"] = "ratio"
    usd_per_1k_rows: Interval
    accuracy: Interval | None = None
    kept: Interval | None = None


@dataclass(frozen=True, slots=True)
class Checked:
    """One predicted figure against what the run did (`actual` None: not measured)."""

    figure: str  # "$/1k rows", "accuracy" or "kept"
    predicted: Interval
    actual: float | None
    why_missing: str = ""

    @property
    def inside(self) -> bool | None:
        return None if self.actual is None else self.predicted.holds(self.actual)


@dataclass(frozen=True, slots=True)
class RunPrediction:
    """A run of a tuned job: what tune predicted for it and each figure checked."""

    run: str
    prediction: TunePrediction
    checked: tuple[Checked, ...]


def prediction_of(metadata: dict[str, Any]) -> TunePrediction | None:
    """The `[tune]` table of the job a run ran, if it had one (and it still validates)."""
    table = (metadata.get("job") or {}).get("tune")
    if not isinstance(table, dict):
        return None
    try:
        return TunePrediction.model_validate(table)
    except ValidationError:  # written by another version: nothing to compare, not an error
        return None


def check_predictions(
    rows: Sequence[dict[str, Any]], metadata: Sequence[dict[str, Any]], *, truth: bool
) -> list[RunPrediction]:
    """Per run with a prediction: its cost per 1k rows, and with a truth its accuracy and kept.

    `rows` are the comparison's rows (`run`, `cost_per_row_usd`, `unknown_cost_calls`,
    `accuracy`, `accuracy_kept`), `metadata` the runs' metadata in the same order.
    """
    found = []
    for row, meta in zip(rows, metadata, strict=True):
        prediction = prediction_of(meta)
        if prediction is None:
            continue
        cost = row["cost_per_row_usd"]
        known = cost is not None and not row["unknown_cost_calls"]
        unknown = "" if known else "some charges are unknown"
        checked = [
            Checked(
                "$/1k rows", prediction.usd_per_1k_rows, cost * 1000 if known else None, unknown
            )
        ]
        if truth and prediction.accuracy is not None:
            checked.append(Checked("accuracy", prediction.accuracy, row["accuracy"]))
        if truth and prediction.kept is not None:
            kept = row["accuracy_kept"]
            missing = f"needs a compared run of every row on {prediction.reference}"
            checked.append(
                Checked("kept", prediction.kept, kept, "" if kept is not None else missing)
            )
        found.append(RunPrediction(row["run"], prediction, tuple(checked)))
    return found
