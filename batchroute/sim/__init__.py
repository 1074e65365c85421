"""The simulator: a local OpenAI-compatible provider with prices, limits, errors and a ledger."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from batchroute.sim.answers import expected_answer
from batchroute.sim.config import SimConfig, SimConfigError, load_sim_config
from batchroute.sim.process import (
    SimulatorHandle,
    SimulatorStartError,
    exit_when_stdin_closes,
    running_simulator,
)

__all__ = [
    "SimConfig",
    "SimConfigError",
    "SimulatorHandle",
    "SimulatorStartError",
    "expected_answer",
    "load_sim_config",
    "main",
    "running_simulator",
]

_DESCRIPTION = """\
Serve an OpenAI-compatible API on HOST:PORT that behaves like a paid provider:
GET /v1/models and POST /v1/chat/completions (non-streaming) with per-model prices,
latency, rpm/tpm limits (429 + Retry-After), injected 429/500/503/hang errors, the
X-MDB-Charged-USD and X-MDB-Balance-USD headers, and deterministic answers whose quality
depends on the model's skill. With --replay, the models of a recorded table answer with
their recorded responses and charge their recorded cost instead. GET /sim/ledger shows
what was charged; POST /sim/reset clears it. Once listening it prints one line:
"batchroute sim listening on URL".
"""

_MODELS_HELP = """\
model table (TOML); default: the packaged table. Keys: balance_usd, and per
[models."NAME"]: usd_per_mtok = {input, output} (required), latency_ms = {mean, jitter},
skill (0..1), format_fix (0..1: the chance that a repair turn fixes a broken format),
rpm, tpm (0 = unlimited), errors = {"429", "500", "503", hang} (probabilities), hang_s"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchroute sim",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    parser.add_argument("--models", type=Path, metavar="PATH", help=_MODELS_HELP)
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of answers, errors and latency (default: 0)"
    )
    parser.add_argument(
        "--balance", type=float, metavar="USD", help="starting balance (default: the table's)"
    )
    parser.add_argument(
        "--api-key", metavar="KEY", help="accept only 'Authorization: Bearer KEY' (default: any)"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="throughput mode for benchmarks: a constant answer with no latency, no injected "
        "errors and no rate limits, still with usage, charge headers and the ledger",
    )
    parser.add_argument(
        "--replay",
        type=Path,
        metavar="TABLE",
        help="replay mode: the models of this recorded table (Parquet/CSV, one row per prompt,"
        " <model>__response/__correct/__cost_usd/... columns) answer with their recorded"
        " response and charge their recorded cost; 'replay-judge' returns recorded scores",
    )
    parser.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="stop when stdin reaches end of file: a parent that keeps a pipe to it open"
        " takes the simulator down with it, even when killed with SIGKILL",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, serve until SIGTERM or SIGINT, and return the exit code."""
    args = _parser().parse_args(argv)
    if args.exit_with_stdin:
        exit_when_stdin_closes()
    try:
        config = load_sim_config(args.models)
    except SimConfigError as exc:
        print(f"batchroute sim: error: {exc}", file=sys.stderr)
        return 2
    replay = None
    if args.replay is not None:
        from batchroute.sim.replay import ReplayError, ReplayTable

        try:
            replay = ReplayTable.read(args.replay)
        except ReplayError as exc:
            print(f"batchroute sim: error: {exc}", file=sys.stderr)
            return 2
    # aiohttp is only needed to serve; importing it here keeps `running_simulator` light.
    from batchroute.sim.server import serve
    from batchroute.sim.state import Sim

    sim = Sim(
        config,
        seed=args.seed,
        balance=args.balance,
        api_key=args.api_key,
        fast=args.fast,
        replay=replay,
    )

    def announce(base_url: str) -> None:
        print(f"batchroute sim listening on {base_url}", flush=True)

    try:
        asyncio.run(serve(sim, host=args.host, port=args.port, ready=announce))
    except OSError as exc:  # the address is taken or cannot be bound
        where = f"{args.host}:{args.port}"
        print(f"batchroute sim: error: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a Ctrl-C that came before the signal handlers were installed
        pass
    return 0
