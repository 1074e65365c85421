"""How many chat completions per second the simulator serves, in --fast and in normal mode.

Run: .venv/bin/python bench/sim_throughput.py [--requests 5000] [--concurrency 64]

Normal mode uses the default model table with every latency set to zero, so the figure is the
cost of the simulator's own work (parsing, answers, rate windows, ledger), not of sleeping.
The client shares the machine, so the figures are a floor of what the server alone can do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from batchroute.sim import load_sim_config, running_simulator


def zero_latency_table(directory: Path) -> Path:
    """The default model table with no latency, as a TOML file in `directory`."""
    config = load_sim_config(None)
    lines = [f"balance_usd = {config.balance_usd!r}"]
    for name, spec in config.models.items():
        prices = spec.usd_per_mtok
        lines += [
            f"[models.{json.dumps(name)}]",
            f"usd_per_mtok = {{ input = {prices.input!r}, output = {prices.output!r} }}",
            "latency_ms = { mean = 0, jitter = 0 }",
            f"skill = {spec.skill!r}",
        ]
    path = directory / "zero_latency.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def fire(base_url: str, *, requests: int, concurrency: int) -> float:
    """Send `requests` completions with `concurrency` in flight; returns the elapsed seconds."""
    url = base_url + "/chat/completions"
    bodies = [
        json.dumps(
            {
                "model": "openai/gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Answer with one label."},
                    {"role": "user", "content": f"Classify ticket #{i}: my parcel is late."},
                ],
                "max_tokens": 16,
            }
        ).encode()
        for i in range(requests)
    ]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer x"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"status {response.status}")

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
        return time.perf_counter() - started


def measure(
    label: str, *, requests: int, concurrency: int, fast: bool = False, models: Path | None = None
) -> None:
    with running_simulator(fast=fast, models=models) as sim:
        asyncio.run(fire(sim.base_url, requests=200, concurrency=concurrency))  # warm up
        sim.reset()
        elapsed = asyncio.run(fire(sim.base_url, requests=requests, concurrency=concurrency))
        served = sim.ledger()["models"]["openai/gpt-4o-mini"]["ok"]
    assert served == requests, f"ledger says {served} served, expected {requests}"
    print(f"{label:<28} {requests / elapsed:8.0f} requests/s  ({requests} in {elapsed:.2f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"{args.requests} requests, concurrency {args.concurrency}, aiohttp client")
    n, c = args.requests, args.concurrency
    measure("fast (--fast)", requests=n, concurrency=c, fast=True)
    with tempfile.TemporaryDirectory() as tmp:
        table = zero_latency_table(Path(tmp))
        measure("normal, zero latency", requests=n, concurrency=c, models=table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
