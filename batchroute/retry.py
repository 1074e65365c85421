"""When to try a failed call again, and how long to wait first."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC

# The default of `run.max_retry_after_s`: a server asking for more than this is treated as
# asking for this: a batch run should keep trying, and a row waiting longer than a few
# minutes is better moved to a fallback model.
MAX_RETRY_AFTER_S = 120.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts per model and the exponential backoff between them."""

    max_attempts: int = 4
    base_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = MAX_RETRY_AFTER_S

    def delay(self, attempt: int, *, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based).

        The server's Retry-After wins when it gives one, because it knows when capacity frees;
        a little jitter on top keeps the rows it throttled together from returning together.
        Without it: exponential backoff with "equal jitter" (half fixed, half random), so waits
        grow with each attempt but never fall to zero.
        """
        if retry_after_s is not None:
            return min(retry_after_s, self.max_retry_after_s) + rng.uniform(0, 0.1 * self.base_s)
        ceiling = min(self.max_backoff_s, self.base_s * 2 ** (attempt - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait, or None when it does not say.

    `retry-after-ms` (sent by OpenAI and Azure) is more precise, so it is read first;
    `Retry-After` is either delta-seconds or an HTTP date (RFC 9110, section 10.2.3).
    Header lookup must be case-insensitive, as httpx's Headers are.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # the asctime form carries no zone; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
