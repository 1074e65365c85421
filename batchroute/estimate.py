"""`batchroute estimate`: tokens, dollars and duration of a job before spending anything."""

from __future__ import annotations

import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from batchroute.dataset import open_dataset
from batchroute.job import Job
from batchroute.options import RunOptions
from batchroute.prompts import BadRowInput, build_messages, estimate_prompt_tokens
from batchroute.results import read_results
from batchroute.router import PendingPlan, Plan, build_router
from batchroute.stats import Z_95, wilson


@dataclass(frozen=True, slots=True)
class TierEstimate:
    plan: str
    model: str
    rows: float  # rows expected to reach this tier
    prompt_tokens: float
    completion_tokens: float  # at most: max_tokens per call
    usd: float | None  # None without a price table
    minutes: float | None  # the rate limits' floor on the duration; None when unlimited


@dataclass(slots=True)
class _Tally:
    rows: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0


def estimate(job: Job, *, escalation_rate: float) -> tuple[int, list[TierEstimate]]:
    """Rows, and per plan and tier: tokens, dollars and time from the rate limits.

    The router picks each row's plan as in a run (rules evaluated on the data). A classifier's
    own call is counted on every row, and since its labels are unknown before the calls, its
    rows are shared evenly between the plans its labels can pick. Each tier after a plan's
    first sees `escalation_rate` of the rows of the tier before it.
    """
    dataset = open_dataset(job)
    prompt, system = job.input.template(), job.input.system_template()
    router = build_router(job)
    tallies: dict[tuple[str, int, str], _Tally] = {}

    def add(plan: str, tier: int, model: str, *, rows: float, tokens: float, out: int) -> None:
        tally = tallies.setdefault((plan, tier, model), _Tally())
        tally.rows += rows
        tally.prompt_tokens += tokens
        tally.completion_tokens += rows * out

    for batch in dataset.batches():
        plans = router.route(batch.frame)
        for row, plan in zip(batch.frame.iter_rows(named=True), plans, strict=True):
            try:
                messages = build_messages(
                    row, prompt=prompt, system=system, messages_column=job.input.messages
                )
            except BadRowInput:
                continue  # such a row fails without a call
            tokens = estimate_prompt_tokens(messages)
            targets: list[tuple[Plan, float]]
            if isinstance(plan, PendingPlan):
                classifier = plan.classifier
                asked = estimate_prompt_tokens(classifier.messages(row))
                add(
                    plan.name,
                    0,
                    classifier.model,
                    rows=1.0,
                    tokens=asked,
                    out=classifier.params["max_tokens"],
                )
                picks = classifier.plans()
                targets = [(pick, 1.0 / len(picks)) for pick in picks]
            else:
                targets = [(plan, 1.0)]
            for target, weight in targets:
                out = int(target.params.get("max_tokens") or job.run.default_max_tokens)
                share = weight
                for tier, model in enumerate(target.tiers):
                    add(target.name, tier, model, rows=share, tokens=tokens * share, out=out)
                    share *= escalation_rate
    return dataset.num_rows, [_priced(job, key, tally) for key, tally in tallies.items()]


def _priced(job: Job, key: tuple[str, int, str], tally: _Tally) -> TierEstimate:
    plan, _, model = key
    config = job.model(model)
    usd = None
    if config.usd_per_mtok is not None:
        usd = config.usd_per_mtok.cost(tally.prompt_tokens, tally.completion_tokens)
    # Each limit the job sets is a floor on the minutes; the highest one binds.
    spent = (
        (config.rpm, tally.rows),
        (config.tpm, tally.prompt_tokens + tally.completion_tokens),
        (config.itpm, tally.prompt_tokens),
        (config.otpm, tally.completion_tokens),
    )
    floors = [amount / limit for limit, amount in spent if limit]
    return TierEstimate(
        plan,
        model,
        tally.rows,
        tally.prompt_tokens,
        tally.completion_tokens,
        usd,
        max(floors, default=None),
    )


def format_estimate(job: Job, rows: int, tiers: list[TierEstimate], *, rate: float) -> str:
    lines = [
        f"{job.source}: {rows} rows; each tier after the first assumed to see {rate:.0%} of the"
        " rows of the one before (--escalation)",
        f"{'plan':<24} {'model':<30} {'rows':>8} {'prompt tok':>12} {'max compl tok':>14}"
        f" {'USD':>10} {'time (limits)':>13}",
    ]
    for t in tiers:
        usd = f"{t.usd:10.4f}" if t.usd is not None else f"{'no price':>10}"
        floor = _duration(t.minutes) if t.minutes is not None else "unlimited"
        plan = "" if t.plan == f"fixed:{t.model}" else t.plan  # a lone model needs no name
        lines.append(
            f"{_cut(plan, 24):<24} {_cut(t.model, 30):<30} {t.rows:8.0f}"
            f" {t.prompt_tokens:12.0f} {t.completion_tokens:14.0f} {usd} {floor:>13}"
        )
    priced = [t.usd for t in tiers if t.usd is not None]
    total = f"${sum(priced):.4f}" if len(priced) == len(tiers) else "unknown (a tier has no price)"
    slowest = max((t.minutes for t in tiers if t.minutes is not None), default=None)
    lines.append(
        f"total: at most {total}"
        + (f"; at least {_duration(slowest)} under the rate limits" if slowest else "")
    )
    return "\n".join(lines)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


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

    total = open_dataset(job)
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
    costs = ran["cost_usd"].drop_nulls().to_list() or [0.0]  # null: a cost not known
    mean = statistics.fmean(costs)
    half = Z_95 * (statistics.stdev(costs) / math.sqrt(n) if len(costs) > 1 else mean)
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
