"""Benchmark 6, start-up: `batchroute --help`, a 10-row run, and what the imports cost.

Run: .venv/bin/python bench/startup.py [--repeat 7]

`--help` and a 10-row `batchroute run` (against a simulator already listening in its own
process) are timed as whole commands, median of `--repeat`. `python -X importtime` shows
what importing the CLI and the run's modules costs, and the heaviest imports of a run.
Target: `batchroute --help` under 0.5 s.
"""

from __future__ import annotations

import argparse
import subprocess
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

from batchroute.sim import running_simulator


def import_times(module: str) -> tuple[float, list[tuple[str, float]]]:
    """Milliseconds to import `module`, and the libraries it pulls in, heaviest first.

    A library counts once, where it is first imported, with everything it imports itself.
    """
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    )
    total, libraries = 0.0, []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        ms, name = int(cumulative) / 1000, name.strip()
        if name == module:
            total = ms
        elif "." not in name and not name.startswith(("_", "batchroute")):
            libraries.append((name, ms))
    return total, sorted(libraries, key=lambda item: -item[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    script = Path(sys.executable).with_name("batchroute")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "batchroute"]
    helps = [measure([*cli, "--help"]).wall_s for _ in range(args.repeat)]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        data = write_tasks(directory / "tasks.parquet", 10)
        with running_simulator(fast=True) as sim:
            job = job_file(directory, data=data, base_url=sim.base_url)
            runs = [batchroute(job) for _ in range(args.repeat)]
    run_wall = median([m.wall_s for m in runs])
    run_cpu = median([m.cpu_s for m in runs])
    cli_import, _ = import_times("batchroute.cli")
    runner_import, libraries = import_times("batchroute.runner")
    help_s = median(helps)
    lines = [
        f"`{command_line()}`",
        "",
        "| command | wall (s) |",
        "|---|---:|",
        f"| `batchroute --help` | {help_s:.3f} |",
        f"| `batchroute run` of a 10-row job (simulator already up) | {run_wall:.3f}"
        f" ({run_cpu:.2f} CPU s) |",
        "",
        f"Target `--help` under 0.5 s: {verdict(help_s < 0.5)}.",
        "",
        f"`python -X importtime -c 'import batchroute.cli'`: {cli_import:.0f} ms (the public"
        " API and the openai SDK are imported on first use).",
        "",
        f"`python -X importtime -c 'import batchroute.runner'` (what a run imports):"
        f" {runner_import:.0f} ms; the heaviest libraries:",
        "",
        "| library | ms |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {ms:.0f} |" for name, ms in libraries[:8]]
    write_section("startup", "6. Start-up", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
