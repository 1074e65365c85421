"""Ctrl-C and SIGTERM: the first stops the run gently, a second stops it at once."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import anyio

from batchroute.control import RunControl
from batchroute.errors import Interrupted


async def watch_signals(
    control: RunControl,
    *,
    grace_s: float,
    cancel_in_flight: Callable[[], None],
    cancel_all: Callable[[], None],
) -> None:
    """Run until cancelled. On the first signal no new call starts and the calls in flight get
    `grace_s` to finish (their rows are then written as usual); when the grace ends they are
    cancelled. A second signal cancels everything: only the store keeps what finished."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            count = 0
            async for signum in signals:
                count += 1
                if count == 1:
                    name = signal.Signals(signum).name
                    control.stop(Interrupted(f"interrupted by {name}"))
                    print(
                        f"\nbatchroute: {name}: no new calls; waiting up to {grace_s:g}s for"
                        " calls in flight (again to stop at once)",
                        file=sys.stderr,
                    )
                    tg.start_soon(_after, grace_s, cancel_in_flight)
                else:
                    cancel_all()
                    return


async def _after(delay_s: float, action: Callable[[], None]) -> None:
    await anyio.sleep(delay_s)
    action()
