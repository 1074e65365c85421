"""A real headless Chromium driven over the DevTools protocol, to check pages as users see them.

`open_page(path)` loads a local file, and returns what rendered (from a script evaluated in
the page), every console message, uncaught exception and log error, every URL the page tried
to fetch, and a full-page screenshot. The DevTools websocket is aiohttp's client, which the
project already depends on, so no browser-automation package is needed.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

# The flags for a root user in a container, and no traffic of the browser's own.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str | None:
    """The Chromium binary, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageVisit:
    """What happened when the page was opened."""

    probe: Any = None  # the value of the probe expression
    console: list[str] = field(default_factory=list)  # console messages of any level
    errors: list[str] = field(default_factory=list)  # exceptions, console errors, log errors
    requests: list[str] = field(default_factory=list)  # every URL the page requested
    screenshot: bytes = b""


async def _visit(ws_url: str, url: str, *, probe: str, width: int) -> PageVisit:
    visit = PageVisit()
    ids = itertools.count(1)
    waiting: dict[int, asyncio.Future[Any]] = {}
    loaded = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url, max_msg_size=0) as ws:

            async def read() -> None:
                async for message in ws:
                    data = json.loads(message.data)
                    if "id" in data and data["id"] in waiting:
                        waiting.pop(data["id"]).set_result(data)
                        continue
                    _note(visit, data.get("method"), data.get("params", {}), loaded)

            async def send(method: str, **params: Any) -> Any:
                number = next(ids)
                waiting[number] = asyncio.get_running_loop().create_future()
                await ws.send_json({"id": number, "method": method, "params": params})
                reply = await asyncio.wait_for(waiting[number], 30)
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

            reader = asyncio.create_task(read())
            try:
                for domain in ("Page", "Runtime", "Log", "Network"):
                    await send(f"{domain}.enable")
                await send(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=900,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                visit.requests.clear()  # the blank start page's own, if any
                await send("Page.navigate", url=url)
                await asyncio.wait_for(loaded.wait(), 30)
                result = await send("Runtime.evaluate", expression=probe, returnByValue=True)
                visit.probe = result["result"].get("value")
                shot = await send(
                    "Page.captureScreenshot", format="png", captureBeyondViewport=True
                )
                visit.screenshot = base64.b64decode(shot["data"])
            finally:
                reader.cancel()
    return visit


def _note(
    visit: PageVisit, method: str | None, params: dict[str, Any], loaded: asyncio.Event
) -> None:
    if method == "Page.loadEventFired":
        loaded.set()
    elif method == "Runtime.consoleAPICalled":
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
        visit.console.append(f"{params['type']}: {text}")
        if params["type"] in ("error", "assert"):
            visit.errors.append(f"console.{params['type']}: {text}")
    elif method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        visit.errors.append(f"exception: {details.get('text')} {details.get('exception', '')}")
    elif method == "Log.entryAdded":
        entry = params["entry"]
        visit.console.append(f"{entry['level']}: {entry['text']}")
        if entry["level"] == "error":
            visit.errors.append(f"log: {entry['text']}")
    elif method == "Network.requestWillBeSent":
        visit.requests.append(params["request"]["url"])


def open_page(path: Path, *, probe: str, width: int = 1400) -> PageVisit:
    """Open `path` in a fresh headless Chromium, evaluate `probe`, screenshot the whole page."""
    binary = chromium()
    assert binary is not None, "chromium is not installed"
    # Cleanup errors are ignored: a helper process may still be writing its profile as it ends.
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        browser: str | None = None
        try:
            port, browser = _devtools(process)
            targets = json.loads(_get(f"http://127.0.0.1:{port}/json/list"))
            page = next(t for t in targets if t.get("type") == "page")
            url = path.resolve().as_uri()
            return asyncio.run(_visit(page["webSocketDebuggerUrl"], url, probe=probe, width=width))
        finally:
            _stop(process, browser)


def _stop(process: subprocess.Popen[str], browser: str | None) -> None:
    """Browser.close first: a clean exit takes Chromium's helper processes along; then
    SIGTERM, then SIGKILL, to the process this module started."""
    if browser is not None and process.poll() is None:
        try:
            asyncio.run(_close(browser))
        except (aiohttp.ClientError, TimeoutError):
            pass  # it is going anyway
    for signal_it in (process.terminate, process.kill):
        if process.poll() is None:
            signal_it()
        try:
            process.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


async def _close(browser_ws: str) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(browser_ws) as ws:
        await ws.send_json({"id": 1, "method": "Browser.close"})
        await ws.receive(timeout=10)


_LISTENING = re.compile(r"DevTools listening on (ws://[^:]+:(\d+)/\S+)")


def _devtools(process: subprocess.Popen[str]) -> tuple[int, str]:
    """The port and browser websocket Chromium announces on stderr; a thread keeps draining
    stderr after it, so the browser never blocks on a full pipe."""
    assert process.stderr is not None
    stderr = process.stderr
    found: list[tuple[int, str]] = []
    lines: list[str] = []
    announced = threading.Event()

    def drain() -> None:
        for line in stderr:
            lines.append(line)
            match = _LISTENING.search(line)
            if match and not found:
                found.append((int(match.group(2)), match.group(1)))
                announced.set()
        announced.set()  # stderr closed: the process is gone

    threading.Thread(target=drain, daemon=True).start()
    if not announced.wait(30) or not found:
        tail = "".join(lines[-5:]).strip()
        raise RuntimeError(f"chromium did not open its DevTools port: {tail}")
    return found[0]


def _get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return str(response.read().decode())
