"""`batchroute tune`: sample, answer with every candidate, evaluate offline, choose, write."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from batchroute.errors import BudgetReached, ConfigError, DatasetError
from batchroute.job import Job
from batchroute.learned import RouterModel
from batchroute.truth import Truth
from batchroute.tune.choose import Choice, choose
from batchroute.tune.format import format_choice, format_forecast, format_front
from batchroute.tune.from_runs import RunExamples, read_examples
from batchroute.tune.frontier import check_chart_target
from batchroute.tune.kept import KeptStatistic
from batchroute.tune.page import write_pictures
from batchroute.tune.policies import Policy, by_cost, cascade_families, single_families
from batchroute.tune.predict import predict, prediction_table
from batchroute.tune.router_model import router_families
from batchroute.tune.rules_learn import check_rule_columns, rule_families, split_sample
from batchroute.tune.sample import (
    Answers,
    answer_sample,
    candidate_models,
    draw_sample,
    sample_estimate,
    sample_jobs,
    temp_dir,
)
from batchroute.tune.signals import check_verdicts, judge_skipped, signals_of
from batchroute.tune.writer import (
    check_tables,
    check_target,
    policy_tables,
    replace_tables,
    write_tuned,
)

__all__ = ["TuneOptions", "TuneResult", "tune"]


@dataclass(frozen=True, slots=True)
class TuneOptions:
    truth: Truth
    sample: int
    target_kept: float
    output: Path
    confidence: float = 0.95
    models: tuple[str, ...] = ()
    seed: int = 0
    stratify: str | None = None
    budget_usd: float | None = None
    rules_on: tuple[str, ...] = ()  # low-cardinality columns to learn routing rules over
    kept: KeptStatistic = "ratio"
    learned: bool = True  # train and test a learned router too
    from_runs: tuple[Path, ...] = ()  # earlier runs' results: more for the router to learn from
    force: bool = False
    plot: Path | None = None  # the sample's cost-quality frontier, as SVG
    report: Path | None = None  # an HTML page with the frontier and the front's table


@dataclass(frozen=True, slots=True)
class TuneResult:
    choice: Choice
    tuned_path: Path | None  # None when no policy holds the target
    total_rows: int


def _check_options(job: Job, options: TuneOptions) -> None:
    if not 0 < options.target_kept <= 1:
        raise ConfigError(f"--target-kept {options.target_kept}: a share in (0, 1]")
    if not 0 < options.confidence < 1:
        raise ConfigError(f"--confidence {options.confidence}: a probability in (0, 1)")
    if options.budget_usd is not None and options.budget_usd <= 0:
        raise ConfigError(f"--budget-usd {options.budget_usd}: a positive amount")
    if job.source is None:
        raise ConfigError("tune needs a job read from a file (load_job)")
    check_target(job.source, target=options.output, force=options.force)
    if options.learned:
        check_target(job.source, target=_router_path(options), force=options.force)
    elif options.from_runs:
        raise ConfigError("--from-runs trains the learned router: it does not go with --no-learned")
    check_chart_target(options.plot, flag="--plot", suffixes=(".svg",), force=options.force)
    html = (".html", ".htm")
    check_chart_target(options.report, flag="--report", suffixes=html, force=options.force)


def _router_path(options: TuneOptions) -> Path:
    """Where a learned router is written: beside the tuned job, named after it."""
    return options.output.with_name(options.output.stem + ".router.json")


def tune(job: Job, options: TuneOptions, *, say: Callable[[str], None] = print) -> TuneResult:
    """Tune `job` on a labelled sample and write the tuned job; `say` prints progress."""
    _check_options(job, options)
    printed: list[str] = []  # for the HTML report, which quotes what tune printed
    say = _recorded(say, printed)
    models = candidate_models(job, chosen=options.models)
    sample = draw_sample(job, size=options.sample, seed=options.seed, stratify=options.stratify)
    check_rule_columns(sample.frame, options.rules_on, source=job.input.path)
    truth_column = options.truth.column
    if truth_column is not None and truth_column not in sample.frame.columns:
        raise DatasetError(f"{job.input.path}: --truth {truth_column}: no such column")
    ids = (
        sample.frame[job.input.id].to_list()
        if job.input.id is not None
        else list(range(sample.frame.height))
    )
    table: dict[str, Answers] = {}
    verdicts: dict[str, list[bool]] = {}
    with temp_dir() as tmp:
        data = Path(tmp) / "sample.parquet"
        sample.frame.write_parquet(data)
        jobs = sample_jobs(job, models, data=data, out=Path(tmp))
        priced = sample_estimate(jobs)
        known = [t.usd for t in priced if t.usd is not None]
        cost = f"at most ${sum(known):.4f}" if len(known) == len(priced) else "unknown (no price)"
        say(
            f"tune: {sample.frame.height} of {sample.total_rows} rows x {len(models)} models"
            f" ({', '.join(models)}): {cost} by the price tables (stored calls are not paid"
            " again)"
        )
        extra = _run_examples(job, options, ids=ids, say=say)  # refused before any spend
        spent = 0.0
        for model in models:
            left = None if options.budget_usd is None else options.budget_usd - spent
            if left is not None and left <= 0:
                raise BudgetReached(
                    f"--budget-usd {options.budget_usd}: spent before {model} answered the sample"
                    " (the finished calls are stored; run tune again to go on)"
                )
            answers, results, new_spend = answer_sample(
                jobs[model], ids=ids, truth=options.truth, budget_usd=left
            )
            spent += new_spend
            table[model] = answers
            checked = check_verdicts(job, answers, rows=results)
            if checked is not None:
                verdicts[model] = checked
    say(f"tune: the sample's answers cost ${spent:.4f} in new calls")
    if judge_skipped(job):
        say("tune: the judge check is left out offline (it would need a call per answer)")
    choice = _choose(
        job, table, verdicts=verdicts or None, options=options, sample=sample.frame, extra=extra
    )
    for line in (format_front(choice), format_choice(choice)):
        say(line)
    top = next((s for s in choice.scored if s.policy.key == choice.top), None)
    if choice.chosen is None:
        _pictures(job, choice, options, printed=printed, say=say)
        return TuneResult(choice, None, sample.total_rows)
    forecast = predict(choice, choice.chosen, sample=sample, seed=options.seed)
    shared = any(w < 1 for w in sample.dedupe_weight)
    say(format_forecast(choice, prediction=forecast, top=top, shared=shared))
    assert job.source is not None
    original = job.source.read_text(encoding="utf-8")
    comment = (
        f"Tuned by `batchroute tune` on {sample.frame.height} rows (seed {options.seed}):\n"
        + format_choice(choice)
    )
    policy = choice.chosen.policy
    router_file = None
    if policy.kind == "learned":
        router = _router_path(options)
        trained = policy.detail["model"]
        assert isinstance(trained, RouterModel)
        router.write_text(trained.to_json() + "\n", encoding="utf-8")
        router_file = router.name
        say(f"router: {router}")
    tables = policy_tables(
        policy, original_check=check_tables(original), comment=comment, router_file=router_file
    )
    tables = tables.rstrip("\n") + "\n\n" + prediction_table(forecast)
    write_tuned(
        job.source,
        replace_tables(original, new_tables=tables),
        target=options.output,
        force=options.force,
    )
    say(f"tuned job: {options.output}")
    _pictures(job, choice, options, printed=printed, say=say)
    return TuneResult(choice, options.output, sample.total_rows)


def _run_examples(
    job: Job, options: TuneOptions, *, ids: Sequence[object], say: Callable[[str], None]
) -> RunExamples | None:
    """Earlier runs' examples, read (and refused) before the sample costs anything."""
    if not options.from_runs:
        return None
    extra = read_examples(options.from_runs, job=job, sample_ids=ids, truth=options.truth)
    say(
        f"tune: {len(extra)} examples from {len(options.from_runs)} earlier run(s) for the"
        f" learned router's training half only ({extra.left_out} rows of the sample left out;"
        f" {extra.by_check} verdicts by a check alone, their answers not in the store)"
    )
    return extra


def _recorded(say: Callable[[str], None], lines: list[str]) -> Callable[[str], None]:
    def both(text: str) -> None:
        lines.append(text)
        say(text)

    return both


def _pictures(
    job: Job,
    choice: Choice,
    options: TuneOptions,
    *,
    printed: list[str],
    say: Callable[[str], None],
) -> None:
    assert job.source is not None
    title = f"batchroute tune: {job.source.name}"
    write_pictures(
        choice, plot=options.plot, report=options.report, title=title, printed=printed, say=say
    )


def _choose(
    job: Job,
    table: dict[str, Answers],
    *,
    verdicts: dict[str, list[bool]] | None,
    options: TuneOptions,
    sample: pl.DataFrame,
    extra: RunExamples | None = None,
) -> Choice:
    families: list[Sequence[Policy]] = []
    singles = single_families(table)
    families += singles
    families += cascade_families(
        table, verdicts=verdicts, signals=signals_of(job, list(table.values()))
    )
    top = max((f[0] for f in singles), key=lambda p: (p.accuracy, -by_cost(table).index(p.key)))
    split = split_sample(sample.height, seed=options.seed)
    if options.learned:
        families += router_families(
            sample.to_dicts(),
            table,
            job=job,
            categorical=options.rules_on,
            top=top.key,
            split=split,
            seed=options.seed,
            extra=extra,
        )
    if options.rules_on:
        families += rule_families(
            sample,
            table,
            columns=options.rules_on,
            top=top.key,
            split=split,
            source=job.input.path,
            net=options.kept == "ratio",
        )
    return choose(
        families,
        top=top,
        target=options.target_kept,
        confidence=options.confidence,
        statistic=options.kept,
        seed=options.seed,
    )
