"""A leaky bucket that admits callers in FIFO order, waking each when its amount fits.

The bucket holds up to `capacity` units and leaks `per_second` of them; `acquire(amount)`
adds `amount` once it fits. Waiters queue in order: a later, smaller request never overtakes
an earlier one (no starvation of large token reservations), and nothing polls: one timer is
set for the moment the head of the queue fits. `settle` moves the level by the difference
between what a caller reserved and what it used, and wakes whoever now fits.
"""

from __future__ import annotations

import asyncio
from collections import deque

# Float leaks rarely land exactly on the capacity; a request this close to fitting fits.
_EPSILON = 1e-9


class LeakyBucket:
    """Capacity and leak rate; create inside the running event loop."""

    def __init__(self, capacity: float, *, per_second: float, level: float = 0.0) -> None:
        if capacity <= 0 or per_second <= 0:
            raise ValueError("a bucket needs a positive capacity and leak rate")
        self.capacity = capacity
        self.per_second = per_second
        self._loop = asyncio.get_running_loop()
        self._level = min(max(0.0, level), capacity)
        self._checked_at = self._loop.time()
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def level(self) -> float:
        """The capacity in use now."""
        self._leak()
        return self._level

    async def acquire(self, amount: float = 1.0) -> None:
        """Wait until `amount` fits behind every earlier waiter, then take it."""
        if amount > self.capacity:
            raise ValueError(f"{amount} can never fit a bucket of {self.capacity}")
        self._leak()
        if not self._waiters and self._fits(amount):
            self._level += amount
            return
        future: asyncio.Future[None] = self._loop.create_future()
        entry = (amount, future)
        self._waiters.append(entry)
        self._arm()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted, then cancelled before it could run: give the capacity back.
                self._level = max(0.0, self._level - amount)
            elif entry in self._waiters:
                self._waiters.remove(entry)
            self._wake()
            raise

    def settle(self, reserved: float, actual: float) -> None:
        """A caller that took `reserved` really used `actual`: book the difference."""
        self._leak()
        self._level = max(0.0, self._level + (actual - reserved))
        self._wake()

    def retune(self, capacity: float, *, per_second: float) -> None:
        """Change the capacity and leak rate from now on (a limit learned or revised)."""
        if capacity <= 0 or per_second <= 0:
            raise ValueError("a bucket needs a positive capacity and leak rate")
        self._leak()
        self.capacity, self.per_second = capacity, per_second
        self._wake()

    def set_level(self, level: float) -> None:
        """Set the capacity in use, as a server's count says it is; may exceed the capacity
        (more in flight than the server has room for), so the next caller waits longer."""
        self._leak()
        self._level = max(0.0, level)
        self._wake()

    def _fits(self, amount: float) -> bool:
        # A waiter queued before `retune` shrank the bucket below its amount fits when empty.
        return self._level + min(amount, self.capacity) <= self.capacity + _EPSILON

    def _leak(self) -> None:
        now = self._loop.time()
        self._level = max(0.0, self._level - (now - self._checked_at) * self.per_second)
        self._checked_at = now

    def _wake(self) -> None:
        """Admit waiters from the head while they fit, then set the timer for the next."""
        self._leak()
        while self._waiters:
            amount, future = self._waiters[0]
            if future.done():  # cancelled while queued
                self._waiters.popleft()
                continue
            if not self._fits(amount):
                break
            self._waiters.popleft()
            self._level += amount
            future.set_result(None)
        self._arm()

    def _arm(self) -> None:
        """One timer, for the moment the head of the queue fits."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiters:
            amount = self._waiters[0][0]
            excess = self._level + min(amount, self.capacity) - self.capacity
            delay = max(0.0, excess / self.per_second)
            self._timer = self._loop.call_later(delay, self._wake)
