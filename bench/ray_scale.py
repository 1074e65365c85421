"""Benchmark: the Ray engine on this machine, next to the local engine, and the lease service.

Run (as root, it re-runs itself in a loopback-only network namespace; Ray binds every
interface otherwise): .venv/bin/python bench/ray_scale.py [--rows 4000] [--check-rows 200]

- Rows/s on the fast simulator (no latency): the local engine, Ray with 1 and 2 workers.
  "calls/s" is measured over the calls' own span (first start to last start, from the calls
  table); "wall" includes Ray's start-up (a local cluster: about 15-20 s here).
- A `python` check that burns 50 ms of CPU per row: the local engine (its checks share one
  process, so the GIL serialises them) against Ray with 2 workers (two processes).
- The lease service: lease calls per second one LeaseBook actor serves to 4 concurrent
  callers, and the calls per second that covers at a chunk of 50 (30,000 rpm per model is
  500 calls/s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from common import MODEL, batchroute, command_line, job_file, sim_table, write_section, write_tasks

from batchroute.sim import running_simulator

BURN = """
import time


def check(row, answer):
    end = time.thread_time() + 0.05  # 50 ms of this thread's CPU
    while time.thread_time() < end:
        pass
    return True
"""


def _in_namespace() -> None:
    """Re-run this script under `unshare --net` with only loopback, once."""
    if os.environ.get("BR_BENCH_NETNS") or shutil.which("unshare") is None:
        return
    env = {**os.environ, "BR_BENCH_NETNS": "1"}
    command = [sys.executable, *sys.argv]
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command],
        env=env,
        check=False,
    )
    raise SystemExit(done.returncode)


def _rate(directory: Path, stem: str) -> float:
    calls = pl.read_parquet(directory / "out" / f"{stem}.calls.parquet")
    span = (calls["started_at"].max() - calls["started_at"].min()).total_seconds()  # type: ignore[operator]
    return (calls.height - 1) / span if span > 0 else float("nan")


def throughput(directory: Path, rows: int) -> list[tuple[str, float, float]]:
    data = write_tasks(directory / "tasks.parquet", rows)
    table = sim_table(directory)
    out = []
    with running_simulator(models=table) as sim:
        for label, extra in (
            ("local", ""),
            ("ray, 1 worker", 'engine = "ray"\nworkers = 1\nworker_cpus = 0.25\n'),
            ("ray, 2 workers", 'engine = "ray"\nworkers = 2\nworker_cpus = 0.25\n'),
        ):
            stem = label.replace(", ", "_").replace(" ", "")
            job = job_file(
                directory,
                data=data,
                base_url=sim.base_url,
                name=f"{stem}.toml",
                models=f'[models."{MODEL}"]\n',
                concurrency=64,
            )
            text = job.read_text().replace("concurrency = 64\n", f"concurrency = 64\n{extra}")
            text = text.replace('id = "id"', 'id = "id"\nbatch_rows = 500')
            job.write_text(text)
            measured = batchroute(job, "--no-cache")
            out.append((label, measured.wall_s, _rate(directory, stem)))
    return out


def burn(directory: Path, rows: int) -> list[tuple[str, float, float]]:
    (directory / "burn.py").write_text(BURN)
    data = write_tasks(directory / "burn_tasks.parquet", rows)
    table = sim_table(directory, name="burn_sim.toml")
    out = []
    with running_simulator(models=table) as sim:
        for label, extra in (
            ("local", ""),
            ("ray, 2 workers", 'engine = "ray"\nworkers = 2\nworker_cpus = 0.5\n'),
        ):
            stem = "burn_" + label.replace(", ", "_").replace(" ", "")
            job = job_file(
                directory,
                data=data,
                base_url=sim.base_url,
                name=f"{stem}.toml",
                extra='[check]\ntype = "python"\nfunction = "burn:check"\n',
                concurrency=16,
            )
            text = job.read_text().replace("concurrency = 16\n", f"concurrency = 16\n{extra}")
            text = text.replace('id = "id"', 'id = "id"\nbatch_rows = 25')
            job.write_text(text)
            measured = batchroute(job, "--no-cache")
            out.append((label, measured.wall_s, _rate(directory, stem)))
    return out


def leases(seconds: float = 5.0, callers: int = 4) -> float:
    import ray

    from batchroute.engines.leases import LeaseBook

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        book = ray.remote(num_cpus=0)(LeaseBook).remote({"m": (10**9, None)}, None)
        ray.get(book.lease.remote("m", requests=1, tokens=0))
        count = 0

        async def caller(deadline: float) -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                await book.lease.remote("m", requests=50, tokens=0)
                count += 1

        async def main() -> float:
            start = time.perf_counter()
            await asyncio.gather(*(caller(start + seconds) for _ in range(callers)))
            return time.perf_counter() - start

        elapsed = asyncio.run(main())
        return count / elapsed
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--check-rows", type=int, default=200)
    args = parser.parse_args()
    _in_namespace()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        fast = throughput(directory, args.rows)
        burned = burn(directory, args.check_rows)
    lease_rate = leases()
    lines = [
        f"`{command_line()}` on {os.cpu_count()} cores, in a loopback-only network namespace.",
        "",
        f"Fast simulator (no latency), {args.rows:,} rows, concurrency 64 per worker:",
        "",
        "| engine | wall (s, with start-up) | calls/s while calls flow |",
        "| --- | ---: | ---: |",
        *(f"| {label} | {wall:.1f} | {rate:,.0f} |" for label, wall, rate in fast),
        "",
        f"A `python` check burning 50 ms of CPU per row, {args.check_rows} rows:",
        "",
        "| engine | wall (s, with start-up) | rows/s while calls flow |",
        "| --- | ---: | ---: |",
        *(f"| {label} | {wall:.1f} | {rate:,.1f} |" for label, wall, rate in burned),
        "",
        f"Lease service: one LeaseBook actor served {lease_rate:,.0f} lease calls/s to 4"
        f" concurrent callers; at 50 calls a lease that covers {lease_rate * 50:,.0f} calls/s.",
    ]
    write_section(
        "ray_scale", "Ray engine: throughput, CPU-bound checks, lease service", "\n".join(lines)
    )


if __name__ == "__main__":
    main()
