"""classify: the one place an answer (here carried by an SDK exception) becomes what to do.

The exceptions are real openai exception objects, built the way the SDK builds them (a
response carrying its request), and also raised by the real SDK client over a mock transport,
so a change in how openai shapes `code`, `body` or headers shows up here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from batchroute.caller import classify, classify_transport_error
from batchroute.errors import CallFailure, FailureKind
from batchroute.transport import TransportError, reply_from_sdk_error

URL = "http://127.0.0.1:9/v1/chat/completions"


def classify_exception(exc: openai.APIError) -> CallFailure:
    """What the openai transport makes of an SDK exception: the answer it carried, classified
    by `caller.classify`, or no answer at all."""
    try:
        reply = reply_from_sdk_error(exc)
    except TransportError as error:
        return classify_transport_error(error)
    failure = classify(reply)
    assert failure is not None
    return failure


def _status_error(
    status: int,
    *,
    headers: dict[str, str] | None = None,
    body: object | None = None,
    message: str = "upstream said no",
) -> openai.APIStatusError:
    """A status error as the SDK builds it: the response carries the JSON `{"error": body}`,
    `body` is the inner error object and the message quotes the whole answer."""
    if body is None:
        body = {"message": message, "type": "error"}
    if isinstance(body, dict):
        response = httpx2.Response(
            status, json={"error": body}, headers=headers, request=httpx2.Request("POST", URL)
        )
    else:
        response = httpx2.Response(
            status, text=str(body), headers=headers, request=httpx2.Request("POST", URL)
        )
    kinds: dict[int, type[openai.APIStatusError]] = {
        400: openai.BadRequestError,
        401: openai.AuthenticationError,
        403: openai.PermissionDeniedError,
        404: openai.NotFoundError,
        409: openai.ConflictError,
        422: openai.UnprocessableEntityError,
        429: openai.RateLimitError,
    }
    kind = kinds.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return kind(f"Error code: {status} - {response.text}", response=response, body=body)


# ---- retryable ------------------------------------------------------------------------------


def test_429_with_retry_after_ms_is_retryable_after_that_long() -> None:
    exc = _status_error(429, headers={"retry-after-ms": "1500", "retry-after": "9"})
    failure = classify_exception(exc)
    assert failure.kind is FailureKind.RETRYABLE and failure.error_kind == "http_429"
    assert failure.status_code == 429 and failure.retry_after_s == 1.5
    assert "upstream said no" in failure.message


def test_429_with_retry_after_seconds_and_without_any() -> None:
    assert classify_exception(_status_error(429, headers={"Retry-After": "7"})).retry_after_s == 7
    bare = classify_exception(_status_error(429))
    assert bare.kind is FailureKind.RETRYABLE and bare.retry_after_s is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529, 408, 409])
def test_server_errors_and_transient_statuses_are_retryable(status: int) -> None:
    failure = classify_exception(_status_error(status, headers={"retry-after": "3"}))
    assert failure.kind is FailureKind.RETRYABLE
    assert failure.error_kind == f"http_{status}" and failure.status_code == status
    assert failure.retry_after_s == 3.0  # a 503 may say when, too


def test_timeout_is_retryable() -> None:
    exc = openai.APITimeoutError(request=httpx2.Request("POST", URL))
    assert classify_exception(exc) == CallFailure(
        FailureKind.RETRYABLE, "timeout", "request timed out"
    )


def test_connection_error_is_retryable() -> None:
    exc = openai.APIConnectionError(
        message="Connection error:\n  refused", request=httpx2.Request("POST", URL)
    )
    failure = classify_exception(exc)
    assert failure.kind is FailureKind.RETRYABLE and failure.error_kind == "connection"
    assert failure.message == "Connection error: refused"  # one line, for a table cell
    assert failure.status_code is None


# ---- fatal, fallback, row -------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 402])
def test_auth_and_out_of_credit_are_fatal(status: int) -> None:
    failure = classify_exception(_status_error(status, headers={"retry-after": "1"}))
    assert failure.kind is FailureKind.FATAL
    assert failure.status_code == status and failure.retry_after_s is None


def test_404_falls_back() -> None:
    failure = classify_exception(_status_error(404, body={"code": "model_not_found"}))
    assert failure.kind is FailureKind.FALLBACK and failure.error_kind == "http_404"
    assert classify_exception(_status_error(404)).kind is FailureKind.FALLBACK


@pytest.mark.parametrize("code", ["context_length_exceeded", "model_not_found"])
def test_400_that_another_model_could_serve_falls_back(code: str) -> None:
    body = {"message": "This model's maximum context length is 8192 tokens", "code": code}
    body["type"] = "invalid_request_error"
    failure = classify_exception(_status_error(400, body=body))
    assert failure.kind is FailureKind.FALLBACK and failure.status_code == 400


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, None),
        (400, {"code": "invalid_value", "message": "bad 'temperature'"}),
        (400, "not json at all"),
        (422, {"code": None}),
        (413, None),
    ],
)
def test_a_wrong_request_fails_the_row(status: int, body: object) -> None:
    failure = classify_exception(_status_error(status, body=body))
    assert failure.kind is FailureKind.ROW and failure.error_kind == f"http_{status}"


def test_the_message_is_one_short_line() -> None:
    # A proxy's plain-text error page, newlines and all.
    text = "line one\nline two\n" + "x" * 500
    failure = classify_exception(_status_error(400, body=text))
    assert "\n" not in failure.message
    assert "line one line two" in failure.message
    assert len(failure.message) <= 300 and failure.message.endswith("...")


def test_429_insufficient_quota_is_fatal_like_402() -> None:
    body = {"message": "You exceeded your current quota", "code": "insufficient_quota"}
    assert classify_exception(_status_error(429, body=body)).kind is FailureKind.FATAL


# ---- through the real SDK client ------------------------------------------------------------


def _through_sdk(handler: Callable[[httpx2.Request], httpx2.Response]) -> CallFailure:
    """Make one chat call with the real AsyncOpenAI client (no SDK retries, as batchroute
    does) over a mock transport, and classify the exception it raises."""

    async def call() -> CallFailure:
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
        client = openai.AsyncOpenAI(
            base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0, http_client=http
        )
        async with client:
            try:
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]
                )
            except openai.APIError as exc:
                return classify_exception(exc)
        pytest.fail("the call succeeded")

    return asyncio.run(call())


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return lambda request: httpx2.Response(status, json=body, headers=headers)


def test_sdk_429_carries_retry_after_ms_through() -> None:
    failure = _through_sdk(
        _json(429, {"error": {"message": "slow down"}}, {"Retry-After-Ms": "250"})
    )
    assert failure.kind is FailureKind.RETRYABLE and failure.retry_after_s == 0.25
    assert failure.error_kind == "http_429" and "slow down" in failure.message


def test_sdk_context_length_error_body_falls_back() -> None:
    body = {"error": {"message": "too long", "type": "invalid_request_error"}}
    body["error"]["code"] = "context_length_exceeded"
    assert _through_sdk(_json(400, body)).kind is FailureKind.FALLBACK
    body["error"]["code"] = "invalid_value"
    assert _through_sdk(_json(400, body)).kind is FailureKind.ROW


def test_sdk_auth_error_is_fatal() -> None:
    failure = _through_sdk(_json(401, {"error": {"message": "bad key", "code": "invalid_api_key"}}))
    assert failure.kind is FailureKind.FATAL and failure.status_code == 401


def test_sdk_timeout_and_connection_errors_are_retryable() -> None:
    def timeout(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("read timed out", request=request)

    def refused(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    assert _through_sdk(timeout).error_kind == "timeout"
    failure = _through_sdk(refused)
    assert failure.kind is FailureKind.RETRYABLE and failure.error_kind == "connection"


def test_request_id_is_the_header_else_the_completions_own_id() -> None:
    # LiteLLM and llmock send no x-request-id; the completion's id is what they log.
    from batchroute.completion import parse_completion

    body = {"id": "chatcmpl-7", "choices": [{"message": {"content": "hi"}}], "usage": {}}
    completion = parse_completion(body, request_id=None)
    assert completion.text == "hi" and completion.request_id == "chatcmpl-7"
    assert parse_completion(body, request_id="req-from-header").request_id == "req-from-header"
