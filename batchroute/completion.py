"""A chat.completion body validated once, where it enters, into an immutable Completion.

Whatever a server sends is hostile until read here: a count that is a string, a bool, a
fraction, negative or absurd, content that is a number, choices that are not a list. Any of
them makes the body a `BadResponse` (the caller fails the call as `bad_response`, retryable
like a 5xx), so nothing malformed reaches the records, the budget or the store.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

# More tokens than any context window holds: a count beyond it is a lie or a bug, and summed
# into a row it would swamp every real figure.
MAX_TOKENS = 1_000_000_000
_MAX_ID_CHARS = 200


class BadResponse(Exception):
    """A 2xx body that is not a chat completion we can use; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Completion:
    """What a successful answer carried: its text, usage, logprobs and the request's id."""

    text: str | None  # None: the model gave no content (see `refusal`)
    prompt_tokens: int | None
    completion_tokens: int | None
    mean_logprob: float | None  # of the answer's tokens, when logprobs were asked for
    request_id: str | None
    refusal: str | None = None
    tool_calls: str | None = None  # the message's tool calls, as JSON, when it made any

    @property
    def total_tokens(self) -> int | None:
        if self.prompt_tokens is None:
            return None
        return self.prompt_tokens + (self.completion_tokens or 0)


def parse_completion(body: Any, *, request_id: str | None) -> Completion:
    """Read the answer and usage of a chat.completion body; raise BadResponse if any field
    is malformed. `request_id` is the header's; without it, the completion's own id is used."""
    if not isinstance(body, dict):
        raise BadResponse("not a chat completion (the body is not a JSON object)")
    usage = body.get("usage")
    if usage is None:
        usage = {}
    if not isinstance(usage, dict):
        raise BadResponse("usage is not an object")
    prompt_tokens = _count(usage.get("prompt_tokens"), "usage.prompt_tokens")
    completion_tokens = _count(usage.get("completion_tokens"), "usage.completion_tokens")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise BadResponse("choices is not a non-empty list")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise BadResponse("choices[0].message is not an object")
    text = _content(message.get("content"))
    tool_calls = _tool_calls(message.get("tool_calls"))
    if text is None and tool_calls is not None:
        text = ""  # a tool call is an answer: its calls are in `tool_calls`
    refusal = message.get("refusal") if text is None else None
    # issue 7 (real peers): LiteLLM and llmock send no x-request-id header; the completion's
    # own id is the request id they log.
    own_id = body.get("id")
    if request_id is None and isinstance(own_id, str):
        request_id = own_id
    return Completion(
        text=text,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        mean_logprob=_mean_logprob(choice),
        request_id=request_id[:_MAX_ID_CHARS] if request_id is not None else None,
        refusal=str(refusal)[:300] if isinstance(refusal, str) and refusal else None,
        tool_calls=tool_calls,
    )


def _tool_calls(value: Any) -> str | None:
    """The message's tool calls as JSON text; None when it made none. Each must be an object
    (the server's JSON is re-serialised, so what is kept is valid JSON)."""
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(call, dict) for call in value):
        raise BadResponse(f"message.tool_calls is not a list of objects: {_show(value)}")
    return json.dumps(value, ensure_ascii=False)


def _count(value: Any, name: str) -> int | None:
    """A token count: absent, or a whole number from 0 to MAX_TOKENS (12.0 reads as 12)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadResponse(f"{name} is not a number: {_show(value)}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise BadResponse(f"{name} is not a whole number: {_show(value)}")
    if not 0 <= value <= MAX_TOKENS:
        raise BadResponse(f"{name} is out of range: {_show(value)}")
    return int(value)


def _content(value: Any) -> str | None:
    """The message's text: a string, or a list of parts whose text parts are concatenated
    (as OpenAI's text content parts are); None when the message has no content."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise BadResponse(f"message.content is neither text nor a list of parts: {_show(value)}")
    texts = []
    for part in value:
        if not isinstance(part, dict):
            raise BadResponse(f"a part of message.content is not an object: {_show(part)}")
        if part.get("type") != "text":
            continue  # a refusal or a non-text part is not the answer's text
        text = part.get("text")
        if not isinstance(text, str):
            raise BadResponse(f"a text part of message.content has no text: {_show(part)}")
        texts.append(text)
    return "".join(texts) if texts else None


def _mean_logprob(choice: dict[str, Any]) -> float | None:
    """The mean token logprob of an answer, when the request asked for logprobs; values that
    are not finite numbers are left out."""
    logprobs = choice.get("logprobs")
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list) or not tokens:
        return None
    values = [t.get("logprob") for t in tokens if isinstance(t, dict)]
    numbers = [
        float(v)
        for v in values
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    return sum(numbers) / len(numbers) if numbers else None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
