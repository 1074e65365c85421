"""What an HTTP answer or a transport error means for a call: the one place that decides.

Both transports' answers come through `classify`; a failure is retryable (timeout, 5xx, 429
with its Retry-After), fall-back-able (model unavailable, context too long, a body over the
size cap), fatal (auth, out of credit: stop the run) or the row's own.
"""

from __future__ import annotations

from collections.abc import Callable

from batchroute.errors import CallFailure, FailureKind, one_line
from batchroute.retry import parse_retry_after
from batchroute.transport import Reply, ResponseTooLarge, TransportError, TransportTimeout

__all__ = ["classify", "classify_transport_error"]

# Codes that mean "this model cannot take this request, another might" rather than "the
# request is wrong": the fallback model may have a longer context or actually exist.
_FALLBACK_ERROR_CODES = {"context_length_exceeded", "model_not_found"}


def classify(reply: Reply, *, redact: Callable[[str], str] = str) -> CallFailure | None:
    """What an HTTP answer means for the call: None for a 2xx, else what to do about it.

    The only place that decides; both transports' answers come through here. The server's
    message passes `redact` before it is cut to one line, so no part of a secret survives.
    """
    status = reply.status
    if 200 <= status < 300:
        return None
    error = reply.error
    message = _server_line(redact(str(error.get("message") or reply.text or f"HTTP {status}")))
    error_kind = f"http_{status}"
    if status in (401, 403):
        return CallFailure(FailureKind.FATAL, error_kind, message, status)
    if status == 402 or error.get("code") == "insufficient_quota":
        # Out of credit (OpenAI says so with a 429 and this code): every later call would get
        # the same answer, so retrying only burns time.
        return CallFailure(FailureKind.FATAL, error_kind, message, status)
    if status in (408, 409, 429) or status >= 500:
        # 408/409 are transient by convention (the openai SDK's own retry list); 429 and 5xx
        # say "later", and when the server says how much later we honour it.
        retry_after = parse_retry_after(reply.headers)
        return CallFailure(FailureKind.RETRYABLE, error_kind, message, status, retry_after)
    if status == 404 or error.get("code") in _FALLBACK_ERROR_CODES:
        return CallFailure(FailureKind.FALLBACK, error_kind, message, status)
    return CallFailure(FailureKind.ROW, error_kind, message, status)


def classify_transport_error(exc: TransportError) -> CallFailure:
    """No usable HTTP answer: a timeout or a failed connection, both worth another try, or a
    body over the size cap."""
    if isinstance(exc, ResponseTooLarge):
        # Not retried: the same request to the same model would most likely bring the same
        # oversized answer, paid again each time; another model (a fallback) may answer
        # within the cap, so it moves on as a model that cannot serve the request does.
        return CallFailure(FailureKind.FALLBACK, "response_too_large", str(exc))
    if isinstance(exc, TransportTimeout):
        return CallFailure(FailureKind.RETRYABLE, "timeout", "request timed out")
    return CallFailure(FailureKind.RETRYABLE, "connection", _server_line(str(exc)))


def _server_line(text: str) -> str:
    return one_line(text, whole=True)
