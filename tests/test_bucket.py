"""The leaky bucket on a virtual clock: pace, FIFO fairness, settling and cancellation."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from virtual_clock import now, run_virtual

from batchroute.bucket import LeakyBucket

pytestmark = pytest.mark.timeout(10)


def test_an_empty_bucket_admits_its_capacity_at_once_then_keeps_pace() -> None:
    async def scenario() -> list[float]:
        bucket = LeakyBucket(5, per_second=10)
        times = []
        for _ in range(8):
            await bucket.acquire()
            times.append(now())
        return times

    times, _ = run_virtual(scenario)
    assert times == pytest.approx([0, 0, 0, 0, 0, 0.1, 0.2, 0.3], abs=1e-6)


def test_a_starting_level_is_used_capacity() -> None:
    async def scenario() -> float:
        bucket = LeakyBucket(10, per_second=10, level=10)
        await bucket.acquire(4)
        return now()

    waited, _ = run_virtual(scenario)
    assert waited == pytest.approx(0.4, abs=1e-6)


def test_waiters_go_in_arrival_order_so_a_large_request_is_not_starved() -> None:
    # A full bucket; a request of 8 arrives first, then many of 1. Were the small ones let
    # past, the 8 would wait for ever under steady load; in FIFO order it goes first.
    async def scenario() -> list[tuple[str, float]]:
        bucket = LeakyBucket(10, per_second=10, level=10)
        order: list[tuple[str, float]] = []

        async def take(name: str, amount: float) -> None:
            await bucket.acquire(amount)
            order.append((name, now()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(take, "big", 8)
            await anyio.lowlevel.checkpoint()
            for i in range(3):
                tg.start_soon(take, f"small{i}", 1)
        return order

    order, _ = run_virtual(scenario)
    assert [name for name, _ in order] == ["big", "small0", "small1", "small2"]
    assert [t for _, t in order] == pytest.approx([0.8, 0.9, 1.0, 1.1], abs=1e-6)


def test_settling_a_refund_wakes_a_waiter_at_once() -> None:
    async def scenario() -> float:
        bucket = LeakyBucket(100, per_second=100, level=0)
        await bucket.acquire(100)
        admitted: list[float] = []

        async def waiter() -> None:
            await bucket.acquire(50)
            admitted.append(now())

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.1)
            bucket.settle(100, 20)  # 80 come back: level 90 - 80 = 10, the 50 fits
        return admitted[0]

    admitted_at, _ = run_virtual(scenario)
    assert admitted_at == pytest.approx(0.1, abs=1e-6)


def test_settling_more_than_reserved_pushes_the_queue_back() -> None:
    async def scenario() -> float:
        bucket = LeakyBucket(10, per_second=10)
        await bucket.acquire(10)
        bucket.settle(10, 30)  # 20 more than reserved: the level is 30, over capacity
        await bucket.acquire(1)
        return now()

    waited, _ = run_virtual(scenario)
    assert waited == pytest.approx(2.1, abs=1e-6)


def test_a_cancelled_waiter_leaves_the_queue_and_the_next_one_goes() -> None:
    async def scenario() -> list[tuple[str, float]]:
        bucket = LeakyBucket(10, per_second=10, level=10)
        order: list[tuple[str, float]] = []

        async def take(name: str, amount: float) -> None:
            await bucket.acquire(amount)
            order.append((name, now()))

        async with anyio.create_task_group() as tg:
            with anyio.move_on_after(0.1):
                await take("big", 10)  # needs 1 s; given up after 0.1 s
            tg.start_soon(take, "small", 1)
        return order

    order, _ = run_virtual(scenario)
    # Had the cancelled 10 kept its place or its capacity, the small one would wait 1 s.
    assert order == [("small", pytest.approx(0.1, abs=1e-6))]


def test_more_than_the_capacity_can_never_fit() -> None:
    async def scenario() -> None:
        bucket = LeakyBucket(10, per_second=10)
        with pytest.raises(ValueError, match="never fit"):
            await bucket.acquire(11)

    run_virtual(scenario)


# ---- retuned and re-levelled from a server's headers ----------------------------------------


def test_retune_changes_the_pace_of_waiters_already_queued() -> None:
    # 10/s, full: the first waiter would go at 0.1 s; retuned to 1/s it goes at 1.0 s.
    async def scenario() -> list[float]:
        bucket = LeakyBucket(1, per_second=10, level=1)
        times: list[float] = []

        async def one() -> None:
            await bucket.acquire()
            times.append(now())

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await anyio.lowlevel.checkpoint()
            bucket.retune(1, per_second=1)
        return times

    times, _ = run_virtual(scenario)
    assert times == pytest.approx([1.0], abs=1e-6)


def test_a_waiter_larger_than_a_shrunk_bucket_goes_when_it_is_empty() -> None:
    # Queued for 8 in a bucket of 10; the bucket shrinks to 4: it goes once the level is 0.
    async def scenario() -> float:
        bucket = LeakyBucket(10, per_second=1, level=6)
        async with anyio.create_task_group() as tg:
            tg.start_soon(bucket.acquire, 8)
            await anyio.lowlevel.checkpoint()
            bucket.retune(4, per_second=1)
        return now()

    waited, _ = run_virtual(scenario)
    assert waited == pytest.approx(6.0, abs=1e-6)


def test_set_level_above_the_capacity_makes_the_next_caller_wait_longer() -> None:
    # A server says more is in use than the bucket holds: the next unit waits for the excess.
    async def scenario() -> float:
        bucket = LeakyBucket(10, per_second=10)
        bucket.set_level(15)
        await bucket.acquire()
        return now()

    waited, _ = run_virtual(scenario)
    assert waited == pytest.approx(0.6, abs=1e-6)
