"""Where batchroute's time goes: a py-spy profile of the overhead benchmark's run, by part.

Run: .venv/bin/python bench/profile.py [--rows 20000] [--rate 250]

`batchroute run` (20,000 rows, simulator `--fast` in its own process, concurrency 64) under
`py-spy record --gil`: only the thread holding the GIL is sampled, so the shares are of the
time that runs Python, which is what bounds a single-process client. Each sample goes to
the first part, from the innermost frame out, whose code it is in. Needs py-spy (the
`bench` extra) and permission to trace a child process.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import command_line, job_file, write_section, write_tasks

from batchroute.sim import running_simulator

# (part, pattern on a frame "function (path:line)"), tried from the innermost frame out.
PARTS = [
    ("start-up: imports", r"_find_and_load|_call_with_frames_removed"),
    ("JSON encode and decode", r"\(json/"),
    ("call store: SQLite writes (its thread)", r"CallStore\.put_many|StoreWriter"),
    ("Parquet out: frames and writes (its thread)", r"_write_batch|\(batchroute/records|sink\.py"),
    ("Parquet in: reading batches (its thread)", r"_read_batch|\(batchroute/dataset"),
    ("aiohttp: request, connection, response", r"\(aiohttp/|selector_events\.py"),
    (
        "batchroute per row: executor, caller, limits, store key, stats",
        r"\(batchroute/(executor|caller|limits|budget|progress|shadow|prompts|store|transport)",
    ),
    ("event loop and task switching (asyncio, anyio)", r"\(asyncio/|\(anyio/|selectors\.py"),
]


def part_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, pattern in PARTS:
            if re.search(pattern, frame):
                return name
    return "other (interpreter, runner set-up)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        data = write_tasks(directory / "tasks.parquet", args.rows)
        raw = directory / "profile.txt"
        with running_simulator(fast=True) as sim:
            job = job_file(directory, data=data, base_url=sim.base_url)
            run = [sys.executable, "-m", "batchroute", "run", str(job), "--force", "-q"]
            record = [py_spy, "record", "--gil", "-r", str(args.rate), "--format", "raw"]
            subprocess.run([*record, "-o", str(raw), "--", *run], check=True, capture_output=True)
        counts: collections.Counter[str] = collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, samples = line.rpartition(" ")
            counts[part_of(stack.split(";"))] += int(samples)
    total = sum(counts.values())
    lines = [
        f"`{command_line()}`",
        "",
        f"`batchroute run` of {args.rows:,} rows (simulator `--fast`, concurrency 64) under"
        f" `py-spy record --gil`: {total:,} samples of the thread holding the GIL.",
        "",
        "| part | share |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {count / total:.1%} |" for name, count in counts.most_common()]
    write_section("profile", "Profile of the hot path", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
