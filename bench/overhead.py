"""Benchmark 1, the overhead ceiling: batchroute end to end against the loops it must beat.

Run: .venv/bin/python bench/overhead.py [--rows 20000] [--baseline-rows 5000] [--repeat 3]

The simulator runs in its own process in its constant-answer mode (`--fast`: no latency, no
limits, still usage and charge headers), so what is measured is the client. Contenders, each
in its own process, repetitions interleaved so that a busy machine slows all alike:

- batchroute: the real CLI, fixed strategy, Parquet in and out, call store on (fresh), the
  default aiohttp transport; rows per second from the command's wall time (start-up
  included) and CPU seconds of the whole process (threads included);
- batchroute with `endpoint.transport = "openai"`, for the record;
- raw HTTP: aiohttp posting the same JSON (the transport's ceiling);
- the bare openai SDK loop, default transport and with `DefaultAioHttpClient`;
- LiteLLM's `Router.acompletion` (installed by the `bench` extra).

All keep 64 requests in flight. The SDK and LiteLLM loops (and batchroute over the SDK) run
`--baseline-rows` requests: their rate is steady after the first few hundred, and 20,000
would take minutes a repetition. Baseline CPU is the loop's alone (no imports).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
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

CONCURRENCY = 64
BASELINES = {
    "raw-http": "raw HTTP loop (aiohttp, same JSON)",
    "sdk": "bare `AsyncOpenAI` loop, default transport",
    "sdk-aiohttp": "bare `AsyncOpenAI` loop, `DefaultAioHttpClient`",
    "litellm": "LiteLLM `Router.acompletion` loop",
}


class Sample:
    """Repetitions of one contender: rows per second and CPU ms per row."""

    def __init__(self, label: str, rows: int) -> None:
        self.label, self.rows = label, rows
        self.rates: list[float] = []
        self.cpu_ms: list[float] = []
        self.in_run: list[float] = []

    def add(self, *, seconds: float, cpu_s: float, in_run_s: float | None = None) -> None:
        self.rates.append(self.rows / seconds)
        self.cpu_ms.append(cpu_s / self.rows * 1000)
        if in_run_s is not None:
            self.in_run.append(self.rows / in_run_s)

    @property
    def rate(self) -> float:
        return median(self.rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--baseline-rows", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    has_litellm = importlib.util.find_spec("litellm") is not None
    kinds = [k for k in BASELINES if k != "litellm" or has_litellm]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        big = write_tasks(directory / "tasks.parquet", args.rows)
        small = write_tasks(directory / "tasks_small.parquet", args.baseline_rows)
        samples = {
            "batchroute": Sample("**batchroute run** (CLI, aiohttp transport)", args.rows),
            "batchroute-sdk": Sample('batchroute run, `transport = "openai"`', args.baseline_rows),
        }
        for kind in kinds:
            rows = args.rows if kind == "raw-http" else args.baseline_rows
            samples[kind] = Sample(BASELINES[kind], rows)
        with running_simulator(fast=True) as sim:
            runs: dict[str, Callable[[], None]] = {}

            def run_batchroute(key: str, data: Path, transport: str) -> None:
                for path in directory.glob(f"{key}.sqlite*"):  # a fresh store every time
                    path.unlink()
                job = job_file(
                    directory,
                    data=data,
                    base_url=sim.base_url,
                    concurrency=CONCURRENCY,
                    transport=transport,
                    name=f"{key}.toml",
                )
                m = batchroute(job)
                summary = read_metadata(directory / "out" / f"{key}.parquet")["summary"]
                assert summary["ok"] == samples[key].rows, summary
                samples[key].add(seconds=m.wall_s, cpu_s=m.cpu_s, in_run_s=summary["elapsed_s"])

            def run_baseline(kind: str) -> None:
                data = big if kind == "raw-http" else small
                script = Path(__file__).with_name("baselines.py")
                cmd = [sys.executable, str(script), kind, "--base-url", sim.base_url]
                m = measure([*cmd, "--data", str(data), "--concurrency", str(CONCURRENCY)])
                out = json.loads(m.stdout)
                assert out["failed"] == 0, out
                samples[kind].add(seconds=out["elapsed_s"], cpu_s=out["cpu_s"])

            runs["batchroute"] = lambda: run_batchroute("batchroute", big, "aiohttp")
            runs["batchroute-sdk"] = lambda: run_batchroute("batchroute-sdk", small, "openai")
            for kind in kinds:
                runs[kind] = lambda kind=kind: run_baseline(kind)
            run_baseline("raw-http")  # warm-up: the simulator's first requests are slower
            for repetition in range(args.repeat):
                for key, run in runs.items():
                    print(f"repetition {repetition + 1}: {key}", file=sys.stderr)
                    run()
        shutil.rmtree(directory / "out", ignore_errors=True)
    br = samples["batchroute"].rate
    lines = [
        f"`{command_line()}`",
        "",
        f"Simulator in `--fast` mode in its own process; concurrency {CONCURRENCY}; median of"
        f" {args.repeat} interleaved repetitions. batchroute: {args.rows:,} rows through the"
        " CLI (start-up, Parquet in and out, a fresh call store included); its CPU is the whole"
        " process'. Baselines: their loop alone.",
        "",
        "| contender | requests | rows/s | CPU ms per row | batchroute / this |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, sample in samples.items():
        ratio = "" if key == "batchroute" else f"{br / sample.rate:.2f}x"
        in_run = f" ({median(sample.in_run):,.0f} in-run)" if sample.in_run else ""
        lines.append(
            f"| {sample.label} | {sample.rows:,} | {sample.rate:,.0f}{in_run} |"
            f" {median(sample.cpu_ms):.3f} | {ratio} |"
        )
    sdk, raw = samples["sdk"].rate, samples["raw-http"].rate
    lines += [
        "",
        f"- batchroute / bare SDK loop: {br / sdk:.2f}x (target at least 3x):"
        f" {verdict(br / sdk >= 3)}",
        f"- batchroute / raw HTTP loop: {br / raw:.2f}x (target at least 0.5x):"
        f" {verdict(br / raw >= 0.5)}",
    ]
    if has_litellm:
        litellm = samples["litellm"].rate
        lines.append(
            f"- batchroute / LiteLLM loop: {br / litellm:.2f}x (target above 1x):"
            f" {verdict(br > litellm)}"
        )
    else:
        lines.append("- LiteLLM is not installed (`pip install -e '.[bench]'`): not measured")
    lines.append("- rows/s in parentheses: the run's own elapsed time, without start-up")
    write_section("overhead", "1. Overhead ceiling", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
