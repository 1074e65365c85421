"""A chat.completion body read once, where it enters, into an immutable Completion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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

    @property
    def total_tokens(self) -> int | None:
        if self.prompt_tokens is None:
            return None
        return self.prompt_tokens + (self.completion_tokens or 0)


def parse_completion(body: Any, *, request_id: str | None) -> Completion:
    """Pull the answer and usage out of a chat.completion body; raise BadResponse if it is not
    one. `request_id` is the header's; without it, the completion's own id is used."""
    try:
        usage = body.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        choice = body["choices"][0]
        message = choice["message"]
        content = message.get("content")
    except (AttributeError, KeyError, IndexError, TypeError):
        raise BadResponse("not a chat completion") from None
    # issue 7 (real peers): LiteLLM and llmock send no x-request-id header; the completion's
    # own id is the request id they log.
    if request_id is None and isinstance(body.get("id"), str):
        request_id = body["id"]
    refusal = message.get("refusal") if content is None else None
    return Completion(
        text=content,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        mean_logprob=_mean_logprob(choice),
        request_id=request_id,
        refusal=refusal,
    )


def _mean_logprob(choice: Any) -> float | None:
    """The mean token logprob of an answer, when the request asked for logprobs."""
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list) or not tokens:
        return None
    values = [t.get("logprob") for t in tokens if isinstance(t, dict)]
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    return sum(numbers) / len(numbers) if numbers else None
