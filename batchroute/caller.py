"""The Caller: one tier's call for one row, through rate limits, retries and fallbacks.

Every HTTP attempt passes the model's limiter again and becomes a CallRecord, which is why
the transports never retry (the SDK's `max_retries=0`) and retrying happens here, in one
place; what an answer means is decided once, in `classify`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import anyio

from batchroute.batch.collector import BatchCollector
from batchroute.budget import Budget
from batchroute.charges import Charges
from batchroute.classify import classify, classify_transport_error
from batchroute.completion import BadResponse, Completion, parse_completion
from batchroute.control import RunControl
from batchroute.dedupe import SharedCalls, deterministic, shared_records
from batchroute.errors import (
    AuthRejected,
    BudgetReached,
    CallFailure,
    FailureKind,
    RunStopped,
    one_line,
)
from batchroute.job import Job
from batchroute.limits import Limits, ModelLimits, Reservation
from batchroute.prompts import Message, estimate_prompt_tokens
from batchroute.ratelimit_headers import Quota, limit_of, read_limit_headers
from batchroute.records import ANSWER, UNKNOWN, CallRecord
from batchroute.redact import Redactor
from batchroute.retry import RetryPolicy
from batchroute.store import CallCache, StoredCall
from batchroute.transport import (
    Reply,
    Transport,
    TransportError,
)

log = logging.getLogger("batchroute")

__all__ = ["Caller", "TierOutcome", "classify", "classify_transport_error"]


@dataclass(slots=True)
class TierOutcome:
    """What one tier produced: an answer from `model`, or the failure that ended it."""

    records: list[CallRecord] = field(default_factory=list)
    answer: str | None = None
    model: str | None = None
    fallback_used: bool = False
    failure: CallFailure | None = None


@dataclass(frozen=True, slots=True)
class CallRequest:
    """One call to make: for which row and tier, to which model, with what, and why."""

    row_id: object
    tier: int
    model: str
    messages: list[Message]
    params: dict[str, Any]
    purpose: str = ANSWER
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One attempt's end: its record (None when it was never sent) and answer or failure."""

    record: CallRecord | None
    answer: str | None = None
    failure: CallFailure | None = None


class Caller:
    """Makes the calls of one run. Create inside the running event loop."""

    def __init__(
        self,
        transports: Mapping[str, Transport],
        *,
        job: Job,
        limits: Limits,
        control: RunControl,
        budget: Budget,
        cache: CallCache,
        rng: random.Random,
        batches: Mapping[str, BatchCollector] | None = None,
    ) -> None:
        self._transports = transports  # by endpoint name; each model uses its endpoint's
        self._batches = batches or {}  # by model: the batch tiers' collectors
        self._job = job
        self._limits = limits
        self._control = control
        self._budget = budget
        self._cache = cache
        self._rng = rng
        self._policy = RetryPolicy(
            max_attempts=job.run.max_attempts,
            base_s=job.run.backoff_base_s,
            max_backoff_s=job.run.backoff_max_s,
            max_retry_after_s=job.run.max_retry_after_s,
        )
        self._endpoints = job.all_endpoints()
        self._redact = Redactor.from_job(job)
        self._charges = Charges(job, control=control, budget=budget)
        self._shared: SharedCalls[TierOutcome] | None = (
            SharedCalls() if job.run.dedupe == "auto" else None
        )

    async def call_tier(
        self,
        row_id: object,
        *,
        tier: int,
        model: str,
        messages: list[Message],
        params: dict[str, Any],
        purpose: str = ANSWER,
        shadow: bool = False,
        messages_for: Callable[[str], list[Message] | None] | None = None,
    ) -> TierOutcome:
        """Try `model`, retrying what is retryable, then each of its fallbacks in order.

        `messages_for(model)` gives a fallback model its own messages (its own templates);
        None for a model skips it (its templates cannot render the row).

        An identical deterministic request of this run already answered (or in flight) is
        shared, not sent again (`run.dedupe`). A stored answer for the model or one of its
        fallbacks is used before any HTTP call: on resume that is the answer this run already
        paid for. Every record carries `purpose` and `shadow`, the reason the call was made.
        """
        first = CallRequest(row_id, tier, model, messages, params, purpose, shadow)
        # The first model's request key, hashed once for dedupe, the store lookup and the
        # store write (the JSON of a long prompt is the costliest thing a call does here).
        needs_key = self._cache.reads or self._cache.writes or self._shared is not None
        key = self._cache.key(model, messages, params) if needs_key else None
        if self._shared is None or not deterministic(params):
            return await self._call_tier(first, first_key=key, messages_for=messages_for)
        assert key is not None
        while (pending := self._shared.follow(key)) is not None:
            shared = await self._shared.outcome(pending)
            if shared is not None:
                return self._as_shared(shared, first)
        led: TierOutcome | None = None
        try:
            led = await self._call_tier(first, first_key=key, messages_for=messages_for)
            return led
        finally:
            self._shared.finish(key, led if led is not None and led.failure is None else None)

    @staticmethod
    def _as_shared(outcome: TierOutcome, request: CallRequest) -> TierOutcome:
        """Another row's outcome, as `request`'s row records it."""
        records = shared_records(
            outcome.records,
            row_id=request.row_id,
            tier=request.tier,
            purpose=request.purpose,
            shadow=request.shadow,
        )
        return replace(outcome, records=records)

    async def _call_tier(
        self,
        first: CallRequest,
        *,
        first_key: bytes | None,
        messages_for: Callable[[str], list[Message] | None] | None = None,
    ) -> TierOutcome:
        outcome = TierOutcome()
        candidates = [first]
        for name in self._job.model(first.model).fallbacks:
            own = messages_for(name) if messages_for is not None else first.messages
            if own is not None:
                candidates.append(replace(first, model=name, messages=own))
        if self._cache.reads:
            for position, request in enumerate(candidates):
                key = self._key(request, first, first_key)
                stored = await self._cache.find(key)
                if stored is not None:
                    outcome.records.append(self._replayed(stored, request))
                    outcome.answer, outcome.model = stored.answer, request.model
                    outcome.fallback_used = position > 0
                    return outcome
            if self._cache.offline:
                outcome.failure = CallFailure(
                    FailureKind.SKIP, "not_cached", "offline, and no stored answer"
                )
                return outcome
        for position, request in enumerate(candidates):
            for attempt in range(1, self._policy.max_attempts + 1):
                if self._control.stop_error is not None:
                    outcome.failure = _skipped(self._control.stop_error)
                    return outcome
                result = await self._attempt(request, attempt=attempt)
                if result.record is not None:
                    outcome.records.append(result.record)
                failure = result.failure
                if failure is None:
                    assert result.record is not None and result.answer is not None
                    outcome.answer, outcome.model = result.answer, request.model
                    outcome.fallback_used = position > 0
                    outcome.failure = None  # earlier attempts' failures were overcome
                    if self._cache.writes:
                        # The key of the model that answered, not of every fallback.
                        key = self._key(request, first, first_key)
                        await self._cache.remember(
                            _to_store(key, result.record, result.answer, self._cache.run_id)
                        )
                    return outcome
                outcome.failure = failure
                if failure.kind is FailureKind.FATAL:
                    self._control.stop(_stop_error(failure, self._job, model=request.model))
                    return outcome
                if failure.kind in (FailureKind.ROW, FailureKind.SKIP):
                    return outcome
                if failure.kind is FailureKind.FALLBACK:
                    break
                if failure.status_code == 429:
                    continue  # the model's cool-down, which the next attempt waits for
                if attempt < self._policy.max_attempts:
                    delay = self._policy.delay(
                        attempt, retry_after_s=failure.retry_after_s, rng=self._rng
                    )
                    # Not a bare sleep: when the run stops (Ctrl-C, the budget) the wait
                    # ends at once, and the loop's next turn records the row as skipped.
                    with anyio.move_on_after(delay):
                        await self._control.stopping.wait()
        return outcome

    def _key(self, request: CallRequest, first: CallRequest, first_key: bytes | None) -> bytes:
        if request is first and first_key is not None:
            return first_key
        return self._cache.key(request.model, request.messages, request.params)

    def _replayed(self, stored: StoredCall, request: CallRequest) -> CallRecord:
        """A stored call as this run records it: the original charge, `cached` unless it was
        this very run (a resume) that paid for it."""
        return CallRecord(
            row_id=request.row_id,
            tier=request.tier,
            model=stored.model,
            attempt=1,
            started_at=datetime.now(UTC),
            latency_s=stored.latency_s,
            status_code=200,
            prompt_tokens=stored.prompt_tokens,
            completion_tokens=stored.completion_tokens,
            charge_usd=stored.charge_usd,
            cost_source=stored.cost_source or UNKNOWN,
            request_id=stored.request_id,
            cached=stored.run_id != self._cache.run_id,
            purpose=request.purpose,
            shadow=request.shadow,
            mean_logprob=stored.mean_logprob,
            tool_calls=stored.tool_calls,
        )

    def _collector(self, model: str, *, attempt: int) -> BatchCollector | None:
        """The batch tier's collector for this attempt; None: online. After a line that
        expired or failed, `batch_fallback = "online"` sends the retry online."""
        collector = self._batches.get(model)
        if collector is not None and attempt > 1:
            return collector if self._job.model(model).batch_fallback == "batch" else None
        return collector

    async def _attempt(self, request: CallRequest, *, attempt: int) -> _Attempt:
        max_tokens = request.params.get("max_tokens") or self._job.run.default_max_tokens
        prompt_tokens = estimate_prompt_tokens(request.messages)
        collector = self._collector(request.model, attempt=attempt)
        if collector is not None:
            # No rate limiter: a batch line is not a request per minute. The budget still is.
            async with self._admitted(request.model, prompt_tokens, max_tokens) as admitted:
                if not admitted:
                    return self._stopped()
                return await self._send(request, attempt=attempt, collector=collector)
        limits = self._limits[request.model]
        if (wait := limits.cool_down_left()) > 0:
            # After a 429 the whole model waits; not a bare sleep, so a stop ends the wait.
            with anyio.move_on_after(wait):
                await self._control.stopping.wait()
            if self._control.stop_error is not None:
                return self._stopped()
        calling = limits.call(prompt_tokens=prompt_tokens, max_tokens=max_tokens)
        # Admitted after the limiter's wait, right before sending: the spend is current.
        admitting = self._admitted(request.model, prompt_tokens, max_tokens)
        async with calling as reservation, admitting as admitted:
            if not admitted:
                return self._stopped()
            return await self._send(
                request, attempt=attempt, limits=limits, reservation=reservation
            )

    @asynccontextmanager
    async def _admitted(
        self, model: str, prompt_tokens: int, max_tokens: int
    ) -> AsyncIterator[bool]:
        """Whether the budget admits the call; its estimate stays on the books until the call
        ends, also when it is cancelled mid-call (an interrupt)."""
        estimate = await self._budget.admit(
            model, prompt_tokens=prompt_tokens, max_tokens=max_tokens
        )
        if estimate is None:
            yield False
            return
        try:
            yield True
        finally:
            self._budget.release(estimate)

    def _stopped(self) -> _Attempt:
        """No call: the run is stopping (the budget, an interrupt, a fatal answer)."""
        assert self._control.stop_error is not None
        return _Attempt(None, failure=_skipped(self._control.stop_error))

    async def _send(
        self,
        request: CallRequest,
        *,
        attempt: int,
        limits: ModelLimits | None = None,
        reservation: Reservation | None = None,
        collector: BatchCollector | None = None,
    ) -> _Attempt:
        """One attempt, online or (`collector`) as a line of a batch; recorded the same way."""
        started_at = datetime.now(UTC)
        t0 = time.perf_counter()
        reply: Reply | None = None
        try:
            payload = {"model": request.model, "messages": request.messages, **request.params}
            if collector is not None:
                key = self._cache.key(request.model, request.messages, request.params)
                reply = await collector.submit(key, payload)
            else:
                transport = self._transports[self._job.endpoint_name(request.model)]
                reply = await transport.chat(payload)
            failure = classify(reply, redact=self._redact)
        except TransportError as exc:
            failure = classify_transport_error(exc)
        latency = time.perf_counter() - t0
        headers: Mapping[str, str] = reply.headers if reply is not None else {}
        completion: Completion | None = None
        if failure is None and reply is not None:
            completion, failure = _read_completion(reply.body, headers.get("x-request-id"))
        if failure is not None:
            # A server may echo the request's Authorization header or the key in its error;
            # the message goes to the calls table, the row's error and the terminal.
            failure = replace(failure, message=self._redact(failure.message))
        quotas: dict[str, Quota] = {}
        if reply is not None and limits is not None and reservation is not None:
            quotas = limits.observe(reply.headers, reservation=reservation, ok=failure is None)
            if failure is not None and failure.status_code == 429:
                headers_read = reply.headers if limits.learning else {}
                limits.cool_down(self._cool_down_s(failure, headers_read, attempt=attempt))
        if reservation is not None:
            if completion is not None:
                reservation.settle(completion.prompt_tokens, completion.completion_tokens)
            else:
                reservation.settle(None, None)
        factor = self._job.model(request.model).batch_price_factor if collector else 1.0
        charge = self._charges.of(request.model, headers, completion, factor=factor)
        record = CallRecord(
            row_id=request.row_id,
            tier=request.tier,
            model=request.model,
            attempt=attempt,
            started_at=started_at,
            latency_s=latency,
            status_code=reply.status if reply is not None else None,
            error_kind=failure.error_kind if failure is not None else None,
            error=failure.message if failure is not None else None,
            retry_after_s=failure.retry_after_s if failure is not None else None,
            prompt_tokens=completion.prompt_tokens if completion is not None else None,
            completion_tokens=completion.completion_tokens if completion is not None else None,
            charge_usd=charge.usd,
            cost_source=charge.source,
            balance_usd=charge.balance_usd,
            request_id=(
                completion.request_id if completion is not None else headers.get("x-request-id")
            ),
            purpose=request.purpose,
            shadow=request.shadow,
            mean_logprob=completion.mean_logprob if completion is not None else None,
            limit_requests=limit_of(quotas, "requests"),
            limit_tokens=limit_of(quotas, "tokens"),
            limit_input_tokens=limit_of(quotas, "input_tokens"),
            limit_output_tokens=limit_of(quotas, "output_tokens"),
            tool_calls=completion.tool_calls if completion is not None else None,
        )
        answer = completion.text if completion is not None and failure is None else None
        return _Attempt(record, answer, failure)

    def _cool_down_s(
        self, failure: CallFailure, headers: Mapping[str, str], *, attempt: int
    ) -> float:
        """How long a 429 stops the model: its Retry-After, else the soonest reset of a quota
        it names as spent (unless `limits = "job"`, which reads no limit headers), else the
        backoff; never more than `run.max_retry_after_s`."""
        wait = failure.retry_after_s
        if wait is None:
            quotas = read_limit_headers(headers).quotas.values()
            resets = [q.reset_s for q in quotas if q.remaining == 0 and q.reset_s is not None]
            if resets:
                wait = min(resets)
        if wait is None:
            wait = self._policy.delay(attempt, retry_after_s=None, rng=self._rng)
        return min(wait, self._policy.max_retry_after_s)


def _read_completion(
    body: Any, request_id: str | None
) -> tuple[Completion | None, CallFailure | None]:
    """The completion of a 2xx body, and the failure when it has no usable answer (its usage
    is still kept: the call was made and may be charged)."""
    try:
        completion = parse_completion(body, request_id=request_id)
    except BadResponse as exc:
        return None, CallFailure(FailureKind.RETRYABLE, "bad_response", str(exc))
    if completion.text is None:
        refusal = completion.refusal
        reason = f"refused: {refusal}" if refusal else "empty answer"
        return completion, CallFailure(FailureKind.FALLBACK, "no_content", _server_line(reason))
    return completion, None


def _skipped(reason: RunStopped) -> CallFailure:
    tag = "budget" if isinstance(reason, BudgetReached) else type(reason).__name__.lower()
    return CallFailure(FailureKind.SKIP, tag, str(reason))


def _to_store(key: bytes, record: CallRecord, answer: str, run_id: str) -> StoredCall:
    return StoredCall(
        key=key,
        model=record.model,
        answer=answer,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        charge_usd=record.charge_usd,
        cost_source=record.cost_source,
        latency_s=record.latency_s,
        request_id=record.request_id,
        run_id=run_id,
        mean_logprob=record.mean_logprob,
        tool_calls=record.tool_calls,
    )


def _stop_error(failure: CallFailure, job: Job, *, model: str) -> RunStopped:
    """The run-stopping error of a fatal answer, naming the endpoint of the model that got it."""
    endpoint = job.all_endpoints()[job.endpoint_name(model)]
    where = endpoint.base_url
    if failure.status_code in (402, 429):
        return BudgetReached(
            f"{where} answered {failure.status_code} (out of credit): {failure.message}"
        )
    key = endpoint.api_key_env or "no key variable"
    return AuthRejected(
        f"{where} rejected the credentials ({failure.status_code}); check the key in {key}"
    )


def _server_line(text: str) -> str:
    return one_line(text, whole=True)
