"""What one more coroutine between a row's task and its HTTP request costs.

Run: .venv/bin/python bench/await_depth.py

Every coroutine in the chain is resumed on each wait of the innermost one (a request waits
about five times: connection, write, headers, body, release). 20,000 tasks, each awaiting a
chain of N coroutines whose innermost waits five times on a future; CPU per task against N.
"""

from __future__ import annotations

import asyncio
import sys
import time

from common import command_line, write_section

TASKS, WAITS = 20_000, 5


async def _leaf(loop: asyncio.AbstractEventLoop) -> None:
    for _ in range(WAITS):
        future = loop.create_future()
        loop.call_soon(future.set_result, None)
        await future


async def _chain(depth: int, loop: asyncio.AbstractEventLoop) -> None:
    if depth == 0:
        return await _leaf(loop)
    return await _chain(depth - 1, loop)


async def _cpu_per_task(depth: int) -> float:
    loop = asyncio.get_running_loop()
    started = time.process_time()
    await asyncio.gather(*(_chain(depth, loop) for _ in range(TASKS)))
    return (time.process_time() - started) / TASKS * 1e6


def main() -> int:
    depths = (5, 15, 25)
    runs = {d: sorted(asyncio.run(_cpu_per_task(d)) for _ in range(3))[1] for d in depths}
    per_layer = (runs[25] - runs[5]) / 20
    lines = [
        f"`{command_line()}`",
        "",
        f"{TASKS:,} tasks, each a chain of N coroutines whose innermost waits {WAITS} times on"
        " a future; CPU per task, median of 3.",
        "",
        "| coroutines in the chain | CPU per task (us) |",
        "|---:|---:|",
        *(f"| {d} | {runs[d]:.1f} |" for d in depths),
        "",
        f"One more coroutine: {per_layer:.1f} us per task, {per_layer / WAITS:.2f} us per"
        " resume of the chain.",
    ]
    write_section("await_depth", "One more coroutine on the await chain", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
