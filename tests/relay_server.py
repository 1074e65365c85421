"""A relay on 127.0.0.1 that forwards every request to an upstream server as it is, except the
batch polls (`GET /v1/batches/{id}`) and lists (`GET /v1/batches`) a test asks it to fail.

It stands between the LiteLLM proxy and the simulator, so the proxy meets an upstream that
fails now and then, as a provider does. It runs its own event loop in a thread.

    with Relay(sim.root) as relay:
        relay.fail_polls = 2      # the next two polls get a 503
        ... proxy config api_base = relay.url + "/v1" ...
"""

from __future__ import annotations

import asyncio
import re
import threading
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp import web

_POLL = re.compile(r"/v1/batches/[^/]+")
# Not forwarded: they describe this hop (or ask for an encoding the relay would pass on as is).
_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "accept-encoding"})


class Relay:
    """Forwards to `upstream` (a root URL, no /v1); fails the next `fail_polls` polls."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.fail_polls = 0
        self.failed = 0  # polls answered 503 so far
        self.fail_lists = 0  # the next lists of batches (`GET /v1/batches`) to answer 500
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        # An empty environment's proxies: trust_env stays off, so loopback never goes elsewhere.
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        if request.method == "GET" and _POLL.fullmatch(request.path) and self.fail_polls > 0:
            self.fail_polls -= 1
            self.failed += 1
            error = {"message": "The server is overloaded.", "type": "server_error"}
            return web.json_response({"error": error}, status=503)
        if request.method == "GET" and request.path == "/v1/batches" and self.fail_lists > 0:
            self.fail_lists -= 1
            return web.Response(status=500, text="Internal Server Error")  # as LiteLLM's
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=await request.read(),
            headers=headers,
        ) as response:
            body = await response.read()
            kept = {k: v for k, v in response.headers.items() if k.lower() not in _HOP}
            return web.Response(status=response.status, body=body, headers=kept)
