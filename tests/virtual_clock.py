"""A virtual-clock asyncio event loop: timers fire at once, in order, and no test really sleeps.

`loop.time()` returns a counter that starts at 0. When the loop has nothing ready to run it asks
its selector to wait until the next timer; our selector polls real I/O without blocking and,
when there is none, moves the counter forward by exactly that wait instead of sleeping. So
`asyncio.sleep`, `anyio.sleep`, `loop.call_at` and everything built on them (aiolimiter's
leaky bucket, anyio's CapacityLimiter) run in virtual time, deterministically.

What it cannot do: wait for a worker thread (`anyio.to_thread`) or a real socket. A loop whose
tasks all wait with no timer set is a deadlock here; the selector raises instead of hanging.

    result, elapsed = run_virtual(some_async_function, arg)
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


class _AdvancingSelector(selectors.DefaultSelector):
    """Polls real I/O without blocking; a wait for a timer advances the loop's virtual clock."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if timeout is None and not events:
            raise RuntimeError(
                "virtual clock: every task is waiting and no timer is set (a deadlock)"
            )
        # Every pass of the loop moves the clock, as a real clock does: at least one tick,
        # and to the next timer when idle. Without the tick, code that re-arms a timer for
        # "now plus a rounding error" (aiolimiter's waker can) would spin at a frozen instant.
        self._loop.advance(0.0 if events or timeout is None else timeout)
        return events


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A SelectorEventLoop whose `time()` is virtual and only moves when the loop would idle."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(selector=_AdvancingSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`, and at least by one tick (the smallest step a
        float can take from the current time, about 1e-15 s at 10 s). The loop calls this."""
        later = self._virtual_now + max(0.0, seconds)
        self._virtual_now = max(later, math.nextafter(self._virtual_now, math.inf))


def now() -> float:
    """Virtual seconds since the running loop started."""
    return asyncio.get_running_loop().time()


def run_virtual(fn: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> tuple[_T, float]:
    """Run `fn(*args, **kwargs)` on a fresh virtual-clock loop: its result and the virtual
    seconds it took (exact up to the ticks, so compare with `pytest.approx(..., abs=1e-6)`)."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        loop = runner.get_loop()
        started = loop.time()
        result = runner.run(_as_coroutine(fn, *args, **kwargs))
        return result, loop.time() - started


async def _as_coroutine(fn: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> _T:
    return await fn(*args, **kwargs)
