"""The Caller: one tier's call for one row, through rate limits, retries and fallbacks.

Every HTTP attempt passes the model's limiter again and becomes a CallRecord, which is why
the SDK's own retries are off (`max_retries=0`) and retrying happens here, in one place.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import openai

from batchroute.control import RunControl
from batchroute.errors import AuthRejected, CallFailure, FailureKind, RunStopped
from batchroute.job import Job
from batchroute.limits import Limits
from batchroute.prompts import Message, estimate_prompt_tokens
from batchroute.records import HEADER, PRICE_TABLE, UNKNOWN, CallRecord
from batchroute.retry import RetryPolicy, parse_retry_after

# Codes that mean "this model cannot take this request, another might" rather than "the
# request is wrong": the fallback model may have a longer context or actually exist.
_FALLBACK_ERROR_CODES = {"context_length_exceeded", "model_not_found"}


@dataclass(slots=True)
class TierOutcome:
    """What one tier produced: an answer from `model`, or the failure that ended it."""

    records: list[CallRecord] = field(default_factory=list)
    answer: str | None = None
    model: str | None = None
    fallback_used: bool = False
    failure: CallFailure | None = None


def classify_exception(exc: openai.APIError) -> CallFailure:
    """Translate an SDK exception into what to do about it. The only place that does."""
    if isinstance(exc, openai.APITimeoutError):
        return CallFailure(FailureKind.RETRYABLE, "timeout", "request timed out")
    if isinstance(exc, openai.APIConnectionError):
        return CallFailure(FailureKind.RETRYABLE, "connection", _one_line(exc.message))
    if not isinstance(exc, openai.APIStatusError):
        # A 2xx whose body is not a completion: a broken proxy, worth another try.
        return CallFailure(FailureKind.RETRYABLE, "bad_response", _one_line(exc.message))
    status = exc.status_code
    message = _one_line(exc.message)
    error_kind = f"http_{status}"
    if status in (401, 403):
        return CallFailure(FailureKind.FATAL, error_kind, message, status)
    if status == 402:
        # Out of credit: every later call would get the same answer.
        return CallFailure(FailureKind.FATAL, error_kind, message, status)
    if status in (408, 409, 429) or status >= 500:
        # 408/409 are transient by convention (the SDK's own retry list); 429 and 5xx say
        # "later", and when the server says how much later we honour it.
        retry_after = parse_retry_after(exc.response.headers)
        return CallFailure(FailureKind.RETRYABLE, error_kind, message, status, retry_after)
    if status == 404 or (exc.code in _FALLBACK_ERROR_CODES):
        return CallFailure(FailureKind.FALLBACK, error_kind, message, status)
    return CallFailure(FailureKind.ROW, error_kind, message, status)


class Caller:
    """Makes the calls of one run. Create inside the running event loop."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        job: Job,
        limits: Limits,
        control: RunControl,
        rng: random.Random,
    ) -> None:
        self._client = client
        self._job = job
        self._limits = limits
        self._control = control
        self._rng = rng
        self._policy = RetryPolicy(
            max_attempts=job.run.max_attempts,
            base_s=job.run.backoff_base_s,
            max_backoff_s=job.run.backoff_max_s,
        )
        self._charge_header = job.endpoint.charge_header
        self._balance_header = job.endpoint.balance_header

    async def call_tier(
        self,
        row_id: object,
        *,
        tier: int,
        model: str,
        messages: list[Message],
        params: dict[str, Any],
    ) -> TierOutcome:
        """Try `model`, retrying what is retryable, then each of its fallbacks in order."""
        outcome = TierOutcome()
        candidates = (model, *self._job.model(model).fallbacks)
        for position, name in enumerate(candidates):
            for attempt in range(1, self._policy.max_attempts + 1):
                if self._control.stop_error is not None:
                    outcome.failure = CallFailure(
                        FailureKind.FATAL, "stopped", str(self._control.stop_error)
                    )
                    return outcome
                record, answer, failure = await self._attempt(
                    row_id,
                    tier=tier,
                    model=name,
                    attempt=attempt,
                    messages=messages,
                    params=params,
                )
                outcome.records.append(record)
                if failure is None:
                    outcome.answer, outcome.model = answer, name
                    outcome.fallback_used = position > 0
                    outcome.failure = None  # earlier attempts' failures were overcome
                    return outcome
                outcome.failure = failure
                if failure.kind is FailureKind.FATAL:
                    self._control.stop(_stop_error(failure, self._job))
                    return outcome
                if failure.kind is FailureKind.ROW:
                    return outcome
                if failure.kind is FailureKind.FALLBACK:
                    break
                if attempt < self._policy.max_attempts:
                    await anyio.sleep(
                        self._policy.delay(
                            attempt, retry_after_s=failure.retry_after_s, rng=self._rng
                        )
                    )
        return outcome

    async def _attempt(
        self,
        row_id: object,
        *,
        tier: int,
        model: str,
        attempt: int,
        messages: list[Message],
        params: dict[str, Any],
    ) -> tuple[CallRecord, str | None, CallFailure | None]:
        max_tokens = params.get("max_tokens") or self._job.run.default_max_tokens
        estimate = estimate_prompt_tokens(messages) + max_tokens
        async with self._limits[model].call(estimate) as reservation:
            started_at = datetime.now(UTC)
            t0 = time.perf_counter()
            try:
                raw = await self._client.chat.completions.with_raw_response.create(
                    model=model,
                    messages=messages,  # type: ignore[arg-type]
                    **params,
                )
                body: Any = raw.http_response.json()
                headers: Mapping[str, str] = raw.headers
                status_code: int | None = raw.http_response.status_code
                failure: CallFailure | None = None
            except openai.APIError as exc:
                body, failure = None, classify_exception(exc)
                response = getattr(exc, "response", None)
                headers = response.headers if response is not None else {}
                status_code = response.status_code if response is not None else None
            except ValueError as exc:  # a 2xx whose body is not JSON at all
                body, headers, status_code = None, {}, None
                failure = CallFailure(FailureKind.RETRYABLE, "bad_response", _one_line(str(exc)))
            latency = time.perf_counter() - t0

            record = CallRecord(
                row_id=row_id,
                tier=tier,
                model=model,
                attempt=attempt,
                started_at=started_at,
                latency_s=latency,
                status_code=status_code,
                request_id=headers.get("x-request-id"),
            )
            answer = None
            if failure is None:
                answer, failure = _read_completion(body, record)
            reservation.settle(_total_tokens(record))
            self._charge(record, headers)
            if failure is not None:
                record.error_kind, record.error = failure.error_kind, failure.message
                record.retry_after_s = failure.retry_after_s
            return record, answer, failure

    def _charge(self, record: CallRecord, headers: Mapping[str, str]) -> None:
        """The provider's charge header when sent, else the price table times usage."""
        charged = _float_header(headers, self._charge_header)
        balance = _float_header(headers, self._balance_header)
        record.balance_usd = balance
        self._control.note_balance(balance)
        if charged is not None:
            record.charge_usd, record.cost_source = charged, HEADER
            return
        prices = self._job.model(record.model).usd_per_mtok
        if prices is not None and record.prompt_tokens is not None:
            record.charge_usd = (
                record.prompt_tokens * prices.input
                + (record.completion_tokens or 0) * prices.output
            ) / 1_000_000
            record.cost_source = PRICE_TABLE
        else:
            record.cost_source = UNKNOWN


def _read_completion(body: Any, record: CallRecord) -> tuple[str | None, CallFailure | None]:
    """Pull the answer and usage out of a chat.completion body, tolerating odd servers."""
    try:
        usage = body.get("usage") or {}
        record.prompt_tokens = usage.get("prompt_tokens")
        record.completion_tokens = usage.get("completion_tokens")
        choice = body["choices"][0]
        content = choice["message"].get("content")
    except (AttributeError, KeyError, IndexError, TypeError):
        return None, CallFailure(FailureKind.RETRYABLE, "bad_response", "not a chat completion")
    record.mean_logprob = _mean_logprob(choice)
    if content is None:
        refusal = choice["message"].get("refusal")
        reason = f"refused: {refusal}" if refusal else "empty answer"
        return None, CallFailure(FailureKind.FALLBACK, "no_content", _one_line(reason))
    return content, None


def _total_tokens(record: CallRecord) -> int | None:
    if record.prompt_tokens is None:
        return None
    return record.prompt_tokens + (record.completion_tokens or 0)


def _float_header(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _stop_error(failure: CallFailure, job: Job) -> RunStopped:
    where = job.endpoint.base_url
    if failure.status_code == 402:
        return RunStopped(f"{where} answered 402 (out of credit): {failure.message}")
    key = job.endpoint.api_key_env or "no key variable"
    return AuthRejected(
        f"{where} rejected the credentials ({failure.status_code}); check the key in {key}"
    )


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


def _mean_logprob(choice: Any) -> float | None:
    """The mean token logprob of an answer, when the request asked for logprobs."""
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list) or not tokens:
        return None
    values = [t.get("logprob") for t in tokens if isinstance(t, dict)]
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    return sum(numbers) / len(numbers) if numbers else None
