"""`batchroute estimate`: tokens, dollars and duration of a job before spending anything."""

from __future__ import annotations

import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from batchroute.dataset import Dataset
from batchroute.job import Job
from batchroute.preflight import RunOptions
from batchroute.prompts import BadRowInput, build_messages, estimate_prompt_tokens
from batchroute.results import read_results
from batchroute.router import build_router

Z95 = 1.96


@dataclass(frozen=True, slots=True)
class TierEstimate:
    model: str
    rows: float  # rows expected to reach this tier
    prompt_tokens: float
    completion_tokens: float  # at most: max_tokens per call
    usd: float | None  # None without a price table
    minutes: float | None  # the rate limits' floor on the duration; None when unlimited


def estimate(job: Job, *, escalation_rate: float) -> tuple[int, list[TierEstimate]]:
    """Rows, and per tier of the job's plan: tokens, dollars and time from the rate limits.

    Each tier after the first sees `escalation_rate` of the rows of the tier before it.
    """
    dataset = Dataset(job.input.path, id_column=job.input.id, batch_rows=job.input.batch_rows)
    prompt, system = job.input.template(), job.input.system_template()
    prompt_tokens = 0
    for batch in dataset.batches():
        for row in batch.frame.iter_rows(named=True):
            try:
                messages = build_messages(
                    row, prompt=prompt, system=system, messages_column=job.input.messages
                )
            except BadRowInput:
                continue  # such a row fails without a call
            prompt_tokens += estimate_prompt_tokens(messages)
    plan = build_router(job).plans()[0]
    max_tokens = int(plan.params.get("max_tokens") or job.run.default_max_tokens)
    tiers: list[TierEstimate] = []
    share = 1.0
    for model in plan.tiers:
        rows = dataset.num_rows * share
        tokens_in = prompt_tokens * share
        tokens_out = rows * max_tokens
        config = job.model(model)
        usd = None
        if config.usd_per_mtok is not None:
            prices = config.usd_per_mtok
            usd = (tokens_in * prices.input + tokens_out * prices.output) / 1_000_000
        floors = [rows / config.rpm] if config.rpm else []
        floors += [(tokens_in + tokens_out) / config.tpm] if config.tpm else []
        tiers.append(
            TierEstimate(model, rows, tokens_in, tokens_out, usd, max(floors, default=None))
        )
        share *= escalation_rate
    return dataset.num_rows, tiers


def format_estimate(job: Job, rows: int, tiers: list[TierEstimate], *, rate: float) -> str:
    lines = [
        f"{job.source}: {rows} rows; each tier after the first assumed to see {rate:.0%} of the"
        " rows of the one before (--escalation)",
        f"{'tier':<34} {'rows':>9} {'prompt tok':>12} {'max compl tok':>14} {'USD':>10}"
        f" {'time (limits)':>13}",
    ]
    for t in tiers:
        usd = f"{t.usd:10.4f}" if t.usd is not None else f"{'no price':>10}"
        floor = _duration(t.minutes) if t.minutes is not None else "unlimited"
        lines.append(
            f"{t.model:<34} {t.rows:9.0f} {t.prompt_tokens:12.0f} {t.completion_tokens:14.0f}"
            f" {usd} {floor:>13}"
        )
    priced = [t.usd for t in tiers if t.usd is not None]
    total = f"${sum(priced):.4f}" if len(priced) == len(tiers) else "unknown (a tier has no price)"
    slowest = max((t.minutes for t in tiers if t.minutes is not None), default=None)
    lines.append(
        f"total: at most {total}"
        + (f"; at least {_duration(slowest)} under the rate limits" if slowest else "")
    )
    return "\n".join(lines)


def _duration(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


@dataclass(frozen=True, slots=True)
class SampleEstimate:
    sample_rows: int
    total_rows: int
    usd_per_row: float
    usd_total_low: float
    usd_total_high: float
    escalation_rate: float
    escalation_low: float
    escalation_high: float
    rows_per_s: float


def sample(job: Job, *, rows: int) -> SampleEstimate:
    """Run the first `rows` rows for real (through the store, so the full run reuses them) and
    extrapolate cost and escalation to the whole dataset with 95% intervals."""
    from batchroute.runner import run

    total = Dataset(job.input.path, id_column=job.input.id, batch_rows=job.input.batch_rows)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sample.parquet"
        sampled = job.model_copy(
            update={
                "output": job.output.model_copy(
                    update={"path": out, "calls": Path(tmp) / "sample.calls.parquet"}
                )
            }
        )
        report = run(sampled, RunOptions(limit_rows=rows, force=True))
        results = read_results(out)
    ran = results.filter(results["status"] != "skipped")
    n = max(ran.height, 1)
    costs = ran["cost_usd"].to_list() or [0.0]
    mean = statistics.fmean(costs)
    half = Z95 * (statistics.stdev(costs) / math.sqrt(n) if len(costs) > 1 else mean)
    escalated = int(ran["escalated"].sum())
    low, high = wilson(escalated, n)
    elapsed = float(report.summary.get("elapsed_s") or 0.0)
    return SampleEstimate(
        sample_rows=ran.height,
        total_rows=total.num_rows,
        usd_per_row=mean,
        usd_total_low=max(0.0, mean - half) * total.num_rows,
        usd_total_high=(mean + half) * total.num_rows,
        escalation_rate=escalated / n,
        escalation_low=low,
        escalation_high=high,
        rows_per_s=ran.height / elapsed if elapsed else 0.0,
    )


def format_sample(s: SampleEstimate) -> str:
    pace = _duration(s.total_rows / s.rows_per_s / 60) if s.rows_per_s else "unknown"
    return (
        f"sampled {s.sample_rows} rows: ${s.usd_per_row * 1000:.4f} per 1k rows, escalation"
        f" {s.escalation_rate:.1%} (95% {s.escalation_low:.1%}-{s.escalation_high:.1%})\n"
        f"all {s.total_rows} rows: ${s.usd_total_low:.4f}-${s.usd_total_high:.4f} (95%),"
        f" about {pace} at the sample's pace; the sampled calls are in the store"
        " and are not paid again by the full run"
    )


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The Wilson score interval at 95%: honest near 0 and 1, unlike the normal one."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    spread = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    return max(0.0, centre - spread), min(1.0, centre + spread)
