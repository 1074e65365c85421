"""Identical deterministic requests of one run: one call, its answer shared by every row asking.

Two rows whose requests are the same (endpoint, model, messages, parameters) would pay twice
for one answer when the answer cannot differ: temperature 0 or unset, and no `n`. The first
row to ask makes the call; the others wait for it and take its outcome, marked as shared.
Only an answer is shared: when the first call fails, each waiting row tries on its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Generic, TypeVar

import anyio

from batchroute.records import CallRecord

__all__ = ["SharedCalls", "deterministic", "shared_records"]

T = TypeVar("T")

# Finished outcomes kept for later identical rows; beyond this the oldest are forgotten, so a
# run of millions of distinct rows does not keep every answer in memory (a later duplicate
# then finds the answer in the store, when the store is on).
KEEP_FINISHED = 50_000


def deterministic(params: Mapping[str, Any]) -> bool:
    """Whether two identical requests with `params` must get the same answer."""
    temperature = params.get("temperature")
    return (temperature is None or temperature == 0) and params.get("n") is None


class _Pending(Generic[T]):
    """One call in flight or done: its outcome once known, None when it must not be shared.

    Most calls have no twin: the event a twin waits on is made only when one comes.
    """

    __slots__ = ("_done", "finished", "value")

    def __init__(self) -> None:
        self._done: anyio.Event | None = None
        self.finished = False
        self.value: T | None = None

    async def wait(self) -> None:
        if not self.finished:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()

    def finish(self) -> None:
        self.finished = True
        if self._done is not None:
            self._done.set()


class SharedCalls(Generic[T]):
    """The calls of one run by request key, each made once and shared.

    Used inline by its caller, not through a wrapper coroutine: every coroutine between a
    row's task and its HTTP request is resumed on each of the request's waits, so a layer
    here would cost every call, shared or not.

        while (pending := shared.follow(key)) is not None:   # someone else is making it
            if (value := await shared.outcome(pending)) is not None:
                return value                                  # theirs, shared
        try: value = await make()                             # ours: we lead
        finally: shared.finish(key, value if shareable else None)
    """

    def __init__(self) -> None:
        self._calls: dict[bytes, _Pending[T]] = {}
        self._finished: deque[bytes] = deque()
        self.shared = 0  # outcomes handed to a row that did not make the call

    def follow(self, key: bytes) -> _Pending[T] | None:
        """The call in flight (or done) for `key` to wait for; None: there is none, and the
        caller now leads it (it must `finish` it, also when cancelled)."""
        pending = self._calls.get(key)
        if pending is None:
            self._calls[key] = _Pending()
        return pending

    async def outcome(self, pending: _Pending[T]) -> T | None:
        """The led call's outcome once it ends; None when it was not shareable (a failure):
        then `follow` again, and perhaps lead."""
        await pending.wait()
        if pending.value is not None:
            self.shared += 1
        return pending.value

    def finish(self, key: bytes, value: T | None) -> None:
        """The led call for `key` ended with `value`, shareable, or None (failed, cancelled):
        waiters must never wait for a call nobody is making."""
        pending = self._calls[key]
        if value is not None:
            pending.value = value
            self._finished.append(key)
            if len(self._finished) > KEEP_FINISHED:
                self._calls.pop(self._finished.popleft(), None)
        else:
            del self._calls[key]
        pending.finish()


def shared_records(
    records: list[CallRecord], *, row_id: object, tier: int, purpose: str, shadow: bool
) -> list[CallRecord]:
    """Another row's answer, as this row records it: the answering call, marked `deduped`,
    its charge moved to `shared_charge_usd` so that it is counted once."""
    return [
        replace(
            record,
            row_id=row_id,
            tier=tier,
            purpose=purpose,
            shadow=shadow,
            cached=False,
            deduped=True,
            charge_usd=None,
            shared_charge_usd=record.charge_usd,
        )
        for record in records[-1:]
    ]
