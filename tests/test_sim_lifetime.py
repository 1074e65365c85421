"""The embedded simulator lives only as long as the run that started it, even a killed one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import job_text, write_job, write_sim_models, write_tasks

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc"),
]

SLOW_MODELS = """
[models."t/slow"]
usd_per_mtok = { input = 1.0, output = 1.0 }
latency_ms = { mean = 60000, jitter = 0 }
"""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pid:
                found.append(int(entry.name))
    return found


def _listening_port(pid: int) -> int | None:
    """The TCP port `pid` listens on, from its socket fds and /proc/net/tcp."""
    try:
        inodes = {
            os.readlink(fd).removeprefix("socket:[").removesuffix("]")
            for fd in Path(f"/proc/{pid}/fd").iterdir()
        }
    except (FileNotFoundError, PermissionError):
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                return int(fields[1].rsplit(":", 1)[1], 16)
    return None


def _requests(port: int) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/sim/ledger", timeout=5) as response:
        ledger = json.load(response)
    return sum(model["requests"] for model in ledger["models"].values())


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie has exited


def _poll(condition: Callable[[], bool], *, seconds: float) -> bool:
    """Wait for `condition`, up to a generous bound: nothing asserts how long it took."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_killing_a_run_with_an_embedded_simulator_ends_the_simulator(tmp_path: Path) -> None:
    write_tasks(tmp_path, 4)
    models = write_sim_models(tmp_path, SLOW_MODELS)
    body = job_text(
        base_url="embedded",
        route='strategy = "fixed"\nmodel = "t/slow"',
        extra=f'[simulator]\nmodels = "{models.name}"\n',
    ).replace("timeout_s = 5", "timeout_s = 120")
    job = write_job(tmp_path, body)
    run = subprocess.Popen(
        [sys.executable, "-m", "batchroute", "run", str(job)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sims: list[int] = []
    try:
        # Under way: its simulator listens and has calls in flight (each takes 60 s).
        assert _poll(lambda: bool(_children(run.pid)), seconds=60)
        sims = _children(run.pid)
        assert _poll(lambda: _listening_port(sims[0]) is not None, seconds=60)
        port = _listening_port(sims[0])
        assert port is not None
        assert _poll(lambda: _requests(port) > 0, seconds=60)
        assert run.poll() is None
        run.send_signal(signal.SIGKILL)
        run.wait()
        assert _poll(lambda: not any(_alive(pid) for pid in sims), seconds=30), sims
    finally:
        for pid in sims:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
            run.wait()
