"""A hostile OpenAI-compatible server on 127.0.0.1 whose every answer a test scripts.

It runs its own event loop in a thread, so a test can point `batchroute.run(job)` or the CLI
at it. A test sets `server.script`, a function from the request to an `Answer`: any status,
any headers, any raw body, or a body of `size` filler bytes streamed in chunks (with or
without a Content-Length). Every request it got is kept in `server.requests`.

    with HostileServer() as server:
        server.script = lambda request: Answer(json=completion("hi"), headers={...})
        ... base_url = server.url ...
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_CHUNK = b"x" * 65536


@dataclass(frozen=True)
class Request:
    """What the client sent: its JSON payload and headers (names lower-cased)."""

    payload: dict[str, Any]
    headers: dict[str, str]

    @property
    def model(self) -> str:
        return str(self.payload.get("model"))


@dataclass(frozen=True)
class Answer:
    """What to send back. `json` is serialised; `body` is sent as is; `size` streams filler."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    body: bytes | None = None
    size: int | None = None
    content_length: bool = True  # for `size`: announce it, or stream it chunked
    delay_s: float = 0.0  # wait this long before answering


def completion(
    content: Any = "ok", *, usage: Any = None, choices: Any = None, **extra: Any
) -> dict[str, Any]:
    """A chat.completion body; any part can be replaced by something hostile."""
    if usage is None:
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    if choices is None:
        choices = [{"index": 0, "message": {"role": "assistant", "content": content}}]
    return {"id": "chatcmpl-hostile", "object": "chat.completion", "choices": choices,
            "usage": usage, **extra}  # fmt: skip


def _default(request: Request) -> Answer:
    return Answer(json=completion())


class HostileServer:
    """Start with `with`, or `start()` and `stop()`."""

    def __init__(self) -> None:
        self.script: Callable[[Request], Answer] = _default
        self.requests: list[Request] = []
        self.served = ["h/model", "h/fallback"]  # what GET /models lists
        self.streamed: list[int] = []  # bytes of each streamed body the client took
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> HostileServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # the bound port of port 0; aiohttp has no public accessor
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": name, "object": "model", "owned_by": "hostile"} for name in self.served]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        seen = Request(payload, {k.lower(): v for k, v in request.headers.items()})
        self.requests.append(seen)
        answer = self.script(seen)
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        if answer.size is not None:
            return await self._stream(request, answer)
        body = answer.body
        headers = dict(answer.headers)
        if body is None:
            body = json.dumps(answer.json).encode()
            headers.setdefault("Content-Type", "application/json")
        return web.Response(status=answer.status, body=body, headers=headers)

    async def _stream(self, request: web.Request, answer: Answer) -> web.StreamResponse:
        assert answer.size is not None
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        if answer.content_length:
            response.content_length = answer.size
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        left = answer.size
        try:
            while left > 0:
                chunk = _CHUNK[: min(left, len(_CHUNK))]
                await response.write(chunk)
                left -= len(chunk)
        except (ConnectionResetError, ConnectionError):
            pass  # the client stopped reading, as it should
        finally:
            self.streamed.append(answer.size - left)
        return response
