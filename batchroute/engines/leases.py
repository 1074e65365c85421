"""Limits and money held cluster-wide: one lease service, and the workers' leased views of it.

On the Ray engine every worker runs its own event loop, so per-model rpm/tpm and the budget
cannot live in each worker: four workers would send four times the rpm. One `LeaseBook`
(run as a Ray actor by `ray_engine.py`) holds the leaky buckets and the budget; a worker
leases capacity in small chunks (never more than its rows waiting now ask for, so no lease
sits unused and bunches up later) and spends it locally: the hot path makes no remote call
per request, only per chunk. The budget is leased in slices; the last slice is cut to what
is left, never over-granted, so the sum of every worker's allowance stays within it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from batchroute.budget import Budget
from batchroute.control import RunControl
from batchroute.errors import BudgetReached
from batchroute.job import Job, ModelConfig
from batchroute.limits import BURST_SECONDS, Limits, ModelLimits, Reservation

# A budget slice is this share of the budget (or the call's estimate, if larger): small
# enough that workers' unspent slices at the end are a sliver, large enough that a worker
# asks a few hundred times per run, not once per call.
BUDGET_SLICE = 0.01


class _Bucket:
    """A leaky bucket on the wall clock, as limits.py's but without waiting: it answers how
    much fits now and how long until one more unit would."""

    def __init__(self, per_minute: int) -> None:
        self.per_second = per_minute / 60.0
        self.capacity = max(1.0, math.floor(self.per_second * BURST_SECONDS))
        # Started full but for one unit, as limits.py explains: no sliding minute over. The
        # clock starts at the first lease, not when the book is made: the workers' start-up
        # (seconds) must not leak the bucket into a burst on top of the first minute's rate.
        self.level = self.capacity - 1.0
        self.checked_at: float | None = None

    def _leak(self) -> None:
        now = time.monotonic()
        if self.checked_at is None:
            self.checked_at = now
        self.level = max(0.0, self.level - (now - self.checked_at) * self.per_second)
        self.checked_at = now

    def room(self) -> float:
        self._leak()
        return self.capacity - self.level

    def take(self, amount: float) -> None:
        self.level += amount

    def book(self, amount: float) -> None:
        """Usage reported after the fact (tokens above or below the estimate)."""
        self._leak()
        self.level = max(0.0, self.level + amount)

    def wait_for(self, amount: float) -> float:
        return max(0.0, (self.level + amount - self.capacity) / self.per_second)


@dataclass(frozen=True, slots=True)
class Grant:
    requests: int
    tokens: float
    retry_in_s: float  # when nothing was granted: how long until something would be


class LeaseBook:
    """Every model's request and token buckets and the budget, for the whole cluster.

    Plain and synchronous: Ray runs it as an actor, whose calls are served one at a time.
    """

    def __init__(self, limits: dict[str, tuple[int | None, int | None]], budget_usd: float | None):
        self._requests = {m: _Bucket(rpm) for m, (rpm, _) in limits.items() if rpm is not None}
        self._tokens = {m: _Bucket(tpm) for m, (_, tpm) in limits.items() if tpm is not None}
        self._budget = budget_usd
        self.granted_usd = 0.0
        self.stop_message: str | None = None
        self.leases = 0

    def token_capacity(self, model: str) -> float | None:
        bucket = self._tokens.get(model)
        return None if bucket is None else bucket.capacity

    def lease(self, model: str, *, requests: int, tokens: float, booked: float = 0.0) -> Grant:
        """Up to `requests` calls and `tokens` tokens of `model`, as far as they fit now.
        `booked`: tokens the worker used beyond (or, negative, below) what it was granted."""
        self.leases += 1
        req, tok = self._requests.get(model), self._tokens.get(model)
        if tok is not None and booked:
            tok.book(booked)
        got_requests = requests
        if req is not None and requests > 0:
            got_requests = min(requests, int(req.room() + 1e-9))
        got_tokens = tokens
        if tok is not None and tokens > 0:
            got_tokens = min(tokens, max(0.0, tok.room()))
        wait = 0.0
        if req is not None and got_requests < requests:
            wait = max(wait, req.wait_for(1.0))
        if tok is not None and got_tokens < tokens:
            wait = max(wait, tok.wait_for(tokens - got_tokens))
        if req is not None:
            req.take(got_requests)
        if tok is not None:
            tok.take(got_tokens)
        return Grant(got_requests, got_tokens, wait)

    def lease_budget(self, usd: float) -> float:
        """Up to `usd` of the budget: never more than is left (0 once the run stopped)."""
        if self._budget is None:
            return usd
        if self.stop_message is not None:
            return 0.0
        granted = max(0.0, min(usd, self._budget - self.granted_usd))
        self.granted_usd += granted
        return granted

    def return_budget(self, usd: float) -> None:
        self.granted_usd = max(0.0, self.granted_usd - usd)

    def stop(self, message: str) -> None:
        """A worker stopped the run (budget, credentials): the first reason is kept."""
        if self.stop_message is None:
            self.stop_message = message

    def stopped(self) -> str | None:
        return self.stop_message

    def stats(self) -> dict[str, Any]:
        return {"leases": self.leases, "granted_usd": self.granted_usd}


# How a worker reaches the book: `await remote("lease", model, ...)`, a Ray actor call.
Remote = Callable[..., Awaitable[Any]]


class _Pool:
    """One model's leased requests and tokens inside a worker: rows take from it at no remote
    cost; when it runs dry, one row (the others queue behind an asyncio lock, in order) asks
    the book for what the rows waiting now need."""

    def __init__(self, model: str, *, remote: Remote, token_capacity: float | None) -> None:
        self._model = model
        self._remote = remote
        self._lock = asyncio.Lock()
        self.token_capacity = token_capacity
        self._requests = 0
        self._tokens = 0.0
        self._waiting = 0
        self._waiting_tokens = 0.0
        self.booked = 0.0  # tokens to report with the next lease

    async def take(self, tokens: float) -> None:
        self._waiting += 1
        self._waiting_tokens += tokens
        try:
            async with self._lock:
                while self._requests < 1 or self._tokens < tokens:
                    want_requests = max(0, self._waiting - self._requests)
                    want_tokens = 0.0
                    if self.token_capacity is not None:
                        want_tokens = max(0.0, self._waiting_tokens - self._tokens)
                        want_tokens = min(want_tokens, self.token_capacity)
                    booked, self.booked = self.booked, 0.0
                    grant: Grant = await self._remote(
                        "lease",
                        self._model,
                        requests=want_requests,
                        tokens=want_tokens,
                        booked=booked,
                    )
                    self._requests += grant.requests
                    self._tokens += grant.tokens if self.token_capacity is not None else tokens
                    if self._requests < 1 or self._tokens < tokens:
                        await asyncio.sleep(max(grant.retry_in_s, 0.001))
                self._requests -= 1
                self._tokens -= tokens
        finally:
            self._waiting -= 1
            self._waiting_tokens -= tokens


class _LeasedReservation(Reservation):
    """Tokens taken from a pool; `settle` books the difference for the next lease."""

    def __init__(self, pool: _Pool, estimate: int) -> None:
        super().__init__(seq=0)
        self._pool = pool
        self._estimate = estimate
        cap = pool.token_capacity
        self.reserved = float(estimate if cap is None else min(estimate, cap))

    async def acquire(self) -> None:
        await self._pool.take(self.reserved)

    def release(self) -> None:
        """The call was not sent: its tokens go back to the pool."""
        self.settle(0, 0)

    def settle(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        # Without a usage report (an error), book the whole estimate: the provider may have
        # counted it.
        if self._pool.token_capacity is None:
            return
        booked = (
            self._estimate if prompt_tokens is None else prompt_tokens + (completion_tokens or 0)
        )
        self._pool.booked += booked - self.reserved
        self.reserved = float(booked)


class _LeasedModelLimits(ModelLimits):
    """A model whose rpm/tpm the lease service holds: capacity comes from the pool. The
    cool-down after a 429 stays per worker; header learning is off, since the cluster's
    limits are the job's (a worker learning alone would pace to a share it cannot see)."""

    def __init__(self, pool: _Pool, *, name: str, config: ModelConfig) -> None:
        unpaced = {"rpm": None, "tpm": None, "itpm": None, "otpm": None, "limits": "job"}
        super().__init__(name, config=config.model_copy(update=unpaced))
        self._pool = pool

    @asynccontextmanager
    async def call(self, *, prompt_tokens: int, max_tokens: int) -> AsyncIterator[Reservation]:
        # max_concurrency: this worker's share of the cluster's (ray_engine.worker_share).
        if self.slots is not None:
            await self.slots.acquire()
        try:
            reservation = _LeasedReservation(self._pool, prompt_tokens + max_tokens)
            await reservation.acquire()
            yield reservation
        finally:
            if self.slots is not None:
                self.slots.release()


class LeasedLimits(Limits):
    """A worker's limits: models with an rpm or tpm take leases from the book."""

    def __init__(self, job: Job, *, remote: Remote, token_capacity: dict[str, float]) -> None:
        super().__init__(job)
        self._remote = remote
        self._token_capacity = token_capacity

    def __getitem__(self, model: str) -> ModelLimits:
        limits = self._by_model.get(model)
        if limits is None:
            config = self._job.model(model)
            if config.rpm is None and config.tpm is None:
                return super().__getitem__(model)
            pool = _Pool(model, remote=self._remote, token_capacity=self._token_capacity.get(model))
            limits = _LeasedModelLimits(pool, name=model, config=config)
            self._by_model[model] = limits
        return limits


class LeasedBudget(Budget):
    """A worker's budget: an allowance leased from the book in slices. When the book cannot
    cover the next call, the worker stops (and tells the book, which then grants nothing)."""

    def __init__(self, job: Job, *, control: RunControl, remote: Remote) -> None:
        super().__init__(job, control=control)
        self._cluster_limit = job.run.budget_usd
        self._remote = remote
        self._lock = asyncio.Lock()
        if self._cluster_limit is not None:
            self._limit = 0.0  # the allowance this worker holds

    async def admit(self, model: str, *, prompt_tokens: int, max_tokens: int) -> float | None:
        total = self._cluster_limit
        if total is None or self._control.stopped:
            return await super().admit(model, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
        estimate = self.estimate(model, prompt_tokens=prompt_tokens, max_tokens=max_tokens) or 0.0
        async with self._lock:
            assert self._limit is not None
            need = self.spent_usd + self.in_flight_usd + estimate - self._limit
            if need > 0:
                granted = await self._remote("lease_budget", max(need, total * BUDGET_SLICE))
                self._limit += granted
                if granted < need:
                    error = BudgetReached(
                        f"budget ${total:g} reached across the cluster: this worker spent"
                        f" ${self.spent_usd:.4f}, ${self.in_flight_usd:.4f} in flight, and the"
                        f" next call could cost ${estimate:.4f}"
                    )
                    await self._remote("stop", str(error))
                    self._control.stop(error)
                    return None
            # Under the lock: no other row may take this allowance between check and admit.
            return await super().admit(model, prompt_tokens=prompt_tokens, max_tokens=max_tokens)

    async def give_back(self) -> None:
        """Return the unspent allowance (a worker between batches), for others to lease."""
        if self._cluster_limit is None or self._limit is None:
            return
        async with self._lock:
            unspent = self._limit - self.spent_usd - self.in_flight_usd
            if unspent > 0:
                await self._remote("return_budget", unspent)
                self._limit -= unspent
