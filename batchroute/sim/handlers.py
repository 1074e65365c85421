"""The simulator's answers to the API's two routes, as status, headers and body, without HTTP.

The aiohttp server (`server.py`) and in-process test transports call the same two functions,
so an answer is the same whether it crosses a socket or not. A chat completion passes these
gates in order, and the first that refuses answers:
auth (401) -> parse (400) -> model lookup (404) -> injected error (429/500/503/hang)
-> rate limit (429) -> balance (402) -> latency sleep -> answer (200, charged).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from batchroute.sim import answers, followups
from batchroute.sim.config import ModelSpec
from batchroute.sim.request import BadRequest, ChatRequest, parse_chat
from batchroute.sim.state import ModelBook, Sim

__all__ = ["FAST", "Response", "chat", "models", "refuse_auth"]

FAST = "ok"  # the --fast mode's constant answer


@dataclass(frozen=True, slots=True)
class Response:
    """One answer before HTTP: the body is JSON, sent with `charset` when it is set."""

    status: int
    headers: dict[str, str]
    body: bytes
    charset: str | None = "utf-8"


# Each refusal as OpenAI spells it: status, error type, error code, default message.
_ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    "400": (400, "invalid_request_error", None, "Bad request."),
    "401": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    "402": (402, "insufficient_quota", "insufficient_quota", "The balance is used up."),
    "404": (404, "invalid_request_error", "model_not_found", "The model does not exist."),
    "429": (429, "rate_limit_error", "rate_limit_exceeded", "Rate limit reached (injected)."),
    "500": (500, "server_error", None, "The server had an error (injected)."),
    "503": (503, "server_error", None, "The engine is overloaded, try again later (injected)."),
    "hang": (504, "server_error", "timeout", "The model did not answer in time (injected)."),
}


def _error(
    key: str,
    *,
    headers: dict[str, str] | None = None,
    message: str | None = None,
    param: str | None = None,
) -> Response:
    status, kind, code, default = _ERRORS[key]
    error = {"message": message or default, "type": kind, "param": param, "code": code}
    body = json.dumps({"error": error}).encode()
    return Response(status, dict(headers or {}), body)


def _completion(
    req: ChatRequest,
    *,
    rid: str,
    content: str,
    finish: str,
    usage: tuple[int, int],
    logprobs: list[dict[str, Any]] | None = None,
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    tool = _forced_tool(req)
    if tool is not None:
        # A forced tool call: the answer is its arguments, and there is no content.
        function = {"name": tool, "arguments": json.dumps({"answer": content})}
        call = {"id": f"call_{rid}", "type": "function", "function": function}
        message |= {"content": None, "tool_calls": [call]}
        finish = "tool_calls"
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
        "finish_reason": finish,
    }
    body = {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": "batchroute-sim",
        "choices": [choice],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        },
    }
    return json.dumps(body).encode()


def _forced_tool(req: ChatRequest) -> str | None:
    """The function a request forces (`tool_choice` "required" or naming one), if any."""
    tools, choice = req.received.get("tools"), req.received.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice in (None, "none", "auto"):
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return name if isinstance(name, str) else None
    first = tools[0].get("function") if isinstance(tools[0], dict) else None
    name = first.get("name") if isinstance(first, dict) else None
    return name if choice == "required" and isinstance(name, str) else None


def refuse_auth(sim: Sim, *, authorization: str | None) -> Response | None:
    """The 401 for a request whose Authorization header `sim` does not accept, else None."""
    if sim.auth is None or authorization == sim.auth:
        return None
    sim.rejected["401"] += 1
    return _error("401")


async def chat(sim: Sim, raw: bytes, *, authorization: str | None) -> Response:
    """POST /v1/chat/completions with body `raw`; may sleep (latency, hangs) in this loop."""
    if (refused := refuse_auth(sim, authorization=authorization)) is not None:
        return refused
    try:
        req = parse_chat(raw)
    except BadRequest as exc:
        sim.rejected["400"] += 1
        return _error("400", message=str(exc), param=exc.param)
    spec = sim.config.models.get(req.model)
    book = sim.books.get(req.model)
    if book is None:  # unknown names get a ledger entry too, to show what a job misspelled
        book = sim.books[req.model] = ModelBook()
    book.requests += 1
    if sim.replay is not None and sim.replay.serves(req.model):
        return _replayed(sim, req, book=book)
    if spec is None:
        book.errors["404"] += 1
        return _error("404", message=f"The model `{req.model}` does not exist.", param="model")
    rid = sim.next_id()
    headers = {"x-request-id": f"req_{rid}"}
    prompt_tokens = answers.count_prompt_tokens(req.texts)
    if sim.fast:
        content, completion_tokens, finish = answers.complete(FAST, max_tokens=req.max_tokens)
        headers |= sim.charge(book, spec, prompt=prompt_tokens, completion=completion_tokens)
        usage = (prompt_tokens, completion_tokens)
        body = _completion(req, rid=rid, content=content, finish=finish, usage=usage)
        return Response(200, headers, body, charset=None)
    window, now = sim.windows[req.model], time.monotonic()
    fault = sim.fault(req.model, spec, req.prompt)
    if fault is not None:
        book.errors[fault] += 1
        return await _inject(fault, spec=spec, headers=headers | window.headers(now=now))
    d = followups.draw(req, skill=spec.skill, format_fix=spec.format_fix, seed=sim.seed)
    text = json.dumps(req.received, sort_keys=True) if spec.echo else None
    text = text or answers.render(d, mode=req.mode, schema=req.schema)
    content, completion_tokens, finish = answers.complete(text, max_tokens=req.max_tokens)
    # tpm counts the actual prompt + completion tokens, known up front since answers are pure.
    tokens = prompt_tokens + completion_tokens
    wait = window.wait_s(tokens, now=now, prompt=prompt_tokens)
    if wait > 0:  # refused requests take no slot, so a client that waits as told gets in
        book.errors["429"] += 1
        headers |= window.headers(now=now)
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        message = f"Rate limit reached for {req.model}; retry in {wait:.3f}s."
        return _error("429", headers=headers, message=message)
    if sim.balance <= 0:
        book.errors["402"] += 1
        return _error("402", headers=headers | window.headers(now=now))
    window.admit(tokens, now=now, prompt=prompt_tokens)
    headers |= window.headers(now=now)
    if (delay := sim.latency_s(spec)) > 0:
        await asyncio.sleep(delay)
    headers |= sim.charge(book, spec, prompt=prompt_tokens, completion=completion_tokens)
    logprobs = None
    if req.logprobs:
        logprobs = answers.token_logprobs(content, correct=d.correct, seed=d.logprob_seed)
    usage = (prompt_tokens, completion_tokens)
    body = _completion(req, rid=rid, content=content, finish=finish, usage=usage, logprobs=logprobs)
    return Response(200, headers, body, charset=None)


def _replayed(sim: Sim, req: ChatRequest, *, book: ModelBook) -> Response:
    """Replay mode: the recorded response, usage and cost; no latency, limits or faults."""
    from batchroute.sim.replay import ReplayMiss  # polars: loaded only when replaying

    assert sim.replay is not None
    rid = sim.next_id()
    headers = {"x-request-id": f"req_{rid}"}
    replay = sim.replay

    def recorded(prompt: str) -> str | None:
        try:
            return replay.reply(req.model, prompt).content
        except ReplayMiss:
            return None

    try:
        reply = replay.reply(req.model, followups.replayed_task(req, recorded=recorded))
    except ReplayMiss as exc:
        book.errors[exc.status] = book.errors.get(exc.status, 0) + 1
        return _error(exc.status, headers=headers, message=str(exc), param="messages")
    if sim.balance <= 0:
        book.errors["402"] += 1
        return _error("402", headers=headers)
    usage = (reply.prompt_tokens, reply.completion_tokens)
    headers |= sim.book_charge(book, usd=reply.cost_usd, prompt=usage[0], completion=usage[1])
    body = _completion(req, rid=rid, content=reply.content, finish="stop", usage=usage)
    return Response(200, headers, body, charset=None)


async def _inject(fault: str, *, spec: ModelSpec, headers: dict[str, str]) -> Response:
    if fault == "429":
        # A provider-side limit the client cannot predict; it says to come back shortly.
        return _error("429", headers=headers | {"Retry-After": "1", "retry-after-ms": "200"})
    if fault == "hang":
        # The client is meant to time out first; then this is cancelled (aiohttp does so when
        # the client disconnects, handler_cancellation=True), which ends the sleep harmlessly.
        await asyncio.sleep(spec.hang_s)
    return _error(fault, headers=headers)


def models(sim: Sim, *, authorization: str | None) -> Response:
    """GET /v1/models: the table's models, and the replayed ones."""
    if (refused := refuse_auth(sim, authorization=authorization)) is not None:
        return refused
    replayed = sim.replay.served if sim.replay is not None else ()
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "batchroute-sim"}
        for name in dict.fromkeys([*sim.config.models, *replayed])
    ]
    return Response(200, {}, json.dumps({"object": "list", "data": data}).encode())
