"""Benchmark 7, the call store: throughput with it on, relative to off.

Run: .venv/bin/python bench/store_cost.py [--rows 20000] [--prefill 200000] [--repeat 3]

The same fixed job through the CLI (simulator `--fast` in its own process, concurrency 64):
- store on, a fresh store (what a first run pays: a key hashed and a row written per call);
- store on, a store already holding `--prefill` calls of earlier runs (what a later run
  pays: it also looks every call up, and inserts land in a bigger table);
- store off (bench/no_store.py: no hashing, lookups or writes).
Target: on / off at least 0.9.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import (
    batchroute,
    command_line,
    job_file,
    measure,
    median,
    verdict,
    write_section,
    write_tasks,
)

from batchroute import read_metadata
from batchroute.sim import running_simulator
from batchroute.store import CallStore, StoredCall


def prefilled(path: Path, calls: int) -> Path:
    """A store holding `calls` answered calls of another run (random keys, as hashes are)."""
    store = CallStore(path)
    for start in range(0, calls, 10_000):
        store.put_many(
            [
                StoredCall(
                    key=os.urandom(20),
                    model="openai/gpt-4o-mini",
                    answer="ok",
                    prompt_tokens=20,
                    completion_tokens=2,
                    charge_usd=4.2e-6,
                    cost_source="header",
                    latency_s=0.001,
                    request_id=f"req_{start + i:012x}",
                    run_id="earlier-run",
                )
                for i in range(min(10_000, calls - start))
            ]
        )
    store.close()
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--prefill", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"on, fresh": [], "on, prefilled": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        data = write_tasks(directory / "tasks.parquet", args.rows)
        earlier = prefilled(directory / "earlier.sqlite", args.prefill)
        no_store = Path(__file__).with_name("no_store.py")
        with running_simulator(fast=True) as sim:
            job = job_file(directory, data=data, base_url=sim.base_url)
            store = directory / "job.sqlite"
            for _ in range(args.repeat):
                for mode in rates:
                    for path in directory.glob("job.sqlite*"):
                        path.unlink()
                    if mode == "on, prefilled":
                        shutil.copy(earlier, store)
                    if mode == "off":
                        cmd = [sys.executable, str(no_store), "run", str(job), "--force", "-q"]
                        wall = measure(cmd).wall_s
                    else:
                        wall = batchroute(job).wall_s
                    summary = read_metadata(directory / "out" / "job.parquet")["summary"]
                    assert summary["ok"] == args.rows, summary
                    rates[mode].append(args.rows / wall)
    off = median(rates["off"])
    lines = [
        f"`{command_line()}`",
        "",
        f"{args.rows:,} rows, fixed strategy, simulator `--fast`, concurrency 64; median of"
        f" {args.repeat} interleaved repetitions; whole CLI runs.",
        "",
        "| call store | rows/s | on / off |",
        "|---|---:|---:|",
    ]
    for mode, values in rates.items():
        label = f"on, holding {args.prefill:,} earlier calls" if mode == "on, prefilled" else mode
        lines.append(f"| {label} | {median(values):,.0f} | {median(values) / off:.2f} |")
    worst = min(median(rates["on, fresh"]), median(rates["on, prefilled"])) / off
    lines += ["", f"Target on / off at least 0.9: {verdict(worst >= 0.9)}."]
    write_section("store", "7. Call store on vs off", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
