"""The simulator in the test process: its handlers called as a transport, with no socket.

Like httpx's `MockTransport`: the Caller gets `Reply`s from the same code that answers over
HTTP (`batchroute.sim.handlers`), so tests of routing, checks and accounting run without a
subprocess or a port. Tests of HTTP itself keep the real server (`running_simulator`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.lowlevel
from multidict import CIMultiDict, CIMultiDictProxy

from batchroute import load_job
from batchroute.job import Job
from batchroute.options import RunOptions
from batchroute.runner import RunReport, run
from batchroute.sim import handlers
from batchroute.sim.config import load_sim_config
from batchroute.sim.replay import ReplayTable
from batchroute.sim.state import Sim
from batchroute.transport import Reply, TransportConnection, TransportTimeout

# What in-process job files name as their endpoint: never resolved, nothing listens there.
IN_PROCESS_URL = "http://in-process.invalid/v1"


class InProcessTransport:
    """A `Transport` whose requests `sim` answers in this event loop."""

    def __init__(self, sim: Sim, *, api_key: str, timeout_s: float) -> None:
        self._sim = sim
        self._authorization = f"Bearer {api_key}"
        self._timeout_s = timeout_s
        self._closed = False

    async def chat(self, payload: dict[str, Any]) -> Reply:
        # Encoded as AiohttpTransport sends it, so the simulator parses the same bytes.
        raw = json.dumps(payload, ensure_ascii=False).encode()
        return await self._answer(raw)

    async def models(self, *, after: str | None = None) -> Reply:
        return await self._answer(None)  # the simulator's list is one page

    async def _answer(self, raw: bytes | None) -> Reply:
        if self._closed:
            raise TransportConnection("the transport is closed")
        try:
            # The timeout cancels a hang or a latency sleep, as a client's timeout does over
            # HTTP (where aiohttp then cancels the handler).
            with anyio.fail_after(self._timeout_s):
                # A request costs at least one turn of the loop, as a socket round trip does:
                # other rows' tasks run in between, as they would over HTTP.
                await anyio.lowlevel.checkpoint()
                if raw is None:
                    response = handlers.models(self._sim, authorization=self._authorization)
                else:
                    response = await handlers.chat(
                        self._sim, raw, authorization=self._authorization
                    )
        except TimeoutError:
            raise TransportTimeout("request timed out") from None
        headers = CIMultiDict(response.headers)
        content_type = "application/json"
        if response.charset:
            content_type += f"; charset={response.charset}"
        headers["Content-Type"] = content_type
        text = response.body.decode("utf-8", "replace")
        return Reply(response.status, CIMultiDictProxy(headers), json.loads(text), text)

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


@dataclass
class InProcessSim:
    """One simulator for in-process runs: jobs name `base_url`, `run` runs them, and the
    ledger is read straight from the state the handlers charge."""

    sim: Sim
    base_url: str = IN_PROCESS_URL

    def transport(
        self, name: str, /, *, base_url: str, api_key: str, timeout_s: float
    ) -> InProcessTransport:
        """A `TransportFactory`: every endpoint of the job is this simulator."""
        return InProcessTransport(self.sim, api_key=api_key, timeout_s=timeout_s)

    def options(self, **options: Any) -> RunOptions:
        return RunOptions(transport_factory=self.transport, **options)

    def run(self, job: Path | Job, **options: Any) -> RunReport:
        """Run a job file (or a loaded job) to the end, its calls answered in-process."""
        loaded = load_job(job) if isinstance(job, Path) else job
        return run(loaded, self.options(**options))

    def ledger(self) -> dict[str, Any]:
        return self.sim.ledger()

    def reset(self) -> None:
        self.sim.reset()


def embedded_sim(job: Job) -> InProcessSim:
    """The simulator `base_url = "embedded"` would start for `job`, built in-process."""
    settings = job.simulator
    replay = ReplayTable.read(settings.replay) if settings.replay is not None else None
    sim = Sim(
        load_sim_config(settings.models),
        seed=settings.seed,
        balance=settings.balance_usd,
        replay=replay,
    )
    return InProcessSim(sim)
