"""Start the simulator as a subprocess and stop it afterwards, for embedded runs and tests.

The simulator must not outlive its parent: a `batchroute run` killed with SIGKILL runs no
`finally`, and its simulator would serve on, re-parented to PID 1, forever. So the parent
holds the write end of a pipe on the simulator's stdin and never writes to it; the kernel
closes it when the parent dies, however it dies, and the simulator stops at end of file.
`prctl(PR_SET_PDEATHSIG)` is not used: it fires when the *thread* that started the child
ends, and a run starts its simulator from a worker thread that ends long before the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["SimulatorHandle", "SimulatorStartError", "exit_when_stdin_closes", "running_simulator"]

READY_PREFIX = "batchroute sim listening on "
_STOP_GRACE_S = 10.0  # after its parent is gone: to finish answering, then it exits anyway


class SimulatorStartError(RuntimeError):
    """The simulator process exited or stayed silent instead of announcing its address."""


@dataclass(frozen=True)
class SimulatorHandle:
    """A running simulator: where it listens and how to read or clear its ledger."""

    base_url: str  # e.g. http://127.0.0.1:PORT/v1, for an OpenAI client
    root: str  # the same without /v1, where the /sim control routes live
    process: subprocess.Popen[str]

    def ledger(self) -> dict[str, Any]:
        """What the simulator charged so far (GET /sim/ledger)."""
        return self._call("GET", "/sim/ledger")

    def reset(self) -> None:
        """Clear the ledger, balance, retry counters and rate windows (POST /sim/reset)."""
        self._call("POST", "/sim/reset")

    def _call(self, method: str, path: str) -> dict[str, Any]:
        # An empty ProxyHandler: a proxy from the environment must never see loopback calls.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        data = b"" if method == "POST" else None
        request = urllib.request.Request(self.root + path, data=data, method=method)
        with opener.open(request, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
        return result


@contextmanager
def running_simulator(
    *,
    models: Path | None = None,
    seed: int = 0,
    balance: float | None = None,
    api_key: str | None = None,
    fast: bool = False,
    replay: Path | None = None,
    host: str = "127.0.0.1",
    startup_timeout: float = 15.0,
) -> Iterator[SimulatorHandle]:
    """Run `python -m batchroute.sim` on a free port for the duration of the `with` block."""
    cmd = [sys.executable, "-m", "batchroute.sim", "--host", host, "--port", "0"]
    cmd.append("--exit-with-stdin")
    cmd += ["--seed", str(seed)]
    if models is not None:
        cmd += ["--models", str(models)]
    if balance is not None:
        cmd += ["--balance", repr(float(balance))]
    if api_key is not None:
        cmd += ["--api-key", api_key]
    if fast:
        cmd.append("--fast")
    if replay is not None:
        cmd += ["--replay", str(replay)]
    # stderr goes to a file, not a pipe: nobody drains it while the server runs, and a full
    # pipe would block the server; the file is still there to explain a failed start.
    with tempfile.TemporaryFile("w+", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,  # never written; its end of file is our death
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            base_url = _wait_until_listening(process, stderr, timeout=startup_timeout)
            yield SimulatorHandle(
                base_url=base_url, root=base_url.removesuffix("/v1"), process=process
            )
        finally:
            _stop(process)


def _wait_until_listening(
    process: subprocess.Popen[str], stderr: IO[str], *, timeout: float
) -> str:
    """The announced base URL, read on a thread so that a silent process cannot block us."""
    assert process.stdout is not None
    stdout: IO[str] = process.stdout
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        problem = f"did not start listening within {timeout:g} s"
    elif not lines or not lines[0]:
        process.wait(timeout=5)
        problem = f"exited with code {process.returncode} before listening"
    elif not lines[0].startswith(READY_PREFIX):
        problem = f"announced {lines[0].strip()!r} instead of its address"
    else:
        return lines[0].removeprefix(READY_PREFIX).strip()
    _stop(process)
    raise SimulatorStartError(_explain(problem, process, stderr))


def _explain(what: str, process: subprocess.Popen[str], stderr: IO[str]) -> str:
    stderr.seek(0)
    detail = stderr.read().strip()
    where = " ".join(process.args) if isinstance(process.args, list) else str(process.args)
    return f"simulator ({where}) {what}" + (f":\n{detail}" if detail else "")


def exit_when_stdin_closes() -> None:
    """In the simulator: SIGTERM ourselves (a graceful stop) when stdin reaches end of file,
    and exit outright if that stop takes longer than a grace period."""

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass  # a parent writes nothing; whatever comes is ignored
        except (OSError, ValueError, AttributeError):
            pass  # stdin is closed or absent: the same as end of file
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(_STOP_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then five seconds' grace, then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()
