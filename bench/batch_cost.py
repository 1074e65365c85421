"""Benchmark: the demo cascade with its cheap tier in batch mode against the online cascade.

Run: .venv/bin/python bench/batch_cost.py [--rows 3000]

Both jobs are jobs/demo.toml (3,000 support tickets, gpt-4o-mini then opus when the JSON
check fails) on the built-in simulator, through the CLI; the batch job sets
`mode = "batch"` on gpt-4o-mini and raises `run.concurrency` to the row count, so the cheap
tier is one batch file. Targets (issue 13): the same answers row for row, and the batch
tier's share of the cost at most 0.55x of the online one's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from common import MODEL, ROOT, command_line, verdict, write_section

from batchroute import read_calls, read_results

COMPARED = ["ticket_id", "status", "answer", "model", "escalated", "tiers_tried"]


def _job(directory: Path, *, name: str, batch: int, rows: int) -> Path:
    """`batch`: how many tiers, from the cheap one, run in batch mode."""
    text = (ROOT / "jobs/demo.toml").read_text(encoding="utf-8")
    text = text.replace('"../data/demo_tickets.parquet"', f'"{directory / "tickets.parquet"}"')
    text = text.replace('"../out/demo.cascade.parquet"', f'"{directory / name}.parquet"')
    prices = ["{ input = 0.15, output = 0.60 }", "{ input = 5.0, output = 25.0 }"][:batch]
    for price in prices:
        text = text.replace(f"usd_per_mtok = {price}", f'usd_per_mtok = {price}\nmode = "batch"')
    if batch:
        text = text.replace("concurrency = 128", f"concurrency = {rows}")
    path = directory / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _run(job: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "batchroute", "run", str(job), "-q", "--no-cache"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"{job.name}: exit {done.returncode}: {done.stderr}")
    return time.perf_counter() - started, done.stdout.splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        tickets = pl.read_parquet(ROOT / "data/demo_tickets.parquet").head(args.rows)
        tickets.write_parquet(directory / "tickets.parquet")
        figures = {}
        for name, batch in (("online", 0), ("batch", 1), ("both", 2)):
            job = _job(directory, name=name, batch=batch, rows=args.rows)
            seconds, line = _run(job)
            results = read_results(directory / f"{name}.parquet")
            calls = read_calls(directory / f"{name}.parquet")
            cheap = calls.filter(pl.col("model") == MODEL)["charge_usd"].sum()
            figures[name] = (results, results["cost_usd"].sum(), cheap, seconds, line)
    online, batch, both = figures["online"], figures["batch"], figures["both"]
    both_same = both[0].select(COMPARED).equals(online[0].select(COMPARED))
    same = batch[0].select(COMPARED).equals(online[0].select(COMPARED))
    share = batch[2] / online[2]
    total = batch[1] / online[1]
    escalated = int(online[0]["escalated"].sum())
    body = f"""
`{command_line()}`: jobs/demo.toml over {args.rows:,} tickets on the simulator (batch
processing time 2 s, price factor 0.5), online vs gpt-4o-mini in `mode = "batch"`.

| run | total cost | gpt-4o-mini tier | wall time |
|---|---|---|---|
| online cascade | ${online[1]:.4f} | ${online[2]:.4f} | {online[3]:.1f} s |
| batch cheap tier | ${batch[1]:.4f} | ${batch[2]:.4f} | {batch[3]:.1f} s |
| both tiers batch | ${both[1]:.4f} | ${both[2]:.4f} | {both[3]:.1f} s |

The cheap tier's cost: {share:.3f}x of online (target at most 0.55x: {verdict(share <= 0.55)});
the whole run's: {total:.3f}x, since the {escalated:,} escalated rows still pay opus online.
With opus in batch mode too (a second batch of only the escalated rows), the whole run
costs {both[1] / online[1]:.3f}x. Answers row for row equal to the online cascade's: cheap
tier batch {verdict(same)}, both tiers batch {verdict(both_same)}.
Summary line of the batch run: `{batch[4]}`
"""
    write_section("batch_cost", "Batch API tier: cost of the demo cascade", body)


if __name__ == "__main__":
    main()
