"""One run of a job: stream the dataset, route, execute rows concurrently, write the outputs."""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import polars as pl
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batchroute.batch import BatchTiers
from batchroute.budget import Budget
from batchroute.caller import Caller
from batchroute.control import RunControl
from batchroute.dataset import Batch
from batchroute.endpoints import endpoint_urls, used_endpoints
from batchroute.engines.paths import check_remote_outputs, stage_input, upload_outputs
from batchroute.errors import BatchrouteError, DatasetError, Interrupted, OutputError, RunStopped
from batchroute.executor import Executor
from batchroute.interrupts import watch_signals
from batchroute.job import Job
from batchroute.limits import Limits
from batchroute.models_list import check_served
from batchroute.options import RunOptions
from batchroute.parsed import parser_for
from batchroute.preflight import Prepared, prepare
from batchroute.progress import ProgressBar, RunStats, top_tier_cost, top_tier_of
from batchroute.records import (
    FAILED,
    SKIPPED,
    CallRecord,
    RowResult,
    call_schema,
    calls_frame,
    result_schema,
    results_frame,
)
from batchroute.router import Routed
from batchroute.sink import ParquetSink
from batchroute.store import CallCache, StoreReader, StoreWriter
from batchroute.transport import Transport, open_transport
from batchroute.version import __version__


@dataclass(slots=True)
class RunReport:
    """What `run` returns: where the outputs are, the summary, and why it stopped early."""

    run_id: str
    results_path: Path
    calls_path: Path
    summary: dict[str, Any]
    summary_line: str
    resumed: bool = False
    stop_error: RunStopped | None = None
    # The error that ended the most failed rows, and how many it ended; None if none failed.
    top_error: tuple[str, int] | None = None
    hints: tuple[str, ...] = ()  # what the checks before the first row suspect is wrong

    def _repr_html_(self) -> str:
        """The summary, the figures and the outputs' paths, in a notebook."""
        from batchroute.notebook_html import report_html

        return report_html(self)

    @property
    def no_row_ok(self) -> bool:
        """Rows failed and not one ended ok (likely a wrong URL, model or key): exit 5."""
        return self.summary.get("failed", 0) > 0 and self.summary.get("ok", 0) == 0


async def arun(job: Job, options: RunOptions | None = None) -> RunReport:
    """Run `job` inside an already running event loop (a notebook, a script using anyio)."""
    options = options or RunOptions()
    try:
        async with contextlib.AsyncExitStack() as stack:
            # Object-store inputs are copied in (the checks before the first call read them;
            # the Ray engine's workers then read the URL itself), outputs checked now and
            # uploaded at the end (engines/paths.py).
            await anyio.to_thread.run_sync(partial(check_remote_outputs, job, force=options.force))
            await anyio.to_thread.run_sync(stage_input, job)
            prep = await anyio.to_thread.run_sync(prepare, job, options)
            stack.callback(prep.close)  # the store, and the job's lock
            # Starting the embedded simulator, if any endpoint is one, blocks: a worker thread.
            if options.transport_factory is None:
                base_urls = await anyio.to_thread.run_sync(stack.enter_context, endpoint_urls(job))
            else:  # the factory's transports answer; nothing listens
                base_urls = {name: e.base_url for name, e in used_endpoints(job).items()}
            if job.run.engine == "ray":
                from batchroute.engines.ray_engine import RayRun

                report = await RayRun(job, prep, options).execute(base_urls)
            else:
                report = await _Run(job, prep, options).execute(base_urls)
            await anyio.to_thread.run_sync(upload_outputs, job)
            return report
    except BaseExceptionGroup as group:
        # A task group wraps what its tasks raised; our own errors (bad data met mid-stream,
        # an interrupt) must reach the caller as themselves, to become one-line messages.
        raise _ours(group) or group from None
    raise AssertionError("unreachable")  # pragma: no cover


def _ours(group: BaseExceptionGroup) -> BatchrouteError | None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _ours(exc)
            if found is not None:
                return found
        elif isinstance(exc, BatchrouteError):
            return exc
    return None


def run(job: Job, options: RunOptions | None = None) -> RunReport:
    """Run `job` to the end from synchronous code; returns the report."""
    return anyio.run(lambda: arun(job, options), backend="asyncio")


_T = TypeVar("_T")


@dataclass(slots=True)
class _BatchSlot:
    """A batch in flight: its rows' results fill in any order, it is written in input order."""

    batch: Batch
    rows: list[dict[str, Any]]  # the batch's rows as the executor reads them
    results: list[RowResult | None]
    remaining: int
    done: anyio.Event = field(default_factory=anyio.Event)


class _Run:
    """The state of one run inside its event loop."""

    def __init__(self, job: Job, prep: Prepared, options: RunOptions) -> None:
        self.job = job
        self.prep = prep
        self.options = options
        self.id_dtype = prep.dataset.id_dtype()
        schema = prep.dataset.schema
        self.input_schema = {k: (v() if isinstance(v, type) else v) for k, v in schema.items()}
        self.parser = parser_for(job.settings())  # the typed `parsed` column, if any
        outputs = result_schema(self.id_dtype, parser=self.parser)
        self.result_cols = {k: v for k, v in outputs.items() if k not in self.input_schema}
        self.control = RunControl()
        self.stats = RunStats(total=prep.dataset.num_rows)
        self.stats.top_tier = top_tier_of(prep.router)
        self.pending_calls: list[CallRecord] = []
        self.row_scopes: set[anyio.CancelScope] = set()
        self.hard_stop = False
        self.errors: Counter[str] = Counter()  # failed rows by their error
        self.hints: list[str] = []
        # A row that stops converting mid-stream (the file changed under the run): the rows
        # before it were paid for, so they are written first and the error raised after.
        self.dataset_error: DatasetError | None = None
        self.base_urls: dict[str, str] = {}
        self.modes = ""  # which tiers ran as batches, for the summary line

    def _sinks(self) -> tuple[ParquetSink, ParquetSink]:
        job, prep = self.job, self.prep
        metadata = {
            "run_id": prep.run_id,
            "job_key": job.key(),
            "batchroute_version": __version__,
            "started_at": datetime.now(UTC).isoformat(),
            "input": str(job.input.path),
            "strategy": prep.router.strategy,
            "job": job.settings(),
            # Relative to the results file, so the pair can be moved together.
            "calls_file": prep.calls_file,
        }
        results = ParquetSink(
            job.output.path,
            schema={**self.input_schema, **self.result_cols},
            metadata={**metadata, "table": "results"},
            run_id=prep.run_id,
        )
        calls = ParquetSink(
            job.output.calls_path,
            schema=call_schema(self.id_dtype),
            metadata={**metadata, "table": "calls"},
            run_id=prep.run_id,
        )
        return results, calls

    async def execute(self, base_urls: dict[str, str]) -> RunReport:
        """`base_urls`: where each endpoint the job uses listens, by endpoint name.

        Everything opened here is closed by one exit stack, in reverse order, however the run
        ends: the outputs' temporary files are dropped unless finished, then the connections.
        """
        self.base_urls = base_urls
        async with contextlib.AsyncExitStack() as stack:
            transports = await self._open_transports(stack, base_urls)
            results_sink, calls_sink = await self._open_sinks(stack)
            bar = stack.enter_context(
                contextlib.closing(ProgressBar(self.stats, quiet=self.options.quiet))
            )
            await self._run(transports, bar, results_sink, calls_sink)
            summary = await self._finish(results_sink, calls_sink)
        if self.dataset_error is not None:
            raise self.dataset_error
        prep = self.prep
        top_error = self.errors.most_common(1)[0] if self.errors else None
        summary_line = self.stats.summary_line() + self.modes
        if top_error is not None:
            summary_line += f"; most common error ({top_error[1]} rows): {top_error[0]}"
        return RunReport(
            run_id=prep.run_id,
            results_path=self.job.output.path,
            calls_path=self.job.output.calls_path,
            summary=summary,
            summary_line=summary_line,
            resumed=prep.resumed,
            stop_error=self.control.stop_error,
            top_error=top_error,
            hints=tuple(self.hints),
        )

    async def _open_transports(
        self, stack: contextlib.AsyncExitStack, base_urls: dict[str, str]
    ) -> dict[str, Transport]:
        """One transport per endpoint, each checked to serve the job's models."""
        job = self.job
        transports: dict[str, Transport] = {}
        for name, base_url in base_urls.items():
            transports[name] = await stack.enter_async_context(
                self._transport(name, base_url=base_url)
            )
        if self.options.cache != "offline":  # a model an endpoint lacks stops the run here
            for name, base_url in base_urls.items():
                hint = await check_served(
                    job, endpoint=name, transport=transports[name], base_url=base_url
                )
                if hint is not None:
                    self.hints.append(hint)
        return transports

    async def _open_sinks(
        self, stack: contextlib.AsyncExitStack
    ) -> tuple[ParquetSink, ParquetSink]:
        """The two outputs, written under temporary names that are dropped unless finished."""
        sinks = self._sinks()
        for key, sink in zip(("output.path", "output.calls"), sinks, strict=True):
            stack.callback(sink.abort)  # after `finish`, a no-op
            try:
                await anyio.to_thread.run_sync(sink.open)
            except OutputError as exc:
                raise OutputError(f"{self.job.source}: {key}: {exc}") from None
        return sinks

    async def _run(
        self,
        transports: dict[str, Transport],
        bar: ProgressBar,
        results_sink: ParquetSink,
        calls_sink: ParquetSink,
    ) -> None:
        """Every row, with the store's reader and writer beside them and, from the command
        line, the signal watcher above them."""
        job, prep = self.job, self.prep
        writer, reader = StoreWriter(prep.store), StoreReader(prep.store)
        identities = {name: job.endpoint_identity(name) for name in transports}
        cache = CallCache(
            prep.store,
            writer,
            run_id=prep.run_id,
            endpoint_of=lambda model: identities[job.endpoint_name(model)],
            mode=self.options.cache,
            reader=reader,
        )
        await cache.open()
        batch_tiers = BatchTiers.open(
            job,
            base_urls=self.base_urls,
            api_keys=prep.api_keys,
            identities=identities,
            run_id=prep.run_id,
            store_path=prep.store.path,
            quiet=self.options.quiet,
        )
        async with batch_tiers as tiers, anyio.create_task_group() as outer:
            caller = Caller(
                transports,
                job=job,
                limits=Limits(job),
                control=self.control,
                budget=Budget(job, control=self.control),
                cache=cache,
                rng=random.Random(),
                batches=tiers.collectors,
            )
            executor = Executor(caller, job=job)
            if self.options.handle_signals:
                outer.start_soon(self._watch_signals, outer.cancel_scope)
            async with anyio.create_task_group() as inner:
                inner.start_soon(writer.run)
                inner.start_soon(reader.run)
                inner.start_soon(tiers.run)
                try:
                    await self._pipeline(executor, bar, results_sink, calls_sink)
                finally:
                    writer.close()  # the writer commits what is queued, then ends
                    reader.close()
                    tiers.close()  # every row is in: the collectors have nothing left
            outer.cancel_scope.cancel()  # the signal watcher's work is done
            self.modes = tiers.summary()
        if self.hard_stop:
            raise Interrupted("stopped at once; every finished call is in the store")

    async def _finish(self, results_sink: ParquetSink, calls_sink: ParquetSink) -> dict[str, Any]:
        """Move the outputs into place with the summary; close the run in the store."""
        self.stats.balances_usd = dict(self.control.balances_usd)
        summary = self.stats.as_dict()
        finished = {"finished_at": datetime.now(UTC).isoformat(), "summary": summary}
        await anyio.to_thread.run_sync(results_sink.finish, finished)
        await anyio.to_thread.run_sync(calls_sink.finish, finished)
        if self.control.stop_error is None and self.dataset_error is None:
            # A run that stopped early stays open in the store: the same command resumes
            # it, and the calls it paid for are not "cached" when it does.
            await anyio.to_thread.run_sync(self.prep.store.finish_run, self.prep.run_id)
        return summary

    def _transport(self, name: str, *, base_url: str) -> Transport:
        """Endpoint `name`'s transport: the options' factory's (tests), else a real one."""
        endpoint, api_key = self.job.all_endpoints()[name], self.prep.api_keys[name]
        if (make := self.options.transport_factory) is not None:
            return make(name, base_url=base_url, api_key=api_key, timeout_s=endpoint.timeout_s)
        return open_transport(
            endpoint.transport,
            base_url=base_url,
            api_key=api_key,
            timeout_s=endpoint.timeout_s,
            connections=self.job.run.concurrency,
            max_response_bytes=endpoint.max_response_bytes,
        )

    async def _watch_signals(self, outer: anyio.CancelScope) -> None:
        def cancel_in_flight() -> None:
            for scope in list(self.row_scopes):
                scope.cancel()

        def cancel_all() -> None:
            self.hard_stop = True
            outer.cancel()

        await watch_signals(
            self.control,
            grace_s=self.job.run.grace_s,
            cancel_in_flight=cancel_in_flight,
            cancel_all=cancel_all,
        )

    async def _pipeline(
        self,
        executor: Executor,
        bar: ProgressBar,
        results_sink: ParquetSink,
        calls_sink: ParquetSink,
    ) -> None:
        """Producer -> worker pool -> in-order writer, all inside one task group.

        At most `window` batches are in flight, so memory stays flat however long the
        dataset; the window is wide enough that a slow row does not starve the workers.
        """
        job, prep, stats = self.job, self.prep, self.stats
        concurrency = job.run.concurrency
        window = 2 + -(-2 * concurrency // job.input.batch_rows)
        in_flight = anyio.Semaphore(window)
        rows_send, rows_recv = anyio.create_memory_object_stream[tuple[_BatchSlot, int, Routed]](
            concurrency
        )
        slots_send, slots_recv = anyio.create_memory_object_stream[_BatchSlot](window)
        top = stats.top_tier

        async def produce() -> None:
            async with rows_send, slots_send:
                batches = prep.dataset.batches()
                while (read := await self._next_batch(batches)) is not None:
                    batch, rows = read
                    await in_flight.acquire()
                    plans = prep.router.route(batch.frame)
                    height = batch.frame.height
                    slot = _BatchSlot(batch, rows, [None] * height, height)
                    await slots_send.send(slot)
                    if slot.remaining == 0:
                        slot.done.set()
                    for index, plan in enumerate(plans):
                        await _send(rows_send, (slot, index, plan))

        async def work(receive: MemoryObjectReceiveStream[tuple[_BatchSlot, int, Routed]]) -> None:
            async with receive:
                while (item := await _receive(receive)) is not None:
                    slot, index, plan = item
                    result = await self._run_row(executor, slot, index, plan)
                    slot.results[index] = result
                    self.pending_calls.extend(result.calls)
                    stats.add(result, top_tier_cost=top_tier_cost(result, job=job, top=top))
                    if result.status == FAILED:
                        self.errors[result.error or "unknown error"] += 1
                    bar.update()
                    slot.remaining -= 1
                    if slot.remaining == 0:
                        slot.done.set()

        async def write() -> None:
            async with slots_recv:
                async for slot in slots_recv:
                    await slot.done.wait()
                    calls, self.pending_calls = self.pending_calls, []
                    await anyio.to_thread.run_sync(
                        self._write_batch, slot, calls, results_sink, calls_sink
                    )
                    in_flight.release()

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            tg.start_soon(write)
            for _ in range(concurrency):
                tg.start_soon(work, rows_recv.clone())
            rows_recv.close()

    async def _next_batch(
        self, batches: Iterator[Batch]
    ) -> tuple[Batch, list[dict[str, Any]]] | None:
        """The next batch; at a row that no longer converts, the end of the stream: the rows
        already queued still run and are written, and `execute` raises the error after."""
        try:
            return await anyio.to_thread.run_sync(_read_batch, batches)
        except DatasetError as exc:
            self.dataset_error = exc
            return None

    def _write_batch(
        self,
        slot: _BatchSlot,
        calls: list[CallRecord],
        results_sink: ParquetSink,
        calls_sink: ParquetSink,
    ) -> None:
        """Build and write a finished batch's frames; in a worker thread, off the loop."""
        results = [r for r in slot.results if r is not None]
        frame = results_frame(results, id_dtype=self.id_dtype, parser=self.parser)
        frame = frame.select(list(self.result_cols))
        results_sink.write(pl.concat([slot.batch.frame, frame], how="horizontal"))
        calls_sink.write(calls_frame(calls, id_dtype=self.id_dtype))

    async def _run_row(
        self, executor: Executor, slot: _BatchSlot, index: int, plan: Routed
    ) -> RowResult:
        """One row, cancellable when an interrupt's grace period ends."""
        row_id = slot.batch.row_ids[index]
        with anyio.CancelScope() as scope:
            self.row_scopes.add(scope)
            try:
                return await executor.run_row(row_id, slot.rows[index], plan)
            finally:
                self.row_scopes.discard(scope)
        # Cancelled by the end of the grace period: its finished calls are in the store.
        return RowResult(
            row_id=row_id,
            plan=plan.name,
            status=SKIPPED,
            error="interrupted: the call in flight was cancelled",
        )


def _read_batch(batches: Iterator[Batch]) -> tuple[Batch, list[dict[str, Any]]] | None:
    """The next batch and its rows as dicts, in a worker thread: one polars call per batch
    instead of one `frame.row` per row on the event loop."""
    batch = next(batches, None)
    return None if batch is None else (batch, batch.frame.rows(named=True))


# The row stream is passed through at thousands of rows a second. anyio's `send` and
# `receive` yield to the event loop before even looking at the buffer, a task switch per row
# on each side; these look first and wait only when they must. A worker still yields at its
# row's first call, and the producer when the buffer is full.


async def _send(stream: MemoryObjectSendStream[_T], item: _T) -> None:
    try:
        stream.send_nowait(item)
    except anyio.WouldBlock:
        await stream.send(item)


async def _receive(stream: MemoryObjectReceiveStream[_T]) -> _T | None:
    """The next item, or None once every sender has closed and the buffer is empty."""
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        try:
            return await stream.receive()
        except anyio.EndOfStream:
            return None
    except anyio.EndOfStream:
        return None
