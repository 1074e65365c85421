"""The lease book and the workers' leased limits and budget, in one process (no Ray): the book
is called directly where a worker would make a Ray actor call."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from batchroute.control import RunControl
from batchroute.engines.leases import LeaseBook, LeasedBudget, LeasedLimits
from batchroute.errors import BudgetReached
from batchroute.job import Job


def _job(**run: Any) -> Job:
    return Job.model_validate(
        {
            "input": {"path": "x.parquet", "prompt": "{text}"},
            "output": {"path": "out.parquet"},
            "models": {"m": {"rpm": 600, "usd_per_mtok": {"input": 1000.0, "output": 1000.0}}},
            "route": {"strategy": "fixed", "model": "m"},
            "run": run,
        }
    )


def _remote(book: LeaseBook) -> Any:
    async def remote(method: str, *args: Any, **kwargs: Any) -> Any:
        await anyio.lowlevel.checkpoint()  # a remote call yields, as an actor call would
        return getattr(book, method)(*args, **kwargs)

    return remote


def test_the_last_budget_lease_is_cut_to_what_is_left() -> None:
    book = LeaseBook({}, budget_usd=1.0)
    assert book.lease_budget(0.6) == 0.6
    assert book.lease_budget(0.6) == pytest.approx(0.4)
    assert book.lease_budget(0.1) == 0.0
    book.return_budget(0.25)
    assert book.lease_budget(1.0) == pytest.approx(0.25)


def test_four_workers_never_admit_more_than_the_budget_between_them() -> None:
    # Each call is estimated at 1000 * (10 + 10) / 1e6 = $0.02; the budget holds 50 of them.
    job = _job(budget_usd=1.0)
    book = LeaseBook({"m": (None, None)}, budget_usd=1.0)
    admitted: list[float] = []
    controls = [RunControl() for _ in range(4)]

    async def worker(control: RunControl) -> None:
        budget = LeasedBudget(job, control=control, remote=_remote(book))
        while True:
            estimate = await budget.admit("m", prompt_tokens=10, max_tokens=10)
            if estimate is None:
                return
            admitted.append(estimate)
            budget.add_spend("m", estimate)
            budget.release(estimate)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for control in controls:
                tg.start_soon(worker, control)

    anyio.run(main)
    assert sum(admitted) <= 1.0 + 1e-9
    assert len(admitted) >= 49  # at most the slices' remainders go unused
    assert all(isinstance(c.stop_error, BudgetReached) for c in controls)
    assert book.stopped() is not None


def test_a_worker_leases_only_what_its_waiting_rows_ask_for() -> None:
    # A lease never exceeds the rows waiting: nothing is held unused to bunch up later.
    job = _job()
    book = LeaseBook({"m": (600, None)}, budget_usd=None)
    asked: list[int] = []
    remote = _remote(book)

    async def spying(method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "lease":
            asked.append(kwargs["requests"])
        return await remote(method, *args, **kwargs)

    async def main() -> None:
        limits = LeasedLimits(job, remote=spying, token_capacity={})

        async def row() -> None:
            async with limits["m"].call(prompt_tokens=10, max_tokens=10):
                pass

        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(row)

    anyio.run(main)
    assert asked and max(asked) <= 12
    assert sum(asked) >= 12
    assert book.lease("m", requests=100, tokens=0).requests <= 10  # the bucket's capacity
