"""The simulator's HTTP server: an aiohttp app that prices, paces, limits and fails like a provider.

A chat completion passes these gates in order, and the first that refuses answers:
auth (401) -> parse (400) -> model lookup (404) -> injected error (429/500/503/hang)
-> rate limit (429) -> balance (402) -> latency sleep -> answer (200, charged).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import random
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from batchroute.sim import answers
from batchroute.sim.config import ModelSpec, SimConfig
from batchroute.sim.replay import ReplayMiss, ReplayTable

__all__ = ["BadRequest", "ChatRequest", "RateWindow", "Sim", "build_app", "parse_chat", "serve"]

WINDOW_S = 60.0
FAST = "ok"  # the --fast mode's constant answer
ERROR_KEYS = ("429", "500", "503", "hang", "402", "404")
SIM_KEY: web.AppKey[Sim] = web.AppKey("sim")


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
    prompt: str  # the last user message's text: what the answer is about
    max_tokens: int | None
    mode: str  # "text", "json_object" or "json_schema"
    schema: Any
    logprobs: bool


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
    texts, prompt = [], None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a role.", param="messages")
        text = _text(message.get("content"), index=i)
        texts.append(text)
        if message["role"] == "user":
            prompt = text
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise BadRequest("`max_tokens` must be a positive integer.", param="max_tokens")
    mode, schema = _response_format(body.get("response_format"))
    return ChatRequest(
        model=model,
        texts=texts,
        prompt=texts[-1] if prompt is None else prompt,
        max_tokens=limit,
        mode=mode,
        schema=schema,
        logprobs=body.get("logprobs") is True,
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


class RateWindow:
    """Requests and tokens one model admitted in the last 60 s, against its rpm and tpm."""

    __slots__ = ("rpm", "tpm", "_events", "_tokens")

    def __init__(self, *, rpm: int, tpm: int) -> None:
        self.rpm, self.tpm = rpm, tpm
        self._events: deque[tuple[float, int]] = deque()
        self._tokens = 0

    def _expire(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self._events and self._events[0][0] <= horizon:
            self._tokens -= self._events.popleft()[1]

    def wait_s(self, tokens: int, *, now: float) -> float:
        """Seconds until a request of `tokens` tokens fits the window; 0.0 when it fits now."""
        self._expire(now)
        events, wait = self._events, 0.0
        if self.rpm and len(events) >= self.rpm:
            # The slot frees when the request that pushes the count over the limit expires.
            wait = events[len(events) - self.rpm][0] + WINDOW_S - now
        if self.tpm and self._tokens + tokens > self.tpm:
            excess, freed = self._tokens + tokens - self.tpm, 0
            for start, used in events:
                freed += used
                if freed >= excess:
                    wait = max(wait, start + WINDOW_S - now)
                    break
            else:  # larger than the whole budget: it never fits, say so a window at a time
                wait = max(wait, WINDOW_S)
        return wait

    def admit(self, tokens: int, *, now: float) -> None:
        self._events.append((now, tokens))
        self._tokens += tokens

    def headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers, as providers send them on every response."""
        out = {}
        if self.rpm:
            out["x-ratelimit-limit-requests"] = str(self.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, self.rpm - len(self._events)))
        if self.tpm:
            out["x-ratelimit-limit-tokens"] = str(self.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, self.tpm - self._tokens))
        return out


@dataclass(slots=True)
class ModelBook:
    """What the simulator did and charged for one model."""

    requests: int = 0
    ok: int = 0
    charged_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KEYS, 0))


class Sim:
    """The server's whole state: config, balance, ledger, retry counters and rate windows."""

    def __init__(
        self,
        config: SimConfig,
        *,
        seed: int = 0,
        balance: float | None = None,
        api_key: str | None = None,
        fast: bool = False,
        replay: ReplayTable | None = None,
    ) -> None:
        self.config, self.seed, self.fast = config, seed, fast
        self.replay = replay  # replay mode: these models answer from recorded outputs
        self.start_balance = config.balance_usd if balance is None else balance
        self.auth = None if api_key is None else f"Bearer {api_key}"
        self._ids = itertools.count()
        self._id_prefix = os.urandom(4).hex()
        self.reset()

    def reset(self) -> None:
        """Forget every charge, count and window, as if the server had just started."""
        self.balance = self.start_balance
        self.total_charged = 0.0
        self.books = {name: ModelBook() for name in self.config.models}
        self.rejected = {"400": 0, "401": 0}
        # Keyed by a digest of (model, prompt) so long prompts are not kept in memory.
        self.seen: dict[bytes, int] = {}
        self.windows = {
            name: RateWindow(rpm=m.rpm, tpm=m.tpm) for name, m in self.config.models.items()
        }
        self.rng = random.Random(self.seed)

    def next_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):012x}"

    def fault(self, model: str, spec: ModelSpec, prompt: str) -> str | None:
        """The injected failure for this request, if any.

        The draw hashes (seed, model, prompt, k) where k counts earlier requests of the same
        (model, prompt): a retry draws again, and a run replays identically in any order.
        """
        e = spec.errors
        if not (e.rate_429 or e.rate_500 or e.rate_503 or e.hang):
            return None
        key = answers.digest_key(model, prompt)
        k = self.seen.get(key, 0)
        self.seen[key] = k + 1
        u = answers.unit_draw(self.seed, model, prompt, k)
        for name, p in (("429", e.rate_429), ("500", e.rate_500), ("503", e.rate_503)):
            if u < p:
                return name
            u -= p
        return "hang" if u < e.hang else None

    def latency_s(self, spec: ModelSpec) -> float:
        """A delay uniform in [mean - jitter, mean + jitter] milliseconds, floor 0, in seconds."""
        latency = spec.latency_ms
        low, high = latency.mean - latency.jitter, latency.mean + latency.jitter
        return max(0.0, self.rng.uniform(low, high)) / 1000

    def charge(
        self, book: ModelBook, spec: ModelSpec, *, prompt: int, completion: int
    ) -> dict[str, str]:
        """Book a successful call; returns the charge and balance headers."""
        prices = spec.usd_per_mtok
        usd = (prompt * prices.input + completion * prices.output) / 1e6
        return self.book_charge(book, usd=usd, prompt=prompt, completion=completion)

    def book_charge(
        self, book: ModelBook, *, usd: float, prompt: int, completion: int
    ) -> dict[str, str]:
        """Book a successful call charged `usd`; returns the charge and balance headers."""
        charged = f"{usd:.10f}"
        # Add exactly what the header says, so a client summing headers matches the ledger.
        value = float(charged)
        self.balance -= value
        self.total_charged += value
        book.ok += 1
        book.charged_usd += value
        book.prompt_tokens += prompt
        book.completion_tokens += completion
        return {"X-MDB-Charged-USD": charged, "X-MDB-Balance-USD": f"{self.balance:.10f}"}

    def ledger(self) -> dict[str, Any]:
        return {
            "balance_usd": self.balance,
            "starting_balance_usd": self.start_balance,
            "total_charged_usd": self.total_charged,
            "rejected": dict(self.rejected),
            "models": {
                name: {
                    "requests": b.requests,
                    "ok": b.ok,
                    "charged_usd": b.charged_usd,
                    "prompt_tokens": b.prompt_tokens,
                    "completion_tokens": b.completion_tokens,
                    "errors": dict(b.errors),
                }
                for name, b in self.books.items()
            },
        }


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
) -> web.Response:
    status, kind, code, default = _ERRORS[key]
    error = {"message": message or default, "type": kind, "param": param, "code": code}
    body = json.dumps({"error": error})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def _completion(
    req: ChatRequest,
    *,
    rid: str,
    content: str,
    finish: str,
    usage: tuple[int, int],
    logprobs: list[dict[str, Any]] | None = None,
) -> bytes:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": content, "refusal": None},
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


def _refuse_auth(request: web.Request, sim: Sim) -> web.Response | None:
    if sim.auth is None or request.headers.get("Authorization") == sim.auth:
        return None
    sim.rejected["401"] += 1
    return _error("401")


async def _chat(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    if (refused := _refuse_auth(request, sim)) is not None:
        return refused
    try:
        req = parse_chat(await request.read())
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
        return web.Response(body=body, content_type="application/json", headers=headers)
    window = sim.windows[req.model]
    fault = sim.fault(req.model, spec, req.prompt)
    if fault is not None:
        book.errors[fault] += 1
        return await _inject(fault, spec=spec, headers=headers | window.headers())
    d = answers.draw(req.prompt, model=req.model, skill=spec.skill, seed=sim.seed)
    text = answers.render(d, mode=req.mode, schema=req.schema)
    content, completion_tokens, finish = answers.complete(text, max_tokens=req.max_tokens)
    # tpm counts the actual prompt + completion tokens, known up front since answers are pure.
    tokens, now = prompt_tokens + completion_tokens, time.monotonic()
    wait = window.wait_s(tokens, now=now)
    if wait > 0:  # refused requests take no slot, so a client that waits as told gets in
        book.errors["429"] += 1
        headers |= window.headers()
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        message = f"Rate limit reached for {req.model}; retry in {wait:.3f}s."
        return _error("429", headers=headers, message=message)
    if sim.balance <= 0:
        book.errors["402"] += 1
        return _error("402", headers=headers | window.headers())
    window.admit(tokens, now=now)
    headers |= window.headers()
    if (delay := sim.latency_s(spec)) > 0:
        await asyncio.sleep(delay)
    headers |= sim.charge(book, spec, prompt=prompt_tokens, completion=completion_tokens)
    logprobs = None
    if req.logprobs:
        logprobs = answers.token_logprobs(content, correct=d.correct, seed=d.logprob_seed)
    usage = (prompt_tokens, completion_tokens)
    body = _completion(req, rid=rid, content=content, finish=finish, usage=usage, logprobs=logprobs)
    return web.Response(body=body, content_type="application/json", headers=headers)


def _replayed(sim: Sim, req: ChatRequest, *, book: ModelBook) -> web.Response:
    """Replay mode: the recorded response, usage and cost; no latency, limits or faults."""
    assert sim.replay is not None
    rid = sim.next_id()
    headers = {"x-request-id": f"req_{rid}"}
    try:
        reply = sim.replay.reply(req.model, req.prompt)
    except ReplayMiss as exc:
        book.errors[exc.status] = book.errors.get(exc.status, 0) + 1
        return _error(exc.status, headers=headers, message=str(exc), param="messages")
    if sim.balance <= 0:
        book.errors["402"] += 1
        return _error("402", headers=headers)
    usage = (reply.prompt_tokens, reply.completion_tokens)
    headers |= sim.book_charge(book, usd=reply.cost_usd, prompt=usage[0], completion=usage[1])
    body = _completion(req, rid=rid, content=reply.content, finish="stop", usage=usage)
    return web.Response(body=body, content_type="application/json", headers=headers)


async def _inject(fault: str, *, spec: ModelSpec, headers: dict[str, str]) -> web.Response:
    if fault == "429":
        # A provider-side limit the client cannot predict; it says to come back shortly.
        return _error("429", headers=headers | {"Retry-After": "1", "retry-after-ms": "200"})
    if fault == "hang":
        # The client is meant to time out first; when it disconnects aiohttp cancels this
        # handler (handler_cancellation=True), which ends the sleep without harm.
        await asyncio.sleep(spec.hang_s)
    return _error(fault, headers=headers)


async def _models(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    if (refused := _refuse_auth(request, sim)) is not None:
        return refused
    replayed = sim.replay.served if sim.replay is not None else ()
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "batchroute-sim"}
        for name in dict.fromkeys([*sim.config.models, *replayed])
    ]
    return web.json_response({"object": "list", "data": data})


async def _ledger(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].ledger())


async def _reset(request: web.Request) -> web.Response:
    request.app[SIM_KEY].reset()
    return web.json_response({"ok": True})


def build_app(sim: Sim) -> web.Application:
    """The aiohttp application serving `sim` under /v1 plus its /sim control routes."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[SIM_KEY] = sim
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/sim/ledger", _ledger)
    app.router.add_post("/sim/reset", _reset)
    return app


async def serve(sim: Sim, *, host: str, port: int, ready: Callable[[str], None]) -> None:
    """Serve `sim` until SIGTERM or SIGINT; `ready` gets the base URL once it listens."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Binding our own socket is how port 0 tells us which port it picked.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Cancel handlers of clients that went away (hung requests), and do not wait on them long.
    runner = web.AppRunner(
        build_app(sim), access_log=None, handler_cancellation=True, shutdown_timeout=0.5
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock, backlog=1024).start()
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        ready(f"http://{shown}:{bound}/v1")
        await stop.wait()
    finally:
        await runner.cleanup()
