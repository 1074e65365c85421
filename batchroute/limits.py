"""Per-model rate limits: the job's, those learned from response headers, one cool-down per model.

A call passes, in order: the model's cool-down (after a 429 every call to the model waits for
the window the server named), the cautious start (until the model's first answer, at most
`START_RPM` calls a minute), the job's buckets (rpm, tpm, itpm, otpm) and the learned ones.
A learned dimension has two buckets: a pace of the limit per minute with one second of burst,
and the server's own count (capacity the limit, level `limit - remaining` plus what was sent
since, refilling by `reset`), so no more goes out than `remaining` allows before `reset`.
Both the job's and the learned buckets must admit a call: the lower limit wins.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio

from batchroute.bucket import LeakyBucket
from batchroute.job import Job, ModelConfig
from batchroute.ratelimit_headers import DIMENSIONS, Quota, read_limit_headers

# A bucket holds this many seconds' worth of its rate: after a pause, at most that much goes
# out in one burst (a bucket of a whole minute would send a minute's worth at once).
BURST_SECONDS = 1.0
# Until a model's first answer says what its limits are, one call a second goes out: a
# probe, cheap to lose to a 429, that usually answers within the second.
START_RPM = 60

log = logging.getLogger("batchroute")


class Reservation:
    """What one call holds in each bucket; `settle` books the usage the response reported."""

    def __init__(self, seq: int) -> None:
        self.seq = seq  # the order of sending among the model's calls
        self.sent_after: dict[str, float] = {}  # per dimension: the model's total once sent
        self._held: list[tuple[str, LeakyBucket, float, float]] = []

    async def take(self, bucket: LeakyBucket, dimension: str, amount: float) -> None:
        # A request larger than the bucket could never be admitted; it reserves a full bucket
        # and `settle` books the rest, so later calls wait until the real spend leaked out.
        reserved = float(min(amount, bucket.capacity))
        await bucket.acquire(reserved)
        self._held.append((dimension, bucket, reserved, amount))

    def release(self) -> None:
        """Give back everything taken: the call was not sent."""
        for _, bucket, reserved, _ in self._held:
            bucket.settle(reserved, 0.0)
        self._held = []

    def settle(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """Book the real usage; without a usage report (an error) book the whole estimate,
        not only the part that fitted: the provider may have counted it."""
        actual = _amounts(prompt_tokens, completion_tokens)
        known = prompt_tokens is not None
        for dimension, bucket, reserved, estimate in self._held:
            if dimension != "requests":
                bucket.settle(reserved, actual[dimension] if known else estimate)
        self._held = [(d, b, actual[d] if known else e, e) for d, b, _, e in self._held]


def _amounts(prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, float]:
    prompt, completion = float(prompt_tokens or 0), float(completion_tokens or 0)
    return {
        "requests": 1.0,
        "tokens": prompt + completion,
        "input_tokens": prompt,
        "output_tokens": completion,
    }


def _pace(per_minute: float) -> LeakyBucket:
    """A bucket of one burst's worth, started full but for one unit.

    A bucket started empty would let a fresh run send a whole bucket at once and then keep
    pace: its first minute would hold the limit plus the burst, which a provider counting a
    sliding minute answers with 429s. Started full (but for one unit, so the first call goes
    at once), no sliding minute ever holds more than the limit; a burst only spends what a
    pause saved up.
    """
    per_second = per_minute / 60.0
    capacity = max(1.0, math.floor(per_second * BURST_SECONDS))
    return LeakyBucket(capacity, per_second=per_second, level=capacity - 1.0)


class LearnedLimit:
    """One dimension's limit as the server's headers state it; made on the first header."""

    def __init__(self) -> None:
        self.limit: int | None = None
        self.pace: LeakyBucket | None = None
        self.server: LeakyBucket | None = None
        self._applied_seq = -1

    def observe(self, quota: Quota, *, seq: int, uncounted: float) -> None:
        """Pace to `quota`, as of the call numbered `seq`; `uncounted` was sent after it."""
        if seq <= self._applied_seq:
            return  # an answer to an older call carries an older count
        self._applied_seq = seq
        limit, per_second = quota.limit, quota.limit / 60.0
        if self.limit != limit or self.pace is None or self.server is None:
            capacity = max(1.0, math.floor(per_second * BURST_SECONDS))
            if self.pace is None:
                self.pace = _pace(quota.limit)
            else:
                self.pace.retune(capacity, per_second=per_second)
            self.server = self.server or LeakyBucket(limit, per_second=per_second)
            self.limit = limit
        # The server refills to its limit by `reset`; never faster than the limit per minute.
        refill = per_second
        if quota.reset_s and quota.remaining < limit:
            refill = min(per_second, (limit - quota.remaining) / quota.reset_s)
        self.server.retune(limit, per_second=max(refill, per_second / 1000))
        self.server.set_level(limit - quota.remaining + uncounted)


class ModelLimits:
    """The limits of one model. Build inside the running event loop."""

    def __init__(self, name: str, *, config: ModelConfig) -> None:
        self.name = name
        self.mode = config.limits
        job_side = config.limits != "headers"
        self.learning = config.limits != "job"
        self.job_buckets: dict[str, LeakyBucket | None] = {
            "requests": _pace(config.rpm) if job_side and config.rpm else None,
            "tokens": _pace(config.tpm) if job_side and config.tpm else None,
            "input_tokens": _pace(config.itpm) if job_side and config.itpm else None,
            "output_tokens": _pace(config.otpm) if job_side and config.otpm else None,
        }
        self.learned = {dimension: LearnedLimit() for dimension in DIMENSIONS}
        self.slots = (
            anyio.CapacityLimiter(config.max_concurrency) if config.max_concurrency else None
        )
        # The loop's clock, as the buckets read it (anyio.current_time looks the loop up).
        self._loop_time = asyncio.get_running_loop().time
        self._cool_until = 0.0
        self._refill_pending = False
        self._answered = anyio.Event()
        # A model the job gives no request limit starts cautiously, until it answers.
        self._probing = self.learning and self.job_buckets["requests"] is None
        self._next_probe_at = 0.0
        self._seq = 0
        self._sent = dict.fromkeys(DIMENSIONS, 0.0)
        self._ok_times: deque[float] = deque()
        self._warned: set[str] = set()

    @asynccontextmanager
    async def call(self, *, prompt_tokens: int, max_tokens: int) -> AsyncIterator[Reservation]:
        """Hold a concurrency slot and one request's capacity for the duration of a call."""
        if self.slots is not None:
            await self.slots.acquire()
        try:
            amounts = _amounts(prompt_tokens, max_tokens)
            while True:
                await self._cool_down()
                await self._probe()
                reservation = Reservation(self._seq)
                for dimension, bucket in self._buckets():
                    await reservation.take(bucket, dimension, amounts[dimension])
                if self.cool_down_left() <= 0:
                    break
                # A 429 came while this call waited in the buckets: it must not go out now,
                # so it gives its capacity back and waits for the cool-down like the rest.
                reservation.release()
            self._seq += 1
            reservation.seq = self._seq
            for dimension in DIMENSIONS:
                self._sent[dimension] += amounts[dimension]
                reservation.sent_after[dimension] = self._sent[dimension]
            yield reservation
        finally:
            if self.slots is not None:
                self.slots.release()

    def _buckets(self) -> list[tuple[str, LeakyBucket]]:
        """The buckets a call must pass now, by dimension (learned ones appear as answers
        name their limits)."""
        buckets = []
        for dimension in DIMENSIONS:
            learned = self.learned[dimension]
            for bucket in (self.job_buckets[dimension], learned.pace, learned.server):
                if bucket is not None:
                    buckets.append((dimension, bucket))
        return buckets

    def observe(
        self, headers: Mapping[str, str], *, reservation: Reservation, ok: bool
    ) -> dict[str, Quota]:
        """Learn from one HTTP answer's limit headers (each answer, whatever its status);
        returns the quotas they named, for the call's record."""
        self._answered.set()
        if ok:
            now = self._loop_time()
            self._ok_times.append(now)
            if self._ok_times[0] < now - 60.0:  # a minute's answers, not the whole run's
                self._ok_times.popleft()
        read = read_limit_headers(headers)
        if not self.learning:
            return read.quotas
        for name in read.garbled:
            if name not in self._warned:
                self._warned.add(name)
                log.warning(
                    "model %s: the header %s is not a usable limit; it is ignored", self.name, name
                )
        if not read.quotas and self._probing:
            if self.mode == "headers" and "missing" not in self._warned:
                self._warned.add("missing")
                log.warning(
                    'model %s: limits = "headers", but its answers name no rate limits;'
                    " calls are paced by concurrency alone",
                    self.name,
                )
        self._probing = False
        for dimension, quota in read.quotas.items():
            uncounted = self._sent[dimension] - reservation.sent_after.get(dimension, 0.0)
            self.learned[dimension].observe(quota, seq=reservation.seq, uncounted=uncounted)
        return read.quotas

    def cool_down(self, seconds: float) -> None:
        """A 429: every call to the model waits `seconds`; then they go at the paced rate."""
        now = self._loop_time()
        if now + seconds > self._cool_until:
            self._cool_until = now + seconds
            self._refill_pending = True
        if self.learning and self._pace_of_requests() is None:
            # The server refuses but names no limit: pace to what it accepted in the last
            # minute (at least the cautious start's rate), rather than release every waiting
            # call at once when the wait ends.
            while self._ok_times and self._ok_times[0] < now - 60.0:
                self._ok_times.popleft()
            accepted = max(START_RPM, len(self._ok_times))
            quota = Quota(limit=accepted, remaining=0, reset_s=None)
            self.learned["requests"].observe(quota, seq=self._seq + 1, uncounted=0.0)

    def _pace_of_requests(self) -> LeakyBucket | None:
        return self.job_buckets["requests"] or self.learned["requests"].pace

    def cool_down_left(self) -> float:
        """Seconds left of the model's cool-down; the caller waits them, stoppably."""
        return max(0.0, self._cool_until - self._loop_time())

    async def _cool_down(self) -> None:
        # A cool-down that began while this call waited before the buckets: wait it out too.
        if (wait := self.cool_down_left()) > 0:
            await anyio.sleep(wait)
        if self._refill_pending:
            # The first call to wake goes at once; the rest follow at the pace, not in a burst.
            self._refill_pending = False
            for dimension in DIMENSIONS:
                for bucket in (self.job_buckets[dimension], self.learned[dimension].pace):
                    if bucket is not None:
                        bucket.set_level(bucket.capacity - 1.0)

    async def _probe(self) -> None:
        """Until the model's first answer, one call per second (START_RPM) goes out."""
        while self._probing and not self._answered.is_set():
            now = self._loop_time()
            if now >= self._next_probe_at:
                self._next_probe_at = now + 60.0 / START_RPM
                return
            with anyio.move_on_after(self._next_probe_at - now):
                await self._answered.wait()


class Limits:
    """The limits of every model of a job, made on first use inside the event loop."""

    def __init__(self, job: Job) -> None:
        self._job = job
        self._by_model: dict[str, ModelLimits] = {}

    def __getitem__(self, model: str) -> ModelLimits:
        limits = self._by_model.get(model)
        if limits is None:
            limits = ModelLimits(model, config=self._job.model(model))
            self._by_model[model] = limits
        return limits
