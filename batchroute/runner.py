"""One run of a job: stream the dataset, route, execute rows concurrently, write the outputs."""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import openai
import polars as pl
from anyio.abc import ObjectReceiveStream

from batchroute import __version__
from batchroute.caller import Caller
from batchroute.control import RunControl
from batchroute.dataset import Batch, Dataset
from batchroute.errors import ConfigError, DatasetError, RunStopped
from batchroute.executor import Executor
from batchroute.job import Job
from batchroute.limits import Limits
from batchroute.models_list import check_served
from batchroute.progress import ProgressBar, RunStats
from batchroute.records import (
    CallRecord,
    RowResult,
    call_schema,
    calls_frame,
    result_schema,
    results_frame,
)
from batchroute.router import Plan, Router, build_router
from batchroute.sink import ParquetSink, check_writable


@dataclass(slots=True)
class RunReport:
    """What `run` returns: where the outputs are, the summary, and why it stopped early."""

    run_id: str
    results_path: Path
    calls_path: Path
    summary: dict[str, Any]
    summary_line: str
    stop_error: RunStopped | None = None


@dataclass(slots=True)
class _BatchSlot:
    """A batch in flight: its rows' results fill in any order, it is written in input order."""

    batch: Batch
    results: list[RowResult | None]
    remaining: int
    done: anyio.Event = field(default_factory=anyio.Event)


async def arun(job: Job, *, overwrite: bool = False, quiet: bool = True) -> RunReport:
    """Run `job` inside an already running event loop (a notebook, a script using anyio)."""
    prepared = _prepare(job, overwrite=overwrite)
    with contextlib.ExitStack() as stack:
        base_url = job.endpoint.base_url
        if job.endpoint.embedded:
            simulator = await anyio.to_thread.run_sync(_start_simulator, job, stack)
            base_url = simulator
        return await _execute(job, prepared, base_url=base_url, quiet=quiet)
    raise AssertionError("unreachable")  # pragma: no cover


def run(job: Job, *, overwrite: bool = False, quiet: bool = True) -> RunReport:
    """Run `job` to the end from synchronous code; returns the report."""
    return anyio.run(lambda: arun(job, overwrite=overwrite, quiet=quiet), backend="asyncio")


@dataclass(slots=True)
class _Prepared:
    dataset: Dataset
    router: Router
    api_key: str
    run_id: str
    calls_file: str


def _prepare(job: Job, *, overwrite: bool) -> _Prepared:
    """Everything that can be wrong with the job, checked before any call is made."""
    dataset = Dataset(job.input.path, id_column=job.input.id, batch_rows=job.input.batch_rows)
    template = job.input.template()
    system = job.input.system_template()
    for what, tmpl in (("the prompt template", template), ("the system prompt", system)):
        if tmpl is not None:
            dataset.require_columns(list(tmpl.columns), what=f"{job.source}: {what}")
    if job.input.messages is not None:
        dataset.require_columns([job.input.messages], what=f"{job.source}: input.messages")
    clashes = [
        c
        for c in dataset.schema
        if c in result_schema(pl.Int64()) and not (c == "row_id" and job.input.id == "row_id")
    ]
    if clashes:
        raise DatasetError(
            f"{dataset.path}: input column {clashes[0]!r} has the name of an output column;"
            " rename it in the data"
        )
    router = build_router(job)
    router.validate(dataset)  # rule predicates, classifier and judge templates vs the columns
    check_writable(job.output.path, overwrite=overwrite)
    check_writable(job.output.calls_path, overwrite=overwrite)
    if job.output.path.resolve() == job.output.calls_path.resolve():
        raise ConfigError(f"{job.source}: output.calls must differ from output.path")
    calls_file = os.path.relpath(job.output.calls_path, job.output.path.parent)
    return _Prepared(dataset, router, _api_key(job), _new_run_id(), calls_file)


def _api_key(job: Job) -> str:
    name = job.endpoint.api_key_env
    if name is None:
        # Local servers (the simulator, llama.cpp, vLLM) accept any key; the SDK needs one.
        return "not-needed"
    value = os.environ.get(name)
    if not value:
        raise ConfigError(
            f"{job.source}: endpoint.api_key_env: environment variable {name} is not set"
        )
    return value


def _new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def _start_simulator(job: Job, stack: contextlib.ExitStack) -> str:
    from batchroute.sim import running_simulator

    sim = job.simulator
    handle = stack.enter_context(
        running_simulator(models=sim.models, seed=sim.seed, balance=sim.balance_usd)
    )
    return str(handle.base_url)


async def _execute(job: Job, prep: _Prepared, *, base_url: str, quiet: bool) -> RunReport:
    started_at = datetime.now(UTC)
    id_dtype = prep.dataset.id_dtype()
    input_schema = {k: (v() if isinstance(v, type) else v) for k, v in prep.dataset.schema.items()}
    result_cols = {k: v for k, v in result_schema(id_dtype).items() if k not in input_schema}
    metadata = {
        "run_id": prep.run_id,
        "batchroute_version": __version__,
        "started_at": started_at.isoformat(),
        "input": str(job.input.path),
        "strategy": prep.router.strategy,
        "job": job.settings(),
        # Relative to the results file, so the pair can be moved together.
        "calls_file": prep.calls_file,
    }
    results_sink = ParquetSink(
        job.output.path,
        schema={**input_schema, **result_cols},
        metadata={**metadata, "table": "results"},
        run_id=prep.run_id,
    )
    calls_sink = ParquetSink(
        job.output.calls_path,
        schema=call_schema(id_dtype),
        metadata={**metadata, "table": "calls"},
        run_id=prep.run_id,
    )
    stats = RunStats(total=prep.dataset.num_rows)
    stats.top_tier = _top_tier(prep.router)
    control = RunControl()
    bar = ProgressBar(stats, quiet=quiet)
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key=prep.api_key, max_retries=0, timeout=job.endpoint.timeout_s
    )
    caller = Caller(client, job=job, limits=Limits(job), control=control, rng=random.Random())
    executor = Executor(caller, job=job)
    pending_calls: list[CallRecord] = []

    try:
        results_sink.open()
        calls_sink.open()
        async with client:
            await check_served(job, base_url=base_url, api_key=prep.api_key)  # before row 1
            await _pipeline(
                job,
                prep,
                executor=executor,
                stats=stats,
                bar=bar,
                results_sink=results_sink,
                calls_sink=calls_sink,
                pending_calls=pending_calls,
                id_dtype=id_dtype,
                result_cols=list(result_cols),
            )
        stats.balance_usd = control.balance_usd
        summary = stats.as_dict()
        finished = {"finished_at": datetime.now(UTC).isoformat(), "summary": summary}
        await anyio.to_thread.run_sync(results_sink.finish, finished)
        await anyio.to_thread.run_sync(calls_sink.finish, finished)
    except BaseException:
        results_sink.abort()
        calls_sink.abort()
        raise
    finally:
        bar.close()
    return RunReport(
        run_id=prep.run_id,
        results_path=job.output.path,
        calls_path=job.output.calls_path,
        summary=summary,
        summary_line=stats.summary_line(),
        stop_error=control.stop_error,
    )


async def _pipeline(
    job: Job,
    prep: _Prepared,
    *,
    executor: Executor,
    stats: RunStats,
    bar: ProgressBar,
    results_sink: ParquetSink,
    calls_sink: ParquetSink,
    pending_calls: list[CallRecord],
    id_dtype: pl.DataType,
    result_cols: list[str],
) -> None:
    """Producer -> worker pool -> in-order writer, all inside one task group.

    At most `window` batches are in flight, so memory stays flat however long the dataset;
    the window is wide enough that a slow row does not starve the workers.
    """
    concurrency = job.run.concurrency
    window = 2 + -(-2 * concurrency // job.input.batch_rows)
    in_flight = anyio.Semaphore(window)
    rows_send, rows_recv = anyio.create_memory_object_stream[tuple[_BatchSlot, int, Plan]](
        concurrency
    )
    slots_send, slots_recv = anyio.create_memory_object_stream[_BatchSlot](window)
    top_tier = _top_tier(prep.router)

    async def produce() -> None:
        async with rows_send, slots_send:
            batches = prep.dataset.batches()
            while (batch := await anyio.to_thread.run_sync(_next_or_none, batches)) is not None:
                await in_flight.acquire()
                plans = prep.router.route(batch.frame)
                slot = _BatchSlot(batch, [None] * batch.frame.height, batch.frame.height)
                await slots_send.send(slot)
                if slot.remaining == 0:
                    slot.done.set()
                for index, plan in enumerate(plans):
                    await rows_send.send((slot, index, plan))

    async def work(receive: ObjectReceiveStream[tuple[_BatchSlot, int, Plan]]) -> None:
        async with receive:
            async for slot, index, plan in receive:
                row = slot.batch.frame.row(index, named=True)
                result = await executor.run_row(slot.batch.row_ids[index], row, plan)
                slot.results[index] = result
                pending_calls.extend(result.calls)
                stats.add(result, top_tier_cost=_top_tier_cost(result, plan, job, top_tier))
                bar.update()
                slot.remaining -= 1
                if slot.remaining == 0:
                    slot.done.set()

    async def write() -> None:
        async with slots_recv:
            async for slot in slots_recv:
                await slot.done.wait()
                results = [r for r in slot.results if r is not None]
                frame = results_frame(results, id_dtype=id_dtype).select(result_cols)
                frame = pl.concat([slot.batch.frame, frame], how="horizontal")
                calls = calls_frame(pending_calls, id_dtype=id_dtype)
                pending_calls.clear()
                await anyio.to_thread.run_sync(results_sink.write, frame)
                await anyio.to_thread.run_sync(calls_sink.write, calls)
                in_flight.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        tg.start_soon(write)
        for _ in range(concurrency):
            tg.start_soon(work, rows_recv.clone())
        rows_recv.close()


def _next_or_none(batches: Iterator[Batch]) -> Batch | None:
    return next(batches, None)


def _top_tier(router: Router) -> str | None:
    """The model every row would go to in the "all on the best model" baseline."""
    tops = {plan.tiers[-1] for plan in router.plans()}
    if len(tops) != 1 or all(not plan.is_cascade for plan in router.plans()):
        return None
    return tops.pop()


def _top_tier_cost(result: RowResult, plan: Plan, job: Job, top: str | None) -> float | None:
    """The row's cost had it gone straight to the top tier: paid if it did, else priced."""
    if top is None:
        return None
    for call in result.answer_calls:  # not the classifier's, a judge's or shadow calls
        if call.model == top and call.ok and call.charge_usd is not None:
            return call.charge_usd
    prices = job.model(top).usd_per_mtok
    if prices is None:
        return None
    for call in result.answer_calls:
        if call.ok and call.prompt_tokens is not None:
            tokens_in, tokens_out = call.prompt_tokens, call.completion_tokens or 0
            return (tokens_in * prices.input + tokens_out * prices.output) / 1_000_000
    return 0.0
