"""A chat request as the simulator reads it: the body validated into the parts answers use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["BadRequest", "ChatRequest", "parse_chat"]


class BadRequest(ValueError):
    """A chat request the simulator refuses with 400; `param` names the offending field."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of an OpenAI chat request that the simulator's answer depends on."""

    model: str
    texts: list[str]  # every message's text, for prompt token counts
    roles: list[str]  # every message's role, in the order of `texts`
    prompt: str  # the last user message's text: what the answer is about
    max_tokens: int | None
    mode: str  # "text", "json_object" or "json_schema"
    schema: Any
    logprobs: bool
    received: dict[str, Any]  # the whole body but `model`, as received (for echo)


def parse_chat(raw: bytes) -> ChatRequest:
    """Validate a request body; raises BadRequest with a message a client developer can act on."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("`model` must be a non-empty string.", param="model")
    if body.get("stream"):
        raise BadRequest("The simulator does not stream; send stream=false.", param="stream")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list.", param="messages")
    texts: list[str] = []
    roles: list[str] = []
    prompt = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a role.", param="messages")
        text = _text(message.get("content"), index=i)
        texts.append(text)
        roles.append(message["role"])
        if message["role"] == "user":
            prompt = text
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise BadRequest("`max_tokens` must be a positive integer.", param="max_tokens")
    mode, schema = _response_format(body.get("response_format"))
    return ChatRequest(
        model=model,
        texts=texts,
        roles=roles,
        prompt=texts[-1] if prompt is None else prompt,
        max_tokens=limit,
        mode=mode,
        schema=schema,
        logprobs=body.get("logprobs") is True,
        received={k: v for k, v in body.items() if k != "model"},
    )


def _text(content: Any, *, index: int) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        # Multi-part content: the text parts, joined; images and audio carry no text here.
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    raise BadRequest(f"messages[{index}].content must be a string or a list.", param="messages")


def _response_format(value: Any) -> tuple[str, Any]:
    if value is None:
        return "text", None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("text", "json_object"):
        return kind, None
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            message = "`response_format.json_schema.schema` must be an object."
            raise BadRequest(message, param="response_format")
        return "json_schema", spec.get("schema", {})
    message = "`response_format.type` must be text, json_object or json_schema."
    raise BadRequest(message, param="response_format")
