"""The `batchroute` command: parses arguments, calls the library, maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from batchroute.errors import EXIT_NO_ROW_OK, BatchrouteError
from batchroute.version import __version__

if TYPE_CHECKING:
    from batchroute.comparison import Comparison

EXIT_INTERRUPTED = 130
EXIT_CODES = (
    "exit codes: 0 done, at least one row ok; 1 internal error; 2 usage (job file, data,"
    " paths, endpoint, or another run of the job in progress); 3 stopped early (budget,"
    " balance, 402); 4 credentials rejected; 5 done, but no row ok; 130 interrupted"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchroute",
        description="Run a dataset of LLM tasks through a model router.",
    )
    parser.add_argument("--version", action="version", version=f"batchroute {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a job file",
        description="Run a job: route every row, write Parquet. One run of a job at a time:"
        " a second one exits 2 naming the pid of the first.",
        epilog=EXIT_CODES,
    )
    run.add_argument("job", type=Path, help="the job file (TOML)")
    run.add_argument(
        "--force",
        action="store_true",
        help="replace outputs written by a different job (a rerun of the same job replaces"
        " its own outputs without it)",
    )
    cache = run.add_mutually_exclusive_group()
    cache.add_argument(
        "--no-cache",
        dest="cache",
        action="store_const",
        const="off",
        default="use",
        help="make every call anew (answers are still stored for later runs)",
    )
    cache.add_argument(
        "--offline",
        dest="cache",
        action="store_const",
        const="offline",
        help="answer only from the store; rows that need a new call are skipped (free what-if)",
    )
    run.add_argument(
        "--retry-failed",
        type=Path,
        metavar="RESULTS",
        help="rerun only the rows that failed or were skipped in this earlier results file",
    )
    run.add_argument(
        "--engine",
        choices=("local", "ray"),
        help="over the job's run.engine: `ray` runs the rows on a Ray cluster (pip install"
        " 'batchroute[ray]')",
    )
    run.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="the Ray cluster to join (as `ray.init(address=...)`); default: a local one",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")

    estimate = commands.add_parser(
        "estimate",
        help="estimate tokens, dollars and duration before spending",
        description="Estimate a job's tokens, dollars (price table) and duration (rate limits)"
        " without calling the endpoint; with --sample N, run N rows for real and extrapolate.",
    )
    estimate.add_argument("job", type=Path, help="the job file (TOML)")
    estimate.add_argument(
        "--escalation",
        type=float,
        default=0.3,
        metavar="RATE",
        help="share of rows assumed to go past each cascade tier (default 0.3)",
    )
    estimate.add_argument(
        "--sample",
        type=_positive_int,
        metavar="N",
        help="run the first N rows for real and extrapolate with 95%% intervals",
    )

    commands.add_parser(
        "sim",
        help="serve the simulated provider on 127.0.0.1 (see `batchroute sim --help`)",
        add_help=False,
    )
    models = commands.add_parser(
        "models",
        help="compare the job's models with the endpoint's model list",
        description="Print every model the job names, whether the endpoint serves it (GET"
        " /v1/models), and the served models the job does not use. Exit 2 if one is missing.",
    )
    models.add_argument("job", type=Path, help="the job file (TOML)")
    for name, text in (
        ("status", "show the job's provider batches and their progress"),
        ("cancel", "cancel the job's provider batches that are still open"),
    ):
        batches = commands.add_parser(name, help=text, description=text.capitalize() + ".")
        batches.add_argument("job", type=Path, help="the job file (TOML)")
    _compare_parsers(commands)
    _tune_parser(commands)
    return parser


def _tune_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tune = commands.add_parser(
        "tune",
        help="find the cheapest route that keeps the quality you ask for, from a labelled sample",
        description="Answer a sample of rows with every candidate model (stored, so the full"
        " run reuses the calls), evaluate every candidate policy offline, and write the"
        " cheapest whose kept share of the top model's right answers has a lower confidence"
        " bound at or above --target-kept.",
    )
    tune.add_argument("job", type=Path, help="the job file (TOML)")
    truth = tune.add_mutually_exclusive_group(required=True)
    truth.add_argument("--truth", metavar="COLUMN", help="input column holding the right answer")
    truth.add_argument(
        "--truth-scorer", metavar="FUNCTION", help="module:function, f(row, answer) -> bool"
    )
    tune.add_argument("--answer-path", metavar="PATH", help="compare this JSON field of answers")
    tune.add_argument("--sample", type=int, required=True, metavar="N", help="rows to sample")
    tune.add_argument(
        "--target-kept",
        type=float,
        required=True,
        metavar="SHARE",
        help="the share of the top model's accuracy to keep, e.g. 0.95",
    )
    tune.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        metavar="P",
        help="of the lower bound, over every policy searched (default 0.95)",
    )
    tune.add_argument(
        "--kept",
        choices=("ratio", "share"),
        default="ratio",
        help="ratio: accuracy over the top model's (betting bound, default); share: of the top"
        " model's right answers, the share kept (exact binomial, stricter)",
    )
    tune.add_argument("--models", metavar="A,B,C", help="candidate models (default: the job's)")
    tune.add_argument("--seed", type=int, default=0, help="of the sample (default 0)")
    tune.add_argument("--stratify", metavar="COLUMN", help="sample in proportion to its values")
    tune.add_argument("--rules-on", metavar="COL,COL", help="learn routing rules over columns")
    tune.add_argument(
        "--no-learned", action="store_true", help="do not train a learned router as a candidate"
    )
    tune.add_argument(
        "--from-runs",
        type=Path,
        action="append",
        default=[],
        metavar="RESULTS.parquet",
        help="an earlier run of this job: its outcomes also train the learned router (repeatable)",
    )
    tune.add_argument("--budget-usd", type=float, metavar="X", help="cap on tuning's new spend")
    tune.add_argument("-o", "--output", type=Path, required=True, metavar="TUNED.toml")
    tune.add_argument(
        "--plot", type=Path, metavar="FILE.svg", help="draw the sample's cost-quality frontier"
    )
    tune.add_argument(
        "--report", type=Path, metavar="FILE.html", help="an HTML page: frontier, front, output"
    )
    tune.add_argument(
        "--force", action="store_true", help="replace an existing -o, --plot or --report file"
    )
    tune.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def _positive_int(text: str) -> int:
    """A count of at least 1, checked while parsing: a bad one prints nothing else first."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: a number of rows, at least 1")
    return value


# --- compare and report ------------------------------------------------------------------------


def _compare_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    runs = argparse.ArgumentParser(add_help=False)
    runs.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="results files (Parquet)")
    runs.add_argument(
        "--truth",
        metavar="COLUMN",
        help="input column holding the right answer (exact match"
        " after normalising case, space, punctuation and quotes)",
    )
    runs.add_argument(
        "--truth-scorer",
        metavar="FUNCTION",
        help="module:function or file.py:function called"
        " as f(row, answer) -> bool or (bool, reason), like a python check",
    )
    runs.add_argument(
        "--answer-path",
        metavar="PATH",
        help="compare this JSON field of the answer (e.g. 'answer') instead of the whole answer",
    )
    runs.add_argument(
        "--top-tier",
        metavar="MODEL",
        help="the model of the all-on-the-top-tier baseline"
        " (default: the highest mean charge per answer call)",
    )
    runs.add_argument(
        "--allow-mixed", action="store_true", help="compare runs over different datasets"
    )
    compare = commands.add_parser(
        "compare",
        parents=[runs],
        help="compare runs: cost, quality, escalation, model mix",
        description="One line per run: strategy and plan, rows ok/failed/skipped, escalation"
        " and fallback rates, cost per row, total, new spend vs cached, saving against all"
        " rows on the top tier, latency p50/p95, model mix; with a truth, accuracy and the"
        " share of the top tier's accuracy kept.",
    )
    compare.add_argument(
        "--format",
        choices=("table", "csv", "json", "markdown"),
        default="table",
        help="output format (default: table)",
    )
    compare.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="also draw cost versus quality (Pareto"
        " front marked) and the model mix into a PNG (needs matplotlib: batchroute[plot])",
    )
    report = commands.add_parser(
        "report",
        parents=[runs],
        help="write a static HTML report of runs (table and charts)",
        description="Write one self-contained HTML page (no server, no internet) with the"
        " comparison table, its notes, a cost-versus-quality chart and the model mix.",
    )
    report.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE.html", help="the page to write"
    )
    report.add_argument("--title", help="the page's title")


def _comparison(args: argparse.Namespace) -> Comparison:
    from batchroute.comparison import compare_runs, read_runs
    from batchroute.truth import truth_from_options

    truth = truth_from_options(args.truth, scorer=args.truth_scorer, answer_path=args.answer_path)
    runs = read_runs(args.runs)
    return compare_runs(runs, truth=truth, top_tier=args.top_tier, allow_mixed=args.allow_mixed)


def _compare(args: argparse.Namespace) -> int:
    from batchroute.compare_format import render

    comparison = _comparison(args)
    print(render(comparison, fmt=args.format))
    if args.plot is not None:
        from batchroute.plots import write_png

        write_png(comparison, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    from batchroute.report import write_report

    write_report(_comparison(args), args.output, title=args.title)
    print(f"report: {args.output}")
    return 0


# --- end of compare and report -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["sim"]:
        from batchroute.sim import main as sim_main

        return sim_main(args_list[1:])
    args = _parser().parse_args(args_list)
    _show_warnings()
    try:
        if args.command in ("compare", "report"):
            return _compare(args) if args.command == "compare" else _report(args)
        if args.command == "estimate":
            return _estimate(args)
        if args.command == "tune":
            return _tune(args)
        if args.command in ("status", "cancel"):
            return _batches(args)
        return _models(args) if args.command == "models" else _run(args)
    except BatchrouteError as exc:
        print(f"batchroute: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "batchroute: interrupted; earlier outputs were not replaced, finished calls are in"
            " the store: run the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Exception as exc:  # an internal error: short by default, in full with --debug
        if getattr(args, "debug", False):
            raise
        print(
            f"batchroute: internal error: {type(exc).__name__}: {exc} (rerun with --debug)",
            file=sys.stderr,
        )
        return 1


def _models(args: argparse.Namespace) -> int:
    from batchroute.job import load_job
    from batchroute.models_list import models_report

    reports = models_report(load_job(args.job))
    print("\n\n".join("\n".join(report.lines()) for report in reports))
    return 2 if any(report.missing for report in reports) else 0


def _batches(args: argparse.Namespace) -> int:
    from batchroute.batch.admin import cancel_lines, status_lines
    from batchroute.job import load_job

    job = load_job(args.job)
    print("\n".join((cancel_lines if args.command == "cancel" else status_lines)(job)))
    return 0


def _show_warnings() -> None:
    """The library's warnings (logger "batchroute") as one line each on stderr."""
    logger = logging.getLogger("batchroute")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("batchroute: warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


def _run(args: argparse.Namespace) -> int:
    from batchroute.job import load_job
    from batchroute.options import RunOptions

    job = load_job(args.job)  # before the runner's imports: a bad job file fails in a blink
    engine = {"engine": args.engine} if args.engine else {}
    address = {"ray_address": args.ray_address} if args.ray_address else {}
    if engine or address:
        job = job.model_copy(update={"run": job.run.model_copy(update={**engine, **address})})
    from batchroute.runner import run
    from batchroute.shadow import shadow_lines

    options = RunOptions(
        force=args.force,
        quiet=args.quiet,
        cache=args.cache,
        retry_failed=args.retry_failed,
        handle_signals=True,
    )
    report = run(job, options)
    if report.resumed:
        print(f"resumed run {report.run_id}: stored answers were reused, not paid again")
    print(report.summary_line)
    for line in shadow_lines(report.summary.get("routes", {})):
        print(line)
    results, calls = (
        job.output.url or report.results_path,
        job.output.calls_url or report.calls_path,
    )
    print(f"results: {results}  calls: {calls}")
    if report.stop_error is not None:
        print(f"batchroute: stopped: {report.stop_error}", file=sys.stderr)
        print(
            f"batchroute: finished rows are written; run `batchroute run {args.job}` again to"
            " resume without paying twice",
            file=sys.stderr,
        )
        return report.stop_error.exit_code
    if report.no_row_ok:
        message, rows = report.top_error or ("unknown error", 0)
        hints = "".join(f"; {hint}" for hint in report.hints)
        print(
            f"batchroute: error: {args.job}: no row ended ok; most common error ({rows} rows):"
            f" {message}{hints}",
            file=sys.stderr,
        )
        return EXIT_NO_ROW_OK
    return 0


def _tune(args: argparse.Namespace) -> int:
    from batchroute.job import load_job
    from batchroute.truth import truth_from_options
    from batchroute.tune import TuneOptions, tune

    job = load_job(args.job)
    truth = truth_from_options(args.truth, scorer=args.truth_scorer, answer_path=args.answer_path)
    assert truth is not None  # argparse requires one of the two
    names = tuple(m.strip() for m in (args.models or "").split(",") if m.strip())
    options = TuneOptions(
        truth=truth,
        sample=args.sample,
        target_kept=args.target_kept,
        output=args.output,
        confidence=args.confidence,
        models=names,
        seed=args.seed,
        stratify=args.stratify,
        budget_usd=args.budget_usd,
        rules_on=tuple(c.strip() for c in (args.rules_on or "").split(",") if c.strip()),
        force=args.force,
        kept=args.kept,
        learned=not args.no_learned,
        from_runs=tuple(args.from_runs),
        plot=args.plot,
        report=args.report,
    )
    tune(job, options)
    return 0


def _estimate(args: argparse.Namespace) -> int:
    from batchroute.errors import ConfigError
    from batchroute.estimate import estimate, format_estimate, format_sample, sample
    from batchroute.job import load_job

    job = load_job(args.job)
    if not 0 <= args.escalation <= 1:
        raise ConfigError(f"--escalation {args.escalation}: a share between 0 and 1")
    rows, tiers = estimate(job, escalation_rate=args.escalation)
    print(format_estimate(job, rows, tiers, rate=args.escalation))
    if args.sample is not None:
        print(format_sample(sample(job, rows=args.sample)))
    return 0
