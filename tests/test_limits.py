"""Per-model limits on a virtual clock: requests and tokens per minute, and calls in flight."""

from __future__ import annotations

import anyio
import pytest
from virtual_clock import now, run_virtual

from batchroute.job import Job, ModelConfig
from batchroute.limits import BURST_SECONDS, Limits, ModelLimits

# Virtual time: a scenario that hangs is a bug in the limiter (or the clock), so fail fast.
pytestmark = pytest.mark.timeout(10)


async def _admission_times(
    limits: ModelLimits, n: int, *, estimate: int = 1, actual: int | None = None
) -> list[float]:
    """Start `n` calls at once; the virtual time at which each got through the limits."""
    times: list[float] = []

    async def one() -> None:
        async with limits.call(prompt_tokens=estimate, max_tokens=0) as reservation:
            times.append(now())
            reservation.settle(actual, 0 if actual is not None else None)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return sorted(times)


def _limits(**kwargs: int | None) -> ModelLimits:
    # Limiters must be built inside the running loop; these helpers run on it.
    # limits = "job": these tests are of the job's limits alone, without a cautious start.
    return ModelLimits("m", config=ModelConfig(limits="job", **kwargs))


# ---- requests per minute --------------------------------------------------------------------


def test_rpm_paces_from_the_first_call() -> None:
    # A fresh bucket starts as if its last second had been used: no opening burst, one call
    # every 0.1 s at 600 rpm, and the first of them at once.
    async def scenario() -> list[float]:
        return await _admission_times(_limits(rpm=600), 100)

    times, elapsed = run_virtual(scenario)
    assert times == pytest.approx([i * 0.1 for i in range(100)], abs=1e-6)
    assert elapsed == pytest.approx(9.9, abs=1e-6)


def test_rpm_bursts_only_what_a_pause_saved_up() -> None:
    async def scenario() -> list[float]:
        limits = _limits(rpm=600)
        first = await _admission_times(limits, 20)
        await anyio.sleep(5.0)  # idle: the bucket empties
        return first + await _admission_times(limits, 20)

    times, _ = run_virtual(scenario)
    burst = int(600 / 60 * BURST_SECONDS)  # 10 calls: one second's worth
    resumed = times[20]
    assert times[20 : 20 + burst] == pytest.approx([resumed] * burst, abs=1e-9)
    assert times[20 + burst] == pytest.approx(resumed + 0.1, abs=1e-6)


def _most_in_a_minute(times: list[float], weights: list[int] | None = None) -> int:
    """The most admitted in any sliding minute [t, t + 60) that starts at an admission."""
    weights = weights or [1] * len(times)
    return max(
        sum(w for u, w in zip(times, weights, strict=True) if t <= u < t + 60.0 - 1e-6)
        for t in times
    )


def test_rpm_never_sends_more_than_the_limit_in_any_sliding_minute() -> None:
    # A provider counting a sliding minute answers the excess with 429s.
    async def scenario() -> list[float]:
        return await _admission_times(_limits(rpm=600), 1300)

    times, _ = run_virtual(scenario)
    assert _most_in_a_minute(times) <= 600
    assert sum(1 for t in times if t < 60.0) >= 599  # and it does use the limit


def test_tpm_never_sends_more_than_the_limit_in_any_sliding_minute() -> None:
    async def scenario() -> list[float]:
        return await _admission_times(_limits(tpm=6000), 260, estimate=50, actual=50)

    times, _ = run_virtual(scenario)
    assert _most_in_a_minute(times, [50] * len(times)) <= 6000
    assert 50 * sum(1 for t in times if t < 60.0) >= 6000 - 100  # within one bucket of it


def test_a_low_rpm_still_admits_one_call_and_paces_it() -> None:
    # 30 rpm: less than one call a second; the bucket holds one call, the next waits 2 s.
    async def scenario() -> list[float]:
        return await _admission_times(_limits(rpm=30), 4)

    times, _ = run_virtual(scenario)
    assert times == pytest.approx([0.0, 2.0, 4.0, 6.0], abs=1e-6)


# ---- tokens per minute ----------------------------------------------------------------------


def test_tpm_paces_by_tokens_not_by_calls() -> None:
    # 6000 tpm = 100 tokens/s, a bucket of 100. Calls of 50 tokens go one every 0.5 s; calls
    # of 10 tokens one every 0.1 s: the same tokens, five times the calls.
    async def scenario(estimate: int) -> list[float]:
        return await _admission_times(_limits(tpm=6000), 20, estimate=estimate, actual=estimate)

    for estimate, gap in ((50, 0.5), (10, 0.1)):
        times, _ = run_virtual(scenario, estimate)
        assert times[0] <= BURST_SECONDS  # a fresh bucket makes the first call wait little
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert gaps == pytest.approx([gap] * 19, abs=1e-6)


async def _second_call_waits(first_actual: int | None, *, first_estimate: int = 100) -> float:
    """tpm 6000 (a bucket of 100 tokens, 100/s): how long a 100-token call waits after a call
    that reserved `first_estimate` and then reported `first_actual` tokens used."""
    limits = _limits(tpm=6000)
    async with limits.call(prompt_tokens=first_estimate, max_tokens=0) as reservation:
        reservation.settle(first_actual, 0 if first_actual is not None else None)
    start = now()
    async with limits.call(prompt_tokens=100, max_tokens=0):
        return now() - start


def test_settling_less_than_reserved_refunds_the_difference() -> None:
    assert run_virtual(_second_call_waits, 10)[0] == pytest.approx(0.1, abs=1e-6)
    assert run_virtual(_second_call_waits, 0)[0] == pytest.approx(0.0, abs=1e-6)


def test_settling_the_estimate_or_nothing_keeps_the_reservation() -> None:
    assert run_virtual(_second_call_waits, 100)[0] == pytest.approx(1.0, abs=1e-6)
    # No usage report (the call failed): the provider may have counted it, so keep it booked.
    assert run_virtual(_second_call_waits, None)[0] == pytest.approx(1.0, abs=1e-6)


def test_settling_more_than_reserved_delays_later_calls() -> None:
    assert run_virtual(_second_call_waits, 300)[0] == pytest.approx(3.0, abs=1e-6)


def test_a_call_larger_than_the_bucket_goes_out_then_its_real_spend_is_booked() -> None:
    # 500 tokens cannot fit a bucket of 100: the call reserves the whole bucket instead of
    # waiting forever, and its real usage makes the next call wait until it has leaked out.
    waited, _ = run_virtual(_second_call_waits, 500, first_estimate=500)
    assert waited == pytest.approx(5.0, abs=1e-6)


def test_a_failed_call_larger_than_the_bucket_keeps_its_whole_estimate_booked() -> None:
    # The call's estimate was 500 tokens and no usage came back (a timeout, say): the comment
    # in Reservation.settle says the estimate stays booked, so the next call should wait
    # for 500 tokens to leak out (5 s), not for the 100 that fit in the bucket (1 s).
    waited, _ = run_virtual(_second_call_waits, None, first_estimate=500)
    assert waited == pytest.approx(5.0, abs=1e-6)


def test_settle_wakes_a_call_already_waiting_for_tokens() -> None:
    # The refund must reach a call that is already queued, not only calls that come later.
    async def scenario() -> float:
        limits = _limits(tpm=6000)
        admitted: list[float] = []

        async def second() -> None:
            async with limits.call(prompt_tokens=100, max_tokens=0):
                admitted.append(now())

        async with anyio.create_task_group() as tg:
            async with limits.call(prompt_tokens=100, max_tokens=0) as reservation:
                first = now()
                tg.start_soon(second)
                await anyio.sleep(0.2)  # the second call is waiting for a full bucket
                reservation.settle(10, 0)  # 90 tokens come back
        return admitted[0] - first

    admitted_after, _ = run_virtual(scenario)
    # 0.2 s on, the level is 100 - 20 leaked - 90 refunded < 0: the waiter goes at once.
    assert admitted_after == pytest.approx(0.2, abs=1e-6)


# ---- calls in flight ------------------------------------------------------------------------


def test_max_concurrency_bounds_the_calls_in_flight() -> None:
    async def scenario() -> int:
        limits = _limits(max_concurrency=3)
        in_flight = peak = 0

        async def one() -> None:
            nonlocal in_flight, peak
            async with limits.call(prompt_tokens=1, max_tokens=0):
                in_flight += 1
                peak = max(peak, in_flight)
                await anyio.sleep(1.0)
                in_flight -= 1

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
        return peak

    peak, elapsed = run_virtual(scenario)
    assert peak == 3
    assert elapsed == pytest.approx(4.0, abs=1e-6)  # 10 one-second calls, three at a time


def test_a_slot_is_released_when_a_call_raises_or_is_cancelled_while_waiting() -> None:
    # One slot, 60 rpm (one call a second). The second call holds the slot while it waits
    # for the rate; cancelling that wait must free the slot, or the third call never runs.
    async def scenario() -> list[float]:
        limits = _limits(rpm=60, max_concurrency=1)
        with pytest.raises(RuntimeError):
            async with limits.call(prompt_tokens=1, max_tokens=0):
                raise RuntimeError("the call failed")
        with anyio.move_on_after(0.5):
            async with limits.call(prompt_tokens=1, max_tokens=0):
                pytest.fail("admitted before the rate allows")
        async with limits.call(prompt_tokens=1, max_tokens=0):
            return [now()]

    (admitted_at,), _ = run_virtual(scenario)
    assert admitted_at == pytest.approx(1.0, abs=1e-6)


# ---- no limits ------------------------------------------------------------------------------


def test_no_limits_means_no_waiting() -> None:
    async def scenario() -> list[float]:
        limits = _limits()
        assert (
            limits.job_buckets["requests"] is None
            and limits.job_buckets["tokens"] is None
            and limits.slots is None
        )
        return await _admission_times(limits, 2000, estimate=1_000_000, actual=5_000_000)

    times, elapsed = run_virtual(scenario)
    assert elapsed < 1e-9 and times[-1] < 1e-9 and len(times) == 2000


def test_job_limits_are_per_model_and_built_once() -> None:
    job = Job.model_validate(
        {
            "input": {"path": "tasks.parquet", "prompt": "{text}"},
            "output": {"path": "out.parquet"},
            "models": {"m/limited": {"rpm": 60, "max_concurrency": 2}, "m/free": {}},
            "route": {"strategy": "cascade", "tiers": ["m/limited", "m/free"]},
        }
    )

    async def scenario() -> None:
        limits = Limits(job)
        limited = limits["m/limited"]
        assert limits["m/limited"] is limited  # one bucket per model for the whole run
        assert limited.job_buckets["requests"] is not None and limited.slots is not None
        assert limited.job_buckets["tokens"] is None
        free = limits["m/free"]
        assert (
            free.job_buckets["requests"] is None
            and free.job_buckets["tokens"] is None
            and free.slots is None
        )
        # A model outside the job's [models] tables (no tables at all is allowed) is unlimited.
        assert limits["m/unlisted"].job_buckets["requests"] is None

    run_virtual(scenario)
