"""Benchmark 2, rate-limit fidelity: does batchroute use a limit fully without tripping it?

Run: .venv/bin/python bench/rate_limits.py [--rpm 3000] [--tpm 100000] [--minutes 1.25]

The simulator enforces a limit per model over a sliding minute and answers 429 (with
Retry-After) past it; batchroute is given the same limit in the job's [models] table. Each
run lasts longer than the simulator's window, so both the opening burst and the window's
edge are exercised. Achieved rate: what the simulator served (requests, or prompt plus
completion tokens, from its ledger) per minute of the run's own elapsed time. Targets: at
least 0.97 of the limit, and 429s under 0.5% of the calls.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import (
    MODEL,
    batchroute,
    command_line,
    job_file,
    sim_table,
    verdict,
    write_section,
    write_tasks,
)

from batchroute import read_metadata
from batchroute.sim import running_simulator

TOKENS_PER_CALL = 24  # what a row of write_tasks costs at the simulator (prompt + answer)


def one(directory: Path, *, kind: str, limit: int, rows: int) -> dict[str, float]:
    """One run against a simulator enforcing `limit` of `kind` ("rpm" or "tpm")."""
    table = sim_table(directory, **{kind: limit}, name=f"sim_{kind}.toml")
    data = write_tasks(directory / f"tasks_{kind}.parquet", rows)
    with running_simulator(models=table) as sim:
        job = job_file(
            directory,
            data=data,
            base_url=sim.base_url,
            models=f'[models."{MODEL}"]\n{kind} = {limit}\n',
            name=f"{kind}.toml",
        )
        measured = batchroute(job, "--no-cache")
        book = sim.ledger()["models"][MODEL]
    elapsed = read_metadata(directory / "out" / f"{kind}.parquet")["summary"]["elapsed_s"]
    served = book["ok"] if kind == "rpm" else book["prompt_tokens"] + book["completion_tokens"]
    return {
        "rows": rows,
        "elapsed_s": elapsed,
        "wall_s": measured.wall_s,
        "achieved_per_min": served / elapsed * 60,
        "requests": book["requests"],
        "rate_429": book["errors"]["429"] / book["requests"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=int, default=3000)
    parser.add_argument("--tpm", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=1.25, help="length of each run")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        results["rpm"] = one(
            directory, kind="rpm", limit=args.rpm, rows=int(args.rpm * args.minutes)
        )
        rows = int(args.tpm * args.minutes / TOKENS_PER_CALL)
        results["tpm"] = one(directory, kind="tpm", limit=args.tpm, rows=rows)
    lines = [
        f"`{command_line()}`",
        "",
        "The simulator enforces the limit over a sliding minute (429 + Retry-After past it);"
        " the job sets the same limit; concurrency 64, zero simulated latency.",
        "",
        "| limit | rows | run (s) | achieved / min | achieved / limit | 429s | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for kind, limit in (("rpm", args.rpm), ("tpm", args.tpm)):
        r = results[kind]
        share = r["achieved_per_min"] / limit
        ok = share >= 0.97 and r["rate_429"] < 0.005
        unit = "requests" if kind == "rpm" else "tokens"
        lines.append(
            f"| {limit:,} {kind} | {r['rows']:,} | {r['elapsed_s']:.1f} |"
            f" {r['achieved_per_min']:,.0f} {unit} | {share:.3f} |"
            f" {r['rate_429']:.2%} of {r['requests']:,} | {verdict(ok)} |"
        )
    write_section("rate_limits", "2. Rate-limit fidelity", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
