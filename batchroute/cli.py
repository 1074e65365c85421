"""The `batchroute` command: parses arguments, calls the library, maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from batchroute import __version__
from batchroute.errors import BatchrouteError

EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchroute",
        description="Run a dataset of LLM tasks through a model router.",
    )
    parser.add_argument("--version", action="version", version=f"batchroute {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run a job file", description="Run a job: route every row, write Parquet."
    )
    run.add_argument("job", type=Path, help="the job file (TOML)")
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["sim"]:
        from batchroute.sim import main as sim_main

        return sim_main(args_list[1:])
    args = _parser().parse_args(args_list)
    _show_warnings()
    try:
        return _models(args) if args.command == "models" else _run(args)
    except BatchrouteError as exc:
        print(f"batchroute: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("batchroute: interrupted; outputs were not replaced", file=sys.stderr)
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

    report = models_report(load_job(args.job))
    print("\n".join(report.lines()))
    return 2 if report.missing else 0


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
    from batchroute.runner import run
    from batchroute.shadow import shadow_lines

    job = load_job(args.job)
    report = run(job, overwrite=args.overwrite, quiet=args.quiet)
    print(report.summary_line)
    for line in shadow_lines(report.summary.get("routes", {})):
        print(line)
    print(f"results: {report.results_path}  calls: {report.calls_path}")
    if report.stop_error is not None:
        print(f"batchroute: stopped: {report.stop_error}", file=sys.stderr)
        return report.stop_error.exit_code
    return 0
