"""The chosen policy's figures on the sample as a prediction for the full run: the `[tune]` table.

The cost interval is the 95% normal interval of the sample's mean cost per row (what the full
run's mean per row is, the sample being drawn from its rows), each row's cost weighted by the
share of its prompt's copies the sample holds: a run makes one call for identical
deterministic prompts, so a dataset with repeats costs less per row than the sample's rows
did one by one (`Sample.dedupe_weight`). Accuracy gets a 95%
Clopper-Pearson interval over the rows the policy was measured on; kept accuracy its two
one-sided bounds from the guarantee, each at the level of the chosen policy's family.
"""

from __future__ import annotations

import math
import statistics

from batchroute.prediction import Interval, TunePrediction
from batchroute.tune.choose import Choice, Scored, cost_interval
from batchroute.tune.guarantee import clopper_pearson_lower, clopper_pearson_upper
from batchroute.tune.sample import Sample
from batchroute.tune.writer import toml_value

__all__ = ["predict", "prediction_table"]


def predict(choice: Choice, chosen: Scored, *, sample: Sample, seed: int) -> TunePrediction:
    """What a full run of the chosen policy should show, each figure with its interval."""
    policy = chosen.policy
    weight = sample.dedupe_weight or (1.0,) * sample.frame.height
    rows = policy.rows if policy.rows is not None else range(len(policy.cost))
    shares = [cost * weight[r] for cost, r in zip(policy.cost, rows, strict=True)]
    low, high = cost_interval(shares)
    right, n = sum(policy.correct), len(policy.correct)
    accuracy = Interval(
        predicted=policy.accuracy,
        low=clopper_pearson_lower(right, n, alpha=0.025),
        high=clopper_pearson_upper(right, n, alpha=0.025),
        level=0.95,
    )
    kept = None
    if not (math.isnan(chosen.kept_low) or math.isnan(chosen.kept_high)):
        side = (1 - choice.confidence) / max(1, choice.families)
        kept = Interval(
            predicted=chosen.kept, low=chosen.kept_low, high=chosen.kept_high, level=1 - 2 * side
        )
    return TunePrediction(
        policy=policy.key,
        reference=choice.top,
        sample_rows=sample.frame.height,
        total_rows=sample.total_rows,
        seed=seed,
        target_kept=choice.target,
        confidence=choice.confidence,
        kept_statistic=choice.statistic,
        usd_per_1k_rows=Interval(
            predicted=statistics.fmean(shares) * 1000 if shares else 0.0,
            low=low * 1000,
            high=high * 1000,
            level=0.95,
        ),
        accuracy=accuracy,
        kept=kept,
    )


def _number(value: float) -> str:
    return repr(float(f"{value:.6g}"))  # six figures: more than any table shows


def prediction_table(prediction: TunePrediction) -> str:
    """The `[tune]` table's TOML, with a comment that says what reads it."""
    lines = [
        "# What `batchroute tune` predicted for a full run of this job. A run carries it into",
        "# its outputs' metadata; `batchroute compare` shows it against what the run did.",
        "[tune]",
    ]
    for key, value in prediction.model_dump(exclude_none=True).items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} = {_number(v)}" for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        elif isinstance(value, float):
            lines.append(f"{key} = {_number(value)}")
        else:
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"
