"""Real servers that no one here wrote (llmock, the LiteLLM proxy, llama.cpp), for the tests.

Each server is a program in its own virtualenv under `.peers/` (made by `make peers` and
`make model`; `BATCHROUTE_PEERS` points elsewhere), because their pinned dependencies clash
with batchroute's own (LiteLLM 1.108.7 wants polars < 2). A test reaches a server only over
HTTP on 127.0.0.1, through `running_server`, which waits for readiness within a bound and
always stops the process.

No test may pass without its server: when one is missing or does not start, `unavailable`
fails the test with the reason when `CI` is set, and skips it with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(os.environ.get("BATCHROUTE_PEERS", ROOT / ".peers"))


class ServerUnavailable(RuntimeError):
    """The server is not installed, or did not become ready."""


def unavailable(reason: str) -> NoReturn:
    """Fail in CI, where every real server must run; skip with the reason elsewhere."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"real server unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"real server unavailable: {reason}")


def peer_program(venv: str, program: str, *, installed_by: str) -> Path:
    """The path of `program` in the peer virtualenv `venv`, or `unavailable` saying why."""
    path = PEERS / venv / "bin" / program
    if not path.exists():
        unavailable(f"{path} is not installed (run `{installed_by}`)")
    return path


def free_port() -> int:
    """A port nothing listens on now; the server binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    """A running server: its root URL (no /v1) and its process."""

    root: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], Any]:
        """One HTTP request: status, headers (lower-case names) and the JSON body."""
        return http(method, self.root + path, body=body, headers=headers, timeout=timeout)


def http(
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], Any]:
    # An empty ProxyHandler: a proxy from the environment must never see loopback calls.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with opener.open(request, timeout=timeout) as response:
            status, raw, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, got = error.code, error.read(), error.headers
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return status, {k.lower(): v for k, v in got.items()}, parsed


@contextmanager
def running_server(
    name: str,
    command: list[str],
    *,
    ready_path: str,
    port: int,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 60.0,
) -> Iterator[Server]:
    """Start `command` (which must listen on 127.0.0.1:`port`), wait until `ready_path`
    answers 200, yield it, and stop it whatever happens.

    Output goes to a log file, not a pipe: nobody drains a pipe while the server runs, and a
    full one would block it; the file's tail explains a failed start.
    """
    log = log_dir / f"{name}.log"
    root = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: stopped as one, with its workers
        )
        try:
            _wait_ready(name, process, root + ready_path, log, timeout=startup_timeout)
            yield Server(root=root, process=process, log=log)
        finally:
            _stop(process)


def _wait_ready(
    name: str, process: subprocess.Popen[bytes], url: str, log: Path, *, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerUnavailable(
                f"{name} exited with code {process.returncode} before it was ready:\n{_tail(log)}"
            )
        try:
            status, _, _ = http("GET", url, timeout=2)
        except OSError:
            status = 0  # not listening yet
        if status == 200:
            return
        time.sleep(0.2)
    raise ServerUnavailable(f"{name} was not ready within {timeout:g} s:\n{_tail(log)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, ten seconds' grace, then SIGKILL."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            process.wait()


def _tail(log: Path, lines: int = 30) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
