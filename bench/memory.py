"""Benchmark 5, memory: peak RSS of the batchroute process must not grow with the dataset.

Run: .venv/bin/python bench/memory.py [--sizes 100000 1000000]

Datasets generated here; each runs through the CLI against the simulator (its own process,
`--fast`), call store on, concurrency 64. Peak RSS is the batchroute process' own high-water
mark (`wait4`). Targets: the largest at most 1.3x the smallest, and all under 400 MB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import batchroute, command_line, job_file, verdict, write_section, write_tasks

from batchroute import read_metadata
from batchroute.sim import running_simulator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with running_simulator(fast=True) as sim:
            for size in args.sizes:
                data = write_tasks(directory / f"tasks_{size}.parquet", size)
                job = job_file(directory, data=data, base_url=sim.base_url, name=f"m{size}.toml")
                m = batchroute(job)
                summary = read_metadata(directory / "out" / f"m{size}.parquet")["summary"]
                assert summary["ok"] == size, summary
                rows.append((size, m.max_rss_mb, m.wall_s))
                for path in (data, *directory.glob("out/*.parquet")):  # a million rows' worth
                    path.unlink()
    smallest, largest = rows[0][1], rows[-1][1]
    growth = largest / smallest
    lines = [
        f"`{command_line()}`",
        "",
        "| rows | peak RSS (MB) | wall (s) | rows/s |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {n:,} | {rss:.0f} | {wall:.1f} | {n / wall:,.0f} |" for n, rss, wall in rows]
    ok = growth <= 1.3 and all(rss < 400 for _, rss, _ in rows)
    lines += [
        "",
        f"Largest / smallest: {growth:.2f}x (target at most 1.3x, all under 400 MB):"
        f" {verdict(ok)}.",
    ]
    write_section("memory", "5. Memory", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
