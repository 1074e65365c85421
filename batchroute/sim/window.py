"""A model's sliding 60-second window of admitted requests and tokens, against its rpm and tpm."""

from __future__ import annotations

from collections import deque

__all__ = ["WINDOW_S", "RateWindow"]

WINDOW_S = 60.0


class RateWindow:
    """Requests and tokens one model admitted in the last 60 s, against its rpm and tpm."""

    __slots__ = ("rpm", "tpm", "_events", "_tokens")

    def __init__(self, *, rpm: int, tpm: int) -> None:
        self.rpm, self.tpm = rpm, tpm
        self._events: deque[tuple[float, int]] = deque()
        self._tokens = 0

    def _expire(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self._events and self._events[0][0] <= horizon:
            self._tokens -= self._events.popleft()[1]

    def wait_s(self, tokens: int, *, now: float) -> float:
        """Seconds until a request of `tokens` tokens fits the window; 0.0 when it fits now."""
        self._expire(now)
        events, wait = self._events, 0.0
        if self.rpm and len(events) >= self.rpm:
            # The slot frees when the request that pushes the count over the limit expires.
            wait = events[len(events) - self.rpm][0] + WINDOW_S - now
        if self.tpm and self._tokens + tokens > self.tpm:
            excess, freed = self._tokens + tokens - self.tpm, 0
            for start, used in events:
                freed += used
                if freed >= excess:
                    wait = max(wait, start + WINDOW_S - now)
                    break
            else:  # larger than the whole budget: it never fits, say so a window at a time
                wait = max(wait, WINDOW_S)
        return wait

    def admit(self, tokens: int, *, now: float) -> None:
        self._events.append((now, tokens))
        self._tokens += tokens

    def headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers, as providers send them on every response."""
        out = {}
        if self.rpm:
            out["x-ratelimit-limit-requests"] = str(self.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, self.rpm - len(self._events)))
        if self.tpm:
            out["x-ratelimit-limit-tokens"] = str(self.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, self.tpm - self._tokens))
        return out
