"""batchroute at an earlier commit against the working tree, in the same run.

Run: .venv/bin/python bench/before_after.py [--before 4f62488 [COMMIT ...]] [--rows 20000]
[--repeat 3]

Each earlier commit's `batchroute/` is exported with `git archive` and run by the same
interpreter and libraries (the editable install is bypassed), so only batchroute's own code
differs. Measured as in bench/overhead.py (simulator `--fast` in its own process,
concurrency 64, a fresh call store each run), interleaved, plus a 10-row run for start-up.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, command_line, job_file, measure, median, write_section, write_tasks

from batchroute.sim import running_simulator

# Runs the CLI from `sys.argv[1]` when given (an exported tree), else the installed package.
LAUNCH = """
import sys
tree = sys.argv.pop(1)
if tree:
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, tree)
from batchroute.cli import main
sys.exit(main(sys.argv[1:]))
"""


# The commit before the performance work of issue 6: its section keeps that name. Any other
# commit gets a section of its own, so one comparison never replaces another's figures.
ISSUE_6_BASE = "4f62488"


def export(commit: str, directory: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "batchroute"], check=True, capture_output=True
    ).stdout
    directory.mkdir()
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--before", nargs="+", default=[ISSUE_6_BASE], help="earlier commits, oldest first"
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        trees = {f"`{c}`": str(export(c, directory / f"before-{c}")) for c in args.before}
        trees["now"] = ""
        big = write_tasks(directory / "tasks.parquet", args.rows)
        small = write_tasks(directory / "tasks_10.parquet", 10)
        figures: dict[str, dict[str, list[float]]] = {
            name: {"rate": [], "cpu": [], "start": []} for name in trees
        }
        with running_simulator(fast=True) as sim:
            for _ in range(args.repeat):
                for name, tree in trees.items():
                    for data, key in ((big, "big"), (small, "small")):
                        for path in directory.glob(f"{key}.sqlite*"):
                            path.unlink()
                        job = job_file(
                            directory, data=data, base_url=sim.base_url, name=f"{key}.toml"
                        )
                        cmd = [sys.executable, "-c", LAUNCH, tree, "run", str(job), "--force"]
                        m = measure([*cmd, "-q"])
                        if key == "big":
                            figures[name]["rate"].append(args.rows / m.wall_s)
                            figures[name]["cpu"].append(m.cpu_s / args.rows * 1000)
                        else:
                            figures[name]["start"].append(m.wall_s)
    lines = [
        f"`{command_line()}`",
        "",
        f"{args.rows:,} rows as in section 1 (CLI, simulator `--fast`, concurrency 64, fresh"
        f" store), and a 10-row run; median of {args.repeat} interleaved repetitions.",
        "",
        "| batchroute | rows/s | CPU ms per row | 10-row run (s) |",
        "|---|---:|---:|---:|",
    ]
    for name, f in figures.items():
        lines.append(
            f"| {name} | {median(f['rate']):,.0f} | {median(f['cpu']):.3f} |"
            f" {median(f['start']):.2f} |"
        )
    if args.before == [ISSUE_6_BASE]:
        key, title = "before_after", "Before and after the performance work"
    else:
        names = ", ".join(f"`{c}`" for c in args.before)
        key, title = f"before_after_{'_'.join(args.before)}", f"{names} against now"
    write_section(key, title, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
