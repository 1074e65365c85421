"""The simulator's HTTP server: the aiohttp app around `handlers`, plus /sim control routes."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable

from aiohttp import web

from batchroute.sim import batch_http, handlers
from batchroute.sim.state import Sim

__all__ = ["build_app", "serve"]

SIM_KEY: web.AppKey[Sim] = web.AppKey("sim")


def _web(response: handlers.Response) -> web.Response:
    return web.Response(
        status=response.status,
        body=response.body,
        headers=response.headers,
        content_type="application/json",
        charset=response.charset,
    )


async def _chat(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    authorization = request.headers.get("Authorization")
    # Refuse before reading the body: a client without the key learns nothing more.
    if (refused := handlers.refuse_auth(sim, authorization=authorization)) is not None:
        return _web(refused)
    raw = await request.read()
    return _web(await handlers.chat(sim, raw, authorization=authorization))


async def _models(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    return _web(handlers.models(sim, authorization=request.headers.get("Authorization")))


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
    batch_http.add_routes(app, SIM_KEY)
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
