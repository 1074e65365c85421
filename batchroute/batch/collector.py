"""The BatchCollector: gathers one model's requests from the rows in flight into batches, and
hands each row the reply of its line, as an online call would have.

Rows still run concurrently through router -> executor -> caller; for a batch tier the Caller
`submit`s its request here and waits. A batch is sent when `size` requests wait (the run's
concurrency) or when none arrived for `quiet_s` (every row that could come is waiting). Its
file is recorded in the store before the batch is created, the batch before it is polled
(durable.py), so a rerun of a killed run re-attaches to it: a request whose key the store
holds in one of the run's batches waits on that batch instead of going into a new one.
"""

from __future__ import annotations

import functools
import itertools
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from batchroute.batch import jsonl
from batchroute.batch.client import BatchApiError, BatchClient, BatchState
from batchroute.batch.durable import UPLOADED, BatchRow, BatchTable
from batchroute.transport import Reply, TransportError

log = logging.getLogger("batchroute")

Progress = Callable[[str, BatchState], None]  # (model, state) at each change of a batch


@dataclass(frozen=True, slots=True)
class Where:
    """Which run, job and endpoint a collector's batches belong to, as the store files them."""

    run_id: str
    job_key: str
    endpoint: str  # the endpoint's identity (its URL, or the embedded simulator's settings)


@dataclass(slots=True)
class _Slot:
    """A row waiting on its line."""

    reply: Reply | None = None
    error: TransportError | None = None
    done: anyio.Event = field(default_factory=anyio.Event)

    def resolve(self, reply: Reply) -> None:
        if not self.done.is_set():
            self.reply = reply
            self.done.set()


@dataclass(slots=True)
class _Attached:
    """A batch recorded by an earlier process of this run: collected once a row claims it."""

    row: BatchRow
    slots: dict[str, _Slot] = field(default_factory=dict)
    started: bool = False


class BatchCollector:
    """One model's batch tier. Create inside the running loop; `run` it in a task group."""

    def __init__(
        self,
        model: str,
        *,
        client: BatchClient,
        table: BatchTable,
        where: Where,
        window: str,
        size: int,
        max_requests: int,
        max_bytes: int,
        poll_s: tuple[float, float] = (0.05, 30.0),
        quiet_s: float = 1.0,
        progress: Progress | None = None,
    ) -> None:
        self.model = model
        self._client, self._table, self._where = client, table, where
        self._window, self._size = window, size
        self._max_requests, self._max_bytes = max_requests, max_bytes
        self._poll_s, self._quiet_s = poll_s, quiet_s
        self._progress = progress
        self._pending: list[tuple[str, bytes, dict[str, Any], _Slot]] = []
        self._arrived = anyio.Event()
        self._closed = False
        self._ids = itertools.count()
        self._claims: dict[bytes, list[tuple[_Attached, str]]] = {}  # key -> recorded lines
        self._tg: anyio.abc.TaskGroup | None = None
        self.batches = 0  # created by this process

    async def open(self) -> None:
        """Read the run's recorded batches for this model: their lines can be claimed."""
        rows = await anyio.to_thread.run_sync(
            lambda: self._table.open_files(
                self._where.run_id, endpoint=self._where.endpoint, model=self.model
            )
        )
        for row in rows:
            attached = _Attached(row)
            for custom_id, key in await anyio.to_thread.run_sync(self._table.lines, row.file_id):
                self._claims.setdefault(key, []).append((attached, custom_id))

    async def submit(self, key: bytes, payload: dict[str, Any]) -> Reply:
        """The reply to `payload` (request key `key`) once its batch is collected; raises
        TransportError when the Batch API could not be reached."""
        slot = _Slot()
        claims = self._claims.get(key)
        if claims:
            attached, custom_id = claims.pop(0)
            attached.slots[custom_id] = slot
            if not attached.started:
                attached.started = True
                assert self._tg is not None
                self._tg.start_soon(self._reattach, attached)
        else:
            custom_id = f"{key.hex()[:20]}-{next(self._ids)}"
            self._pending.append((custom_id, key, payload, slot))
            self._arrived.set()
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        assert slot.reply is not None
        return slot.reply

    def close(self) -> None:
        """Every row is done: `run` returns. A batch still in flight has no row waiting on it
        (they were cancelled: an interrupt); it stays recorded, and a rerun collects it."""
        self._closed = True
        self._arrived.set()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            while True:
                await self._arrived.wait()
                # Gather until the batch is full or the rows stopped coming.
                while len(self._pending) < self._size and not self._closed:
                    self._arrived = anyio.Event()
                    with anyio.move_on_after(self._quiet_s) as quiet:
                        await self._arrived.wait()
                    if quiet.cancelled_caught:
                        break
                items, self._pending = self._pending[: self._size], self._pending[self._size :]
                self._arrived = anyio.Event()
                if self._pending or (self._closed and not items):
                    self._arrived.set()
                if items:
                    tg.start_soon(self._send, items)
                elif self._closed:
                    return

    async def _send(self, items: list[tuple[str, bytes, dict[str, Any], _Slot]]) -> None:
        """Write, upload, record, create; then collect. Each file of a split is its own batch."""
        slots = {custom_id: slot for custom_id, _, _, slot in items}
        keys = {custom_id: key for custom_id, key, _, _ in items}
        with tempfile.TemporaryDirectory(prefix="batchroute-") as scratch:
            requests = [(custom_id, payload) for custom_id, _, payload, _ in items]
            del items  # the rows hold their payloads; the list need not outlive the file
            write = functools.partial(
                jsonl.write_parts,
                requests,
                directory=Path(scratch),
                max_requests=self._max_requests,
                max_bytes=self._max_bytes,
            )
            parts = await anyio.to_thread.run_sync(write)
            del requests, write
            async with anyio.create_task_group() as tg:
                for part in parts:
                    part_slots = {c: slots[c] for c in part.custom_ids}
                    lines = [(c, keys[c]) for c in part.custom_ids]
                    tg.start_soon(self._send_part, part, part_slots, lines)

    async def _send_part(
        self, part: jsonl.Part, slots: dict[str, _Slot], lines: list[tuple[str, bytes]]
    ) -> None:
        try:
            file_id = await self._client.upload(part.path)
            where = self._where
            await anyio.to_thread.run_sync(
                lambda: self._table.record_file(
                    file_id,
                    run_id=where.run_id,
                    job_key=where.job_key,
                    endpoint=where.endpoint,
                    model=self.model,
                    lines=lines,
                )
            )
            part.path.unlink()
            state = await self._create(file_id)
            self.batches += 1
            await self._collect(file_id, state, slots)
        except (BatchApiError, TransportError) as exc:
            _fail_all(slots, exc)

    async def _create(self, file_id: str) -> BatchState:
        metadata = {"batchroute_run": self._where.run_id, "model": self.model}
        state = await self._client.create(file_id, window=self._window, metadata=metadata)
        await anyio.to_thread.run_sync(self._table.record_batch, file_id, state.id, state.status)
        return state

    async def _reattach(self, attached: _Attached) -> None:
        row = attached.row
        log.debug("re-attaching to %s (%s)", row.batch_id or row.file_id, self.model)
        try:
            if row.batch_id is None or row.status == UPLOADED:
                # Recorded as uploaded: the kill may have come after the provider created the
                # batch and before its id was recorded. Find it before creating another.
                found = await self._find(row.file_id, uploaded_at=row.created_at)
                if found is None:
                    state = await self._create(row.file_id)  # never created: no re-upload
                else:
                    state = found
                    await anyio.to_thread.run_sync(
                        self._table.record_batch, row.file_id, state.id, state.status
                    )
            else:
                state = await self._client.retrieve(row.batch_id)
            await self._collect(row.file_id, state, attached.slots)
        except (BatchApiError, TransportError) as exc:
            _fail_all(attached.slots, exc)

    async def _find(self, file_id: str, *, uploaded_at: float) -> BatchState | None:
        """The batch the provider made from `file_id`, if its list of batches shows one. A
        list that cannot be read (a proxy turns a provider's 404 into a 500) is no worse than
        before the lookup existed: a new batch, and a warning that one may be paid twice."""
        try:
            return await self._client.find(file_id, created_since=uploaded_at - 60)
        except (BatchApiError, TransportError) as exc:
            # Only the status: a server's own words may echo the key.
            why = f"HTTP {exc.status}" if isinstance(exc, BatchApiError) else type(exc).__name__
            log.warning(
                "model %s: could not look for the batch of %s among the provider's batches"
                " (%s); creating one: if the killed run had created it, both are paid",
                self.model,
                file_id,
                why,
            )
            return None

    async def _collect(self, file_id: str, state: BatchState, slots: dict[str, _Slot]) -> None:
        """Poll with backoff until the batch ends, then resolve every slot from its files."""
        delay, cap = self._poll_s
        last = None
        failures = 0
        while True:
            if (state.status, state.completed, state.failed) != last:
                last = (state.status, state.completed, state.failed)
                if self._progress is not None:
                    self._progress(self.model, state)
            if state.done:
                break
            await anyio.sleep(delay)
            delay = min(delay * 1.5, cap)
            try:
                state = await self._client.retrieve(state.id)
                failures = 0
            except (BatchApiError, TransportError) as exc:
                failures += 1
                if not _transient(exc) or failures >= _POLL_FAILURES:
                    raise
                log.warning("polling batch %s failed (%s); polling on", state.id, exc)
        await anyio.to_thread.run_sync(self._table.set_status, file_id, state.status)
        with tempfile.TemporaryDirectory(prefix="batchroute-") as scratch:
            for name in ("output_file_id", "error_file_id"):
                out_id = getattr(state, name)
                if out_id is None:
                    continue
                dest = Path(scratch) / name
                await self._client.download(out_id, dest, max_bytes=4 * self._max_bytes)
                # Read in chunks from a worker thread: never the whole file in memory at once.
                replies = jsonl.read_replies(dest)
                while chunk := await anyio.to_thread.run_sync(_take, replies):
                    for custom_id, reply in chunk:
                        slot = slots.get(custom_id)
                        if slot is not None:
                            slot.resolve(reply)
        # Expired lines are retried (a timeout's 408); a failed batch's file would fail again and
        # a cancelled one was stopped on purpose, so those rows fail (4xx); else try again.
        status = {"expired": jsonl.EXPIRED, "failed": 400, "cancelled": 499}.get(state.status, 503)
        missing = jsonl.failure(
            status,
            f"batch {state.id} ended {state.status} without this line's answer",
            code=f"batch_{state.status}",
        )
        for slot in slots.values():
            slot.resolve(missing)


# A poll that fails for a moment (a timeout, a 429, a 5xx; the LiteLLM proxy turns any error
# of the provider into a bare 500) does not end the wait: the batch runs on at the provider,
# and failing its lines would send them again in a new batch, paid twice. Only this many
# failures in a row (about 15 minutes at the capped delay) give up on it.
_POLL_FAILURES = 30


def _transient(exc: BatchApiError | TransportError) -> bool:
    return isinstance(exc, TransportError) or exc.status == 429 or exc.status >= 500


def _take(replies: Iterator[tuple[str, Reply]], size: int = 1000) -> list[tuple[str, Reply]]:
    return list(itertools.islice(replies, size))


def _fail_all(slots: dict[str, _Slot], exc: BatchApiError | TransportError) -> None:
    for slot in slots.values():
        if slot.done.is_set():
            continue
        if isinstance(exc, TransportError):
            slot.error = exc
            slot.done.set()
        else:
            slot.resolve(jsonl.failure(exc.status, str(exc), code="batch_api"))
