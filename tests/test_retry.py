"""RetryPolicy.delay (backoff, jitter, Retry-After) and parse_retry_after."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx2
import pytest

from batchroute.retry import MAX_RETRY_AFTER_S, RetryPolicy, parse_retry_after


class _EdgeRandom(random.Random):
    """A Random whose `uniform` always returns one end of the range, to pin jitter down."""

    def __init__(self, *, high: bool) -> None:
        super().__init__(0)
        self._high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self._high else a


LOW, HIGH = _EdgeRandom(high=False), _EdgeRandom(high=True)
POLICY = RetryPolicy(max_attempts=50, base_s=0.5, max_backoff_s=30.0)

# ---- RetryPolicy.delay ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (6, 16.0), (7, 30.0), (12, 30.0), (50, 30.0)],
)
def test_backoff_doubles_per_attempt_up_to_the_cap_with_equal_jitter(
    attempt: int, ceiling: float
) -> None:
    # "Equal jitter": half the ceiling is fixed, the other half random, so a wait never
    # falls to zero and never passes the ceiling (which never passes max_backoff_s).
    assert POLICY.delay(attempt, retry_after_s=None, rng=LOW) == pytest.approx(ceiling / 2)
    assert POLICY.delay(attempt, retry_after_s=None, rng=HIGH) == pytest.approx(ceiling)


def test_jitter_stays_inside_its_bounds_and_actually_varies() -> None:
    rng = random.Random(1234)
    for attempt in range(1, 10):
        ceiling = min(POLICY.max_backoff_s, POLICY.base_s * 2 ** (attempt - 1))
        samples = [POLICY.delay(attempt, retry_after_s=None, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        # Rows throttled together must not all come back at the same instant.
        assert len(set(samples)) > 150
        assert max(samples) - min(samples) > ceiling / 4


def test_delays_grow_with_attempts_even_at_the_extremes_of_jitter() -> None:
    # Attempt n+1's shortest wait is never shorter than attempt n's longest, until the cap.
    for attempt in range(1, 6):
        longest = POLICY.delay(attempt, retry_after_s=None, rng=HIGH)
        assert POLICY.delay(attempt + 1, retry_after_s=None, rng=LOW) >= longest


def test_retry_after_wins_over_backoff_with_a_little_jitter() -> None:
    # Attempt 10 would back off 15-30 s; the server said 2 s, and it knows better.
    jitter = 0.1 * POLICY.base_s
    assert POLICY.delay(10, retry_after_s=2.0, rng=LOW) == pytest.approx(2.0)
    assert POLICY.delay(10, retry_after_s=2.0, rng=HIGH) == pytest.approx(2.0 + jitter)
    # Also when it asks for longer than our own backoff would wait.
    assert POLICY.delay(1, retry_after_s=45.0, rng=LOW) == pytest.approx(45.0)
    # "Retry now" is honoured too: zero is a value, not "no header".
    assert POLICY.delay(5, retry_after_s=0.0, rng=LOW) == 0.0


@pytest.mark.parametrize("asked", [MAX_RETRY_AFTER_S + 0.5, 3600.0, 86_400.0, float("inf")])
def test_retry_after_is_capped(asked: float) -> None:
    assert POLICY.delay(1, retry_after_s=asked, rng=LOW) == MAX_RETRY_AFTER_S
    assert POLICY.delay(1, retry_after_s=asked, rng=HIGH) <= MAX_RETRY_AFTER_S + 0.1 * 0.5


def test_a_small_max_backoff_caps_from_the_first_attempt() -> None:
    policy = RetryPolicy(base_s=2.0, max_backoff_s=1.0)
    for attempt in (1, 2, 8):
        assert 0.5 <= policy.delay(attempt, retry_after_s=None, rng=random.Random(attempt)) <= 1.0


# ---- parse_retry_after ----------------------------------------------------------------------

# 2015-10-21 07:27:30 UTC: thirty seconds before the dates in the headers below.
NOW = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC).timestamp()


def test_retry_after_ms_is_preferred_over_retry_after() -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "9"}
    assert parse_retry_after(headers) == 1.5


@pytest.mark.parametrize(
    ("value", "seconds"), [("7", 7.0), ("0", 0.0), ("2.5", 2.5), ("-3", 0.0), (" 4 ", 4.0)]
)
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after({"retry-after": value}) == seconds


@pytest.mark.parametrize("bad_ms", ["soon", "-5", ""])
def test_an_unusable_retry_after_ms_falls_back_to_retry_after(bad_ms: str) -> None:
    assert parse_retry_after({"retry-after-ms": bad_ms, "retry-after": "4"}) == 4.0
    assert parse_retry_after({"retry-after-ms": bad_ms}) is None


@pytest.mark.parametrize(
    "date",
    [
        "Wed, 21 Oct 2015 07:28:00 GMT",  # IMF-fixdate, the preferred form
        "Wednesday, 21-Oct-15 07:28:00 GMT",  # obsolete RFC 850 form, still to be accepted
    ],
)
def test_retry_after_as_an_http_date_counts_from_now(date: str) -> None:
    assert parse_retry_after({"retry-after": date}, now=NOW) == pytest.approx(30.0)


def test_an_http_date_in_the_past_means_retry_now() -> None:
    later = NOW + 3600
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=later) == 0.0


def test_an_http_date_uses_the_real_clock_without_now() -> None:
    in_ten = datetime.fromtimestamp(time.time() + 10, tz=UTC)
    header = in_ten.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 8.0 <= parse_retry_after({"retry-after": header}) <= 10.0  # type: ignore[operator]


@pytest.fixture
def new_york_time() -> Iterator[None]:
    """A local time zone that is not UTC, as on a developer's laptop."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.usefixtures("new_york_time")
def test_an_asctime_http_date_is_gmt_whatever_the_local_zone() -> None:
    # RFC 9110 section 5.6.7: recipients must accept asctime dates, which are always GMT.
    assert parse_retry_after({"retry-after": "Wed Oct 21 07:28:00 2015"}, now=NOW) == 30.0


@pytest.mark.parametrize("garbage", ["soon", "", "tomorrow at noon", "Wed, 99 Foo 2015"])
def test_garbage_retry_after_is_none(garbage: str) -> None:
    assert parse_retry_after({"retry-after": garbage}, now=NOW) is None


def test_no_header_is_none() -> None:
    assert parse_retry_after({}) is None
    assert parse_retry_after(httpx2.Headers({"content-type": "application/json"})) is None


def test_lookup_is_case_insensitive_on_real_response_headers() -> None:
    assert parse_retry_after(httpx2.Headers({"Retry-After-Ms": "250"})) == 0.25
    assert parse_retry_after(httpx2.Headers({"RETRY-AFTER": "3"})) == 3.0
    both = httpx2.Headers({"Retry-After": "9", "Retry-After-MS": "20"})
    assert parse_retry_after(both) == 0.02
