"""The Ray engine: Ray Data reads the input, a pool of worker actors runs the rows.

    driver (this process)                       Ray cluster
    prepare(): job, ids, store, run id    ─┐
    read_parquet/read_csv (Ray Data)       ├─> map_batches(RowWorker, ActorPoolStrategy)
                                           │     each worker: its own event loop running the
                                           │     local engine's router → executor → caller
                                           │     → checks, leasing limits and budget from
                                           │     the LeaseBook actor, caching in the store
    iter_batches (input order) <───────────┘
    the local engine's sinks: the same two Parquet files, schema and footer metadata

The results come back to the driver, which writes them with the local engine's own code, so
the outputs are the local engine's byte for byte in layout (docs/scale.md says where that
bounds a run and what would replace it). Each worker returns its rows' `RowResult`s pickled
in one extra column; the input columns pass through.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import pickle
import random
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

import anyio
import polars as pl
import pyarrow as pa

from batchroute.caller import Caller
from batchroute.control import RunControl
from batchroute.engines.leases import LeaseBook, LeasedBudget, LeasedLimits
from batchroute.engines.paths import local_files, remote_files, s3_filesystem
from batchroute.errors import BudgetReached, ConfigError
from batchroute.executor import Executor
from batchroute.job import Job
from batchroute.progress import ProgressBar, top_tier_cost
from batchroute.records import FAILED, RowResult, calls_frame, results_frame
from batchroute.router import build_router
from batchroute.runner import RunReport, _Run
from batchroute.sink import ParquetSink
from batchroute.store import CallCache, CallStore, StoredCall, StoreReader, StoreWriter
from batchroute.transport import Transport, open_transport

RESULT_COLUMN = "__batchroute_result"
_T = TypeVar("_T")
log = logging.getLogger("batchroute")


def ray_address(job: Job) -> str:
    """The cluster to join: the job's or the command line's, else `$RAY_ADDRESS`, else a new
    local one. Never Ray's own default, the last cluster started on this machine as its
    /tmp/ray file records it: that file outlives a cluster killed without `ray stop` (the
    next run then waits on an address nobody answers), and a cluster another user started
    is not one this job asked for."""
    return job.run.ray_address or os.environ.get("RAY_ADDRESS") or "local"


def check_ray_address(job: Job, *, timeout_s: float = 10.0) -> None:
    """A cluster address that cannot be one, or where nothing answers, is the user's mistake:
    one line now, not Ray's traceback or its retrying for ever."""
    address = ray_address(job)
    if address in ("local", "auto"):
        return
    where = f"{job.source}: run.ray_address (or --ray-address) {address!r}"
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{where}: not HOST:PORT (or ray://HOST:PORT)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{where}: no Ray cluster answers there ({reason})") from None


def worker_share(job: Job) -> Job:
    """The job as each worker runs it. A model's `max_concurrency` is its calls in flight
    across the cluster (a server that answers two at a time is one server, however many
    workers call it): each of `run.workers` workers holds an equal share, at least one."""
    workers = job.run.workers
    models = {
        name: model.model_copy(update={"max_concurrency": max(1, model.max_concurrency // workers)})
        if model.max_concurrency is not None
        else model
        for name, model in job.models.items()
    }
    return job.model_copy(update={"models": models})


def share_warnings(job: Job) -> list[str]:
    """Where a model's `max_concurrency` cannot be split between the workers."""
    workers = job.run.workers
    return [
        f"{job.source}: models.{name}.max_concurrency = {model.max_concurrency} is below"
        f" run.workers = {workers}: each worker sends one call at a time, {workers} at once"
        " across the cluster"
        for name, model in job.models.items()
        if model.max_concurrency is not None and model.max_concurrency < workers
    ]


class RayRun(_Run):
    """A run whose rows go through Ray; everything before and after is the local engine's."""

    async def execute(self, base_urls: dict[str, str]) -> RunReport:
        self._base_urls = base_urls  # for the workers, which open their own transports
        return await super().execute(base_urls)

    async def _run(
        self,
        transports: dict[str, Transport],
        bar: ProgressBar,
        results_sink: ParquetSink,
        calls_sink: ParquetSink,
    ) -> None:
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(
                f"{self.job.source}: run.engine: 'ray' needs Ray: pip install 'batchroute[ray]'"
            )
        if self.job.input.id is None:
            raise ConfigError(
                f"{self.job.source}: input.id: run.engine = 'ray' needs an id column (Ray Data"
                " reads files in parallel and does not number rows)"
            )
        await anyio.to_thread.run_sync(check_ray_address, self.job)
        for warning in share_warnings(self.job):
            log.warning("%s", warning)
        await anyio.to_thread.run_sync(
            self._run_on_ray, self._base_urls, bar, results_sink, calls_sink, abandon_on_cancel=True
        )

    def _run_on_ray(
        self,
        base_urls: dict[str, str],
        bar: ProgressBar,
        results_sink: ParquetSink,
        calls_sink: ParquetSink,
    ) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        job = self.job
        started = not ray.is_initialized()
        if started:
            ray.init(
                address=ray_address(job),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        try:
            # On the driver's node: a book lost with a worker node would leave every worker
            # without leases, while the driver's own loss ends the run anyway.
            here = NodeAffinitySchedulingStrategy(
                node_id=ray.get_runtime_context().get_node_id(), soft=False
            )
            actor = ray.remote(LeaseBook).options(num_cpus=0, scheduling_strategy=here)
            book: Any = actor.remote(
                {name: (m.rpm, m.tpm) for name, m in job.models.items()}, job.run.budget_usd
            )
            capacity = {
                name: ray.get(book.token_capacity.remote(name))
                for name, m in job.models.items()
                if m.tpm is not None
            }
            dataset = self._read(ray)
            mapped = dataset.map_batches(
                RowWorker,
                fn_constructor_kwargs={
                    "job": worker_share(job),
                    "run_id": self.prep.run_id,
                    "base_urls": base_urls,
                    "cache_mode": self.options.cache,
                    "book": book,
                    "token_capacity": capacity,
                },
                batch_size=job.input.batch_rows,
                batch_format="pyarrow",
                zero_copy_batch=True,
                compute=ray.data.ActorPoolStrategy(size=job.run.workers),
                num_cpus=job.run.worker_cpus,
            )
            for table in mapped.iter_batches(batch_size=None, batch_format="pyarrow"):
                self._write_results(table, bar, results_sink, calls_sink)
            stopped = ray.get(book.stopped.remote())
            if stopped is not None:
                self.control.stop(BudgetReached(stopped))
        finally:
            if started:
                ray.shutdown()

    def _read(self, ray: Any) -> Any:
        """The input as a Ray Dataset, in file order, with the types the local engine uses."""
        job = self.job
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # results in input order
        ctx.enable_progress_bars = not self.options.quiet
        if job.input.url is not None:
            where = f"{job.source}: input.path"
            fs = s3_filesystem(
                job.input.storage_options, where=f"{job.source}: input.storage_options"
            )
            files: list[str] = remote_files(job.input.url, fs, where=where)
        else:
            fs = None
            files = [str(p) for p in local_files(job.input.path, where=str(job.input.path))]
        # Blocks of one batch each, cut as they stream (no barrier): a file that is one row
        # group would otherwise reach a single worker.
        return self._read_files(ray, files, fs).repartition(
            target_num_rows_per_block=job.input.batch_rows
        )

    def _read_files(self, ray: Any, files: list[str], fs: Any) -> Any:
        layout = self.prep.dataset.layout
        if layout is None:
            return ray.data.read_parquet(files, filesystem=fs, file_extensions=None)
        return ray.data.read_csv(
            files,
            filesystem=fs,
            convert_options=layout.convert_options(),
            parse_options=layout.parse_options(),
        )

    def _write_results(
        self,
        table: pa.Table,
        bar: ProgressBar,
        results_sink: ParquetSink,
        calls_sink: ParquetSink,
    ) -> None:
        """One batch back from the workers: counted, then written as the local engine does."""
        job, stats = self.job, self.stats
        results: list[RowResult] = [
            pickle.loads(raw) for raw in table.column(RESULT_COLUMN).to_pylist()
        ]
        inputs = pl.from_arrow(table.drop_columns([RESULT_COLUMN]))
        assert isinstance(inputs, pl.DataFrame)
        calls = []
        for result in results:
            stats.add(result, top_tier_cost=top_tier_cost(result, job=job, top=stats.top_tier))
            if result.status == FAILED:
                self.errors[result.error or "unknown error"] += 1
            calls.extend(result.calls)
        bar.update(len(results))
        frame = results_frame(results, id_dtype=self.id_dtype, parser=self.parser)
        frame = frame.select(list(self.result_cols))
        inputs = inputs.select(list(self.input_schema)).cast(self.input_schema)  # type: ignore[arg-type]
        results_sink.write(pl.concat([inputs, frame], how="horizontal"))
        calls_sink.write(calls_frame(calls, id_dtype=self.id_dtype))


class _CountingStore:
    """The store as a worker's writer sees it: counts the calls committed, so a batch can
    wait until its calls are on disk before it is returned (Ray may end the actor, and the
    writer's queue with it, as soon as the last batch is back)."""

    def __init__(self, store: CallStore) -> None:
        self._store = store
        self._written = 0
        self._changed = threading.Condition()

    def put_many(self, calls: list[StoredCall]) -> None:
        self._store.put_many(calls)
        with self._changed:
            self._written += len(calls)
            self._changed.notify_all()

    def wait_for(self, count: int) -> None:
        """Block until `count` calls in all were committed (in a worker thread)."""
        with self._changed:
            self._changed.wait_for(lambda: self._written >= count)


class _CountingWriter(StoreWriter):
    def __init__(self, store: _CountingStore) -> None:
        super().__init__(cast(CallStore, store))
        self.counting = store
        self.queued = 0

    async def put(self, call: StoredCall) -> None:
        self.queued += 1
        await super().put(call)

    async def flush(self) -> None:
        await anyio.to_thread.run_sync(self.counting.wait_for, self.queued)


class RowWorker:
    """A Ray actor running rows: the local engine's pipeline on an event loop of its own.

    The loop runs in a thread of the actor; each batch Ray Data hands over is submitted to it
    and waited for. Transports, the store's reader and writer, limits and budget live as long
    as the actor, so connections and leases carry over from batch to batch.
    """

    def __init__(
        self,
        *,
        job: Job,
        run_id: str,
        base_urls: dict[str, str],
        cache_mode: str,
        book: Any,
        token_capacity: dict[str, float],
    ) -> None:
        self._job = job
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._stack = contextlib.AsyncExitStack()
        self._router = build_router(job)
        self._id_column = job.input.id
        self._slots: anyio.Semaphore | None = None
        self._executor: Executor = self._wait(
            self._open(
                run_id=run_id,
                base_urls=base_urls,
                cache_mode=cache_mode,
                book=book,
                token_capacity=token_capacity,
            )
        )

    def _wait(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _open(
        self,
        *,
        run_id: str,
        base_urls: dict[str, str],
        cache_mode: str,
        book: Any,
        token_capacity: dict[str, float],
    ) -> Executor:
        from batchroute.endpoints import api_keys

        job = self._job
        keys = api_keys(job)  # read on the worker: keys never travel through Ray
        endpoints = job.all_endpoints()
        transports: dict[str, Transport] = {}
        for name, base_url in base_urls.items():
            endpoint = endpoints[name]
            transports[name] = await self._stack.enter_async_context(
                open_transport(
                    endpoint.transport,
                    base_url=base_url,
                    api_key=keys[name],
                    timeout_s=endpoint.timeout_s,
                    connections=job.run.concurrency,
                    max_response_bytes=endpoint.max_response_bytes,
                )
            )
        assert job.store.path is not None
        store = await anyio.to_thread.run_sync(CallStore, job.store.path)
        writer, reader = _CountingWriter(_CountingStore(store)), StoreReader(store)
        self._writer = writer
        self._tasks = [asyncio.ensure_future(writer.run()), asyncio.ensure_future(reader.run())]
        identities = {name: job.endpoint_identity(name) for name in transports}
        cache = CallCache(
            store,
            writer,
            run_id=run_id,
            endpoint_of=lambda model: identities[job.endpoint_name(model)],
            mode=cache_mode,
            reader=reader,
        )
        await cache.open()

        async def remote(method: str, *args: Any, **kwargs: Any) -> Any:
            return await getattr(book, method).remote(*args, **kwargs)

        control = RunControl()
        self._budget = LeasedBudget(job, control=control, remote=remote)
        caller = Caller(
            transports,
            job=job,
            limits=LeasedLimits(job, remote=remote, token_capacity=token_capacity),
            control=control,
            budget=self._budget,
            cache=cache,
            rng=random.Random(),
        )
        self._slots = anyio.Semaphore(job.run.concurrency)
        return Executor(caller, job=job)

    def __call__(self, table: pa.Table) -> pa.Table:
        results = self._wait(self._run_batch(table))
        payload = pa.array([pickle.dumps(r) for r in results], type=pa.binary())
        return table.append_column(RESULT_COLUMN, payload)

    async def _run_batch(self, table: pa.Table) -> list[RowResult]:
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame) and self._slots is not None
        plans = self._router.route(frame)
        rows = frame.rows(named=True)
        ids = frame.get_column(self._id_column).to_list() if self._id_column else []
        results: list[RowResult | None] = [None] * frame.height
        slots = self._slots

        async def one(index: int) -> None:
            async with slots:
                results[index] = await self._executor.run_row(ids[index], rows[index], plans[index])

        async with anyio.create_task_group() as tg:
            for index in range(frame.height):
                tg.start_soon(one, index)
        await self._budget.give_back()
        await self._writer.flush()  # this batch's calls are on disk before it is returned
        return [r for r in results if r is not None]
