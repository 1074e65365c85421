"""`batchroute status` and `batchroute cancel`: a job's recorded batches, asked about or
cancelled at the provider (a batch of an embedded simulator is gone with its run: its
recorded state is shown)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import anyio

from batchroute.batch.client import BatchApiError, BatchClient, BatchState
from batchroute.batch.durable import OPEN, BatchRow, BatchTable
from batchroute.endpoints import api_keys
from batchroute.job import Job
from batchroute.transport import TransportError


def status_lines(job: Job) -> list[str]:
    """One line per recorded batch of `job`: id, model, status and counts, as of now."""
    return anyio.run(_visit, job, False, backend="asyncio")


def cancel_lines(job: Job) -> list[str]:
    """Cancel every batch of `job` that is still open; one line per batch touched."""
    return anyio.run(_visit, job, True, backend="asyncio")


async def _visit(job: Job, cancel: bool) -> list[str]:
    path = job.store.path
    if path is None or not path.exists():
        return [f"{job.source}: no batches recorded (no store at {path})"]
    table = BatchTable(path)
    try:
        rows = table.of_job(job.key())
        if not rows:
            return [f"{job.source}: no batches recorded"]
        keys = api_keys(job)
        lines = []
        async with contextlib.AsyncExitStack() as stack:
            clients: dict[str, BatchClient] = {}
            for row in rows:
                endpoint_name = job.endpoint_name(row.model)
                endpoint = job.all_endpoints()[endpoint_name]
                live = row.batch_id is not None and not endpoint.embedded
                if cancel and (not live or row.status not in OPEN):
                    continue
                if not live:
                    lines.append(_line(row, None, note="recorded"))
                    continue
                if endpoint_name not in clients:
                    client = BatchClient(
                        base_url=endpoint.base_url,
                        api_key=keys[endpoint_name],
                        timeout_s=endpoint.timeout_s,
                    )
                    clients[endpoint_name] = await stack.enter_async_context(client)
                lines.append(await _ask(clients[endpoint_name], table, row, cancel=cancel))
        if cancel and not lines:
            lines.append(f"{job.source}: no open batch to cancel")
        return lines
    finally:
        table.close()


async def _ask(client: BatchClient, table: BatchTable, row: BatchRow, *, cancel: bool) -> str:
    assert row.batch_id is not None
    try:
        state = await (client.cancel if cancel else client.retrieve)(row.batch_id)
    except (BatchApiError, TransportError) as exc:
        return _line(row, None, note=f"provider: {exc}")
    table.set_status(row.file_id, state.status)
    return _line(row, state, note="cancel requested" if cancel else "")


def _line(row: BatchRow, state: BatchState | None, *, note: str) -> str:
    started = datetime.fromtimestamp(row.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    if state is None:
        counts = f"{row.lines} requests"
        status = row.status
    else:
        counts = f"{state.completed + state.failed}/{state.total} done, {state.failed} failed"
        status = state.status
    name = row.batch_id or f"(file {row.file_id}, no batch)"
    tail = f" ({note})" if note else ""
    return f"{name}  {row.model}  {status}  {counts}  run {row.run_id}  {started} UTC{tail}"
