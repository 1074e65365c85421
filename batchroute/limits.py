"""Per-model rate limits: requests and tokens per minute (leaky buckets) and concurrent calls."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from batchroute.bucket import LeakyBucket
from batchroute.job import Job

# A bucket holds this many seconds' worth of its rate: after a pause, at most that much goes
# out in one burst (a bucket of a whole minute would send a minute's worth at once).
BURST_SECONDS = 1.0


class ModelLimits:
    """The limits of one model. Build inside the running event loop."""

    def __init__(self, *, rpm: int | None, tpm: int | None, max_concurrency: int | None) -> None:
        self.requests = _bucket(rpm)
        self.tokens = _bucket(tpm)
        self.slots = anyio.CapacityLimiter(max_concurrency) if max_concurrency else None

    @asynccontextmanager
    async def call(self, estimate_tokens: int) -> AsyncIterator[TokenReservation]:
        """Hold a concurrency slot and one request's capacity for the duration of a call."""
        if self.slots is not None:
            await self.slots.acquire()
        try:
            if self.requests is not None:
                await self.requests.acquire()
            reservation = TokenReservation(self.tokens, estimate_tokens)
            await reservation.acquire()
            yield reservation
        finally:
            if self.slots is not None:
                self.slots.release()


class TokenReservation:
    """Tokens held for one call; `settle` with the usage the response reported."""

    def __init__(self, bucket: LeakyBucket | None, estimate: int) -> None:
        self._bucket = bucket
        self._estimate = estimate
        # A request larger than the bucket could never be admitted; it reserves a full bucket
        # and `settle` books the rest, so later calls wait until the real spend has leaked out.
        self._reserved = 0.0 if bucket is None else float(min(estimate, bucket.capacity))

    async def acquire(self) -> None:
        if self._bucket is not None:
            await self._bucket.acquire(self._reserved)

    def settle(self, actual_tokens: int | None) -> None:
        # Without a usage report (an error), book the whole estimate, not only the part that
        # fitted the bucket: the provider may have counted it.
        if self._bucket is None:
            return
        booked = self._estimate if actual_tokens is None else actual_tokens
        self._bucket.settle(self._reserved, booked)
        self._reserved = float(booked)


def _bucket(per_minute: int | None) -> LeakyBucket | None:
    """A bucket of one burst's worth, started full but for one unit.

    A bucket started empty would let a fresh run send a whole bucket at once and then keep
    pace: its first minute would hold the limit plus the burst, which a provider counting a
    sliding minute answers with 429s. Started full (but for one unit, so the first call goes
    at once), no sliding minute ever holds more than the limit; a burst only spends what a
    pause saved up.
    """
    if per_minute is None:
        return None
    per_second = per_minute / 60.0
    capacity = max(1.0, math.floor(per_second * BURST_SECONDS))
    return LeakyBucket(capacity, per_second=per_second, level=capacity - 1.0)


class Limits:
    """The limits of every model of a job, made on first use inside the event loop."""

    def __init__(self, job: Job) -> None:
        self._job = job
        self._by_model: dict[str, ModelLimits] = {}

    def __getitem__(self, model: str) -> ModelLimits:
        limits = self._by_model.get(model)
        if limits is None:
            config = self._job.model(model)
            limits = ModelLimits(
                rpm=config.rpm, tpm=config.tpm, max_concurrency=config.max_concurrency
            )
            self._by_model[model] = limits
        return limits
