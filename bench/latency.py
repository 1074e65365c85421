"""Benchmark 3, latency-bound scaling: with slow answers, is batchroute as fast as concurrency?

Run: .venv/bin/python bench/latency.py [--rows 20000] [--latency-ms 200] [--concurrency 256]

Every answer takes `--latency-ms` at the simulator (in its own process, no jitter), so with C
calls in flight the ideal run takes N x latency / C. Target: batchroute's wall time (the
whole CLI, start-up included) at most 1.1x the ideal.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import (
    batchroute,
    command_line,
    job_file,
    median,
    sim_table,
    verdict,
    write_section,
    write_tasks,
)

from batchroute import read_metadata
from batchroute.sim import running_simulator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ideal = args.rows * args.latency_ms / 1000 / args.concurrency
    walls, in_run = [], []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        data = write_tasks(directory / "tasks.parquet", args.rows)
        table = sim_table(directory, latency_ms=args.latency_ms)
        with running_simulator(models=table) as sim:
            job = job_file(
                directory, data=data, base_url=sim.base_url, concurrency=args.concurrency
            )
            for _ in range(args.repeat):
                walls.append(batchroute(job, "--no-cache").wall_s)
                summary = read_metadata(directory / "out" / "job.parquet")["summary"]
                assert summary["ok"] == args.rows, summary
                in_run.append(summary["elapsed_s"])
    wall = median(walls)
    body = f"""
`{command_line()}`

{args.rows:,} rows, {args.latency_ms:g} ms simulated latency (no jitter), concurrency
{args.concurrency}; median of {args.repeat}.

| | seconds | / ideal |
|---|---:|---:|
| ideal: N x latency / C | {ideal:.2f} | 1.00 |
| `batchroute run`, whole command | {wall:.2f} | {wall / ideal:.3f} |
| the run itself (without start-up) | {median(in_run):.2f} | {median(in_run) / ideal:.3f} |

Target at most 1.1x the ideal: {verdict(wall <= 1.1 * ideal)}.
"""
    write_section("latency", "3. Latency-bound scaling", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
