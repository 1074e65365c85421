"""The tuning sample: seeded (or stratified) rows, answered once by every candidate model.

Each candidate answers the sample as its own temporary `fixed` job, without the job's check,
through `batchroute.run`: the normal caller with its limits, retries, fallbacks and store.
The request of a call does not depend on the route or the check, so the full run of the
tuned job finds these calls in the same store and does not pay for them again.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from batchroute.dataset import open_dataset
from batchroute.dedupe import deterministic
from batchroute.errors import ConfigError, DatasetError
from batchroute.estimate import TierEstimate, estimate
from batchroute.job import Job, RouteConfig, models_named
from batchroute.preflight import RunOptions
from batchroute.results import read_calls, read_results
from batchroute.truth import Truth

__all__ = ["Answers", "Sample", "candidate_models", "draw_sample", "sample_jobs"]

# What a model is used as, in models_named's words, that makes it a candidate.
_CANDIDATE_ROLES = ("tier", "target", "tier of plan", "fallback of")


def candidate_models(job: Job, *, chosen: Sequence[str] | None) -> list[str]:
    """The models to compare: `--models`, else the job's tiers, targets and fallbacks."""
    if chosen:
        found = list(dict.fromkeys(chosen))
        unknown = [m for m in found if job.models and m not in job.models]
        if unknown:
            raise ConfigError(
                f"--models {unknown[0]}: the job has no [models.{unknown[0]!r}] table"
            )
    else:
        roles = models_named(job)
        found = [
            m for m, uses in roles.items() if any(u.startswith(_CANDIDATE_ROLES) for u in uses)
        ]
    if len(found) < 2:
        raise ConfigError(
            f"{job.source}: route: tune needs two or more candidate models; name them with --models"
        )
    return found


@dataclass(frozen=True, slots=True)
class Sample:
    """The sampled rows (the input's own columns) and how many rows the whole dataset has."""

    frame: pl.DataFrame
    total_rows: int
    # Per sampled row: its prompt's copies in the sample over its copies in the dataset. A
    # run makes one call for identical deterministic prompts (`run.dedupe`) and the sample's
    # own run did the same, so a row's cost times this is its share of the full run's.
    dedupe_weight: tuple[float, ...] = ()


def draw_sample(job: Job, *, size: int, seed: int, stratify: str | None) -> Sample:
    """`size` rows drawn without replacement; with `stratify`, in proportion to its values."""
    dataset = open_dataset(job)
    frame = pl.concat([batch.frame for batch in dataset.batches()], how="vertical_relaxed")
    if size < 1:
        raise ConfigError(f"--sample {size}: a number of rows, at least 1")
    if size >= frame.height:
        return Sample(frame, frame.height, _dedupe_weight(job, frame, list(range(frame.height))))
    rng = random.Random(seed)
    if stratify is None:
        picks = sorted(rng.sample(range(frame.height), size))
        return Sample(frame[picks], frame.height, _dedupe_weight(job, frame, picks))
    if stratify not in frame.columns:
        raise DatasetError(f"{job.input.path}: --stratify {stratify}: no such column")
    groups: dict[Any, list[int]] = {}
    for index, value in enumerate(frame[stratify].to_list()):
        groups.setdefault(value, []).append(index)
    # Largest remainders: each stratum gets its share of `size`, rounded so they sum to it.
    shares = {k: size * len(v) / frame.height for k, v in groups.items()}
    counts = {k: int(s) for k, s in shares.items()}
    order = sorted(groups, key=lambda k: (counts[k] - shares[k], str(k)))
    for key in order[: size - sum(counts.values())]:
        counts[key] += 1
    picks = sorted(i for k, rows in groups.items() for i in rng.sample(rows, counts[k]))
    return Sample(frame[picks], frame.height, _dedupe_weight(job, frame, picks))


def _dedupe_weight(job: Job, frame: pl.DataFrame, picks: list[int]) -> tuple[float, ...]:
    """`Sample.dedupe_weight`: 1.0 for every row when the run would not share calls."""
    source = job.input
    columns = [source.messages] if source.messages is not None else []
    for template in (source.template(), source.system_template()):
        columns += list(template.columns) if template is not None else []
    params = job.params.model_dump(exclude_none=True)
    if job.run.dedupe != "auto" or not deterministic(params) or not columns:
        return (1.0,) * len(picks)
    columns = list(dict.fromkeys(columns))
    everywhere = frame.select(pl.len().over(columns).alias("n"))["n"]
    chosen = frame[picks].select(pl.len().over(columns).alias("n"))["n"]
    return tuple(k / everywhere[i] for k, i in zip(chosen.to_list(), picks, strict=True))


def sample_jobs(job: Job, models: Sequence[str], *, data: Path, out: Path) -> dict[str, Job]:
    """One temporary `fixed` job per model over the sample file, writing under `out`."""
    jobs = {}
    for number, model in enumerate(models):
        jobs[model] = job.model_copy(
            update={
                "input": job.input.model_copy(update={"path": data, "schema_": {}}),
                "output": job.output.model_copy(
                    update={
                        "path": out / f"model{number}.parquet",
                        "calls": out / f"model{number}.calls.parquet",
                    }
                ),
                "route": RouteConfig(strategy="fixed", model=model),
                "check": None,  # checks are re-run offline; a judge is never called
                "plans": {},
            }
        )
    return jobs


def sample_estimate(jobs: dict[str, Job]) -> list[TierEstimate]:
    """What answering the sample may cost, per model, as `batchroute estimate` reckons it."""
    return [tier for job in jobs.values() for tier in estimate(job, escalation_rate=0.0)[1]]


@dataclass(frozen=True, slots=True)
class Answers:
    """One model's answers to the sample, in sample order."""

    model: str
    answer: list[str | None]
    ok: list[bool]
    cost: list[float]
    correct: list[bool]
    mean_logprob: list[float | None]
    unpriced: int  # answered rows whose cost is unknown (counted as 0)


def answer_sample(
    job: Job, *, ids: Sequence[object], truth: Truth, budget_usd: float | None
) -> tuple[Answers, pl.DataFrame, float]:
    """Run one model's temporary job: its answers, the results frame (for the checks), in
    the order of `ids`, the sample's row ids, and what its new calls cost."""
    from batchroute.runner import run

    model = job.route.model
    assert model is not None
    if budget_usd is not None:
        job = job.model_copy(update={"run": job.run.model_copy(update={"budget_usd": budget_usd})})
    report = run(job, RunOptions(force=True))
    if report.stop_error is not None:
        raise type(report.stop_error)(
            f"tuning stopped while {job.route.model} answered the sample: {report.stop_error}"
            " (its finished calls are stored; run tune again to go on without paying twice)"
        )
    results = read_results(report.results_path)
    position = {row_id: index for index, row_id in enumerate(ids)}
    order = [position[r] for r in results["row_id"].to_list()]
    results = results.with_columns(pl.Series("_order", order)).sort("_order").drop("_order")
    calls = read_calls(report.calls_path)
    answered = calls.filter(
        (pl.col("purpose") == "answer") & pl.col("error_kind").is_null()
    ).unique(subset="row_id", keep="last")
    logprob = dict(
        zip(answered["row_id"].to_list(), answered["mean_logprob"].to_list(), strict=True)
    )
    ok = [s == "ok" for s in results["status"].to_list()]
    costs = results["cost_usd"].to_list()
    new_spend = sum(
        float(c or 0.0) for c, hit in zip(costs, results["cached"], strict=True) if not hit
    )
    return (
        Answers(
            model=model,
            answer=results["answer"].to_list(),
            ok=ok,
            cost=[float(c or 0.0) for c in costs],
            correct=truth.correct(results, run=f"sample of {job.route.model}").to_list(),
            mean_logprob=[logprob.get(r) for r in results["row_id"].to_list()],
            unpriced=sum(1 for c, good in zip(costs, ok, strict=True) if good and c is None),
        ),
        results,
        new_spend,
    )


def temp_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="batchroute-tune-")
