"""Does the simulator outpace batchroute? Both measured against the same server, in one run.

Run: .venv/bin/python bench/headroom.py [--rows 10000] [--repeat 3]

1. the simulator's capacity: a raw aiohttp loop (concurrency 64) against it;
2. batchroute end to end: the real CLI (Parquet in and out, fixed strategy, concurrency 64)
   against the same simulator, rows per second and CPU seconds per 1,000 rows.
The ratio (1)/(2) is the headroom: above ~3, benchmarks of batchroute measure batchroute.
Both use the default model table with latency zero (normal mode, not --fast).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from sim_throughput import fire, zero_latency_table

from batchroute.sim import running_simulator

JOB = """
[input]
path = "tasks.parquet"
id = "id"
prompt = "Classify ticket {id}: {text}"
[output]
path = "out/results.parquet"
[endpoint]
base_url = "{base_url}"
[route]
strategy = "fixed"
model = "openai/gpt-4o-mini"
[params]
max_tokens = 16
[run]
concurrency = 64
"""


def batchroute_run(directory: Path, base_url: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds of one `batchroute run` subprocess."""
    job = directory / "job.toml"
    job.write_text(JOB.replace("{base_url}", base_url), encoding="utf-8")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "batchroute", "run", str(job), "--force", "--no-cache", "-q"],
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        pl.DataFrame(
            {
                "id": [f"t{i}" for i in range(args.rows)],
                "text": [f"my parcel {i} is late" for i in range(args.rows)],
            }
        ).write_parquet(directory / "tasks.parquet")
        table = zero_latency_table(directory)
        sim_rates, run_rates, cpu_per_k = [], [], []
        with running_simulator(models=table) as sim:
            for _ in range(args.repeat):
                elapsed = asyncio.run(fire(sim.base_url, requests=args.rows, concurrency=64))
                sim_rates.append(args.rows / elapsed)
                wall, cpu = batchroute_run(directory, sim.base_url)
                run_rates.append(args.rows / wall)
                cpu_per_k.append(cpu / args.rows * 1000)
    sim_rate, run_rate = statistics.median(sim_rates), statistics.median(run_rates)
    print(f"{args.rows} rows, median of {args.repeat}")
    print(f"simulator, raw aiohttp loop   {sim_rate:8.0f} requests/s")
    print(
        f"batchroute run (CLI, end to end) {run_rate:5.0f} rows/s, "
        f"{statistics.median(cpu_per_k):.2f} CPU s per 1k rows (incl. start-up)"
    )
    print(f"headroom (simulator / batchroute): {sim_rate / run_rate:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
