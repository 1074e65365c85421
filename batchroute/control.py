"""Run-wide state every row can see: whether the run must stop, and the provider's balance."""

from __future__ import annotations

import anyio

from batchroute.errors import RunStopped


class RunControl:
    """Shared by all rows of one run; lives only inside that run's event loop."""

    def __init__(self) -> None:
        self.stop_error: RunStopped | None = None
        self.balances_usd: dict[str, float] = {}  # the last balance header, by endpoint
        self.stopping = anyio.Event()  # set by `stop`: waits between attempts end at once

    @property
    def stopped(self) -> bool:
        return self.stop_error is not None

    def stop(self, error: RunStopped) -> None:
        """Stop starting calls; the first reason given is the one reported."""
        if self.stop_error is None:
            self.stop_error = error
            self.stopping.set()

    def note_balance(self, endpoint: str, balance_usd: float | None) -> None:
        if balance_usd is not None:
            self.balances_usd[endpoint] = balance_usd
