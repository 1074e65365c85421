"""Provider Batch APIs as a tier: a model in `mode = "batch"` gets its calls through a
BatchCollector (JSONL file, batch, output file) at the batch price, the rest of the row
pipeline unchanged; which tiers ran in which mode, and why, is said in the summary."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
from tqdm import tqdm

from batchroute.batch.client import BatchClient, BatchState
from batchroute.batch.collector import BatchCollector, Where
from batchroute.batch.durable import BatchTable
from batchroute.job import Job, duration_s

__all__ = ["BatchTiers", "tier_modes"]


def tier_modes(job: Job) -> dict[str, str]:
    """Each batch-mode model's mode for this run: "batch", or "online" and why."""
    modes: dict[str, str] = {}
    deadline = job.run.deadline
    for name, model in job.models.items():
        if model.mode != "batch":
            continue
        if deadline is not None and duration_s(deadline) < duration_s(model.completion_window):
            window = model.completion_window
            modes[name] = f"online (run.deadline {deadline} is before its {window} window)"
        else:
            modes[name] = "batch"
    return modes


class BatchTiers:
    """The run's batch collectors, by model; `run` them beside the rows, `close` after."""

    def __init__(self, collectors: Mapping[str, BatchCollector], modes: dict[str, str]) -> None:
        self.collectors = collectors
        self.modes = modes

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        job: Job,
        *,
        base_urls: Mapping[str, str],
        api_keys: Mapping[str, str],
        identities: Mapping[str, str],
        run_id: str,
        store_path: Path,
        quiet: bool,
    ) -> AsyncIterator[BatchTiers]:
        modes = tier_modes(job)
        batched = [m for m, mode in modes.items() if mode == "batch"]
        if not batched:
            yield cls({}, modes)
            return
        table = await anyio.to_thread.run_sync(BatchTable, store_path)
        bars = _Bars(enabled=not quiet and sys.stderr.isatty())
        try:
            async with contextlib.AsyncExitStack() as stack:
                clients: dict[str, BatchClient] = {}
                collectors: dict[str, BatchCollector] = {}
                for model in batched:
                    endpoint = job.endpoint_name(model)
                    if endpoint not in clients:
                        client = BatchClient(
                            base_url=base_urls[endpoint],
                            api_key=api_keys[endpoint],
                            timeout_s=job.all_endpoints()[endpoint].timeout_s,
                        )
                        clients[endpoint] = await stack.enter_async_context(client)
                    config = job.model(model)
                    collector = BatchCollector(
                        model,
                        client=clients[endpoint],
                        table=table,
                        where=Where(run_id, job.key(), identities[endpoint]),
                        window=config.completion_window,
                        size=job.run.concurrency,
                        max_requests=config.batch_max_requests,
                        max_bytes=config.batch_max_bytes,
                        progress=bars.show,
                    )
                    await collector.open()
                    collectors[model] = collector
                yield cls(collectors, modes)
        finally:
            bars.close()
            table.close()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for collector in self.collectors.values():
                tg.start_soon(collector.run)

    def close(self) -> None:
        for collector in self.collectors.values():
            collector.close()

    def summary(self) -> str:
        """ "; modes: X batch (2 batches), Y online (...)" or "" when no tier asked for batch."""
        if not self.modes:
            return ""
        shown = []
        for model, mode in self.modes.items():
            collector = self.collectors.get(model)
            made = f" ({collector.batches} batches)" if collector is not None else ""
            shown.append(f"{model} {mode}{made}")
        return "; modes: " + ", ".join(shown)


class _Bars:
    """One tqdm bar per batch, of the batch's own counts, when stderr is a terminal."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._bars: dict[str, Any] = {}

    def show(self, model: str, state: BatchState) -> None:
        if not self._enabled:
            return
        bar = self._bars.get(state.id)
        if bar is None:
            bar = self._bars[state.id] = tqdm(total=state.total, unit="req", file=sys.stderr)
        bar.set_description_str(f"{model} batch {state.status}", refresh=False)
        bar.total = state.total
        bar.n = state.completed + state.failed
        bar.set_postfix_str(f"{state.failed} failed", refresh=False)
        bar.refresh()
        if state.done:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
