"""A model's sliding 60-second window of admitted requests and tokens, against its limits.

Four dimensions, as providers count them: requests (rpm), all tokens (tpm), input tokens
(itpm) and output tokens (otpm); a limit of 0 is no limit. The window's state is told on every
answer in OpenAI's `x-ratelimit-*` headers or Anthropic's `anthropic-ratelimit-*` ones.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import UTC, datetime, timedelta

__all__ = ["WINDOW_S", "RateWindow"]

WINDOW_S = 60.0
# How finely a key "already partly spent" spreads its past use over the last minute.
_SPENT_STEPS = 600

_DIMENSIONS = ("requests", "tokens", "input-tokens", "output-tokens")


class RateWindow:
    """Requests and tokens one model admitted in the last 60 s, against its limits."""

    __slots__ = ("limits", "style", "_events", "_used")

    def __init__(
        self,
        *,
        rpm: int,
        tpm: int,
        itpm: int = 0,
        otpm: int = 0,
        style: str = "openai",
        spent: float = 0.0,
        now: float = 0.0,
    ) -> None:
        self.limits = (rpm, tpm, itpm, otpm)
        self.style = style  # "openai", "anthropic" or "none": which headers tell the state
        self._events: deque[tuple[float, tuple[float, ...]]] = deque()
        self._used = [0.0, 0.0, 0.0, 0.0]
        if spent > 0:
            # A key used by someone else over the last minute: its use expires gradually.
            share = tuple(spent * limit / _SPENT_STEPS for limit in self.limits)
            for step in range(_SPENT_STEPS):
                self._add(now - WINDOW_S + (step + 1) * WINDOW_S / _SPENT_STEPS, share)

    @property
    def rpm(self) -> int:
        return self.limits[0]

    @property
    def tpm(self) -> int:
        return self.limits[1]

    def _add(self, at: float, amounts: tuple[float, ...]) -> None:
        self._events.append((at, amounts))
        for i, amount in enumerate(amounts):
            self._used[i] += amount

    def _expire(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self._events and self._events[0][0] <= horizon:
            for i, amount in enumerate(self._events.popleft()[1]):
                self._used[i] -= amount

    @staticmethod
    def _amounts(prompt: int, completion: int) -> tuple[float, ...]:
        return (1.0, float(prompt + completion), float(prompt), float(completion))

    def wait_s(self, tokens: int, *, now: float, prompt: int | None = None) -> float:
        """Seconds until a request of `tokens` tokens (`prompt` of them input) fits the window;
        0.0 when it fits now."""
        self._expire(now)
        prompt = tokens if prompt is None else prompt
        wanted = self._amounts(prompt, tokens - prompt)
        wait = 0.0
        for i, limit in enumerate(self.limits):
            if not limit or self._used[i] + wanted[i] <= limit + 1e-9:
                continue
            excess, freed = self._used[i] + wanted[i] - limit, 0.0
            for start, amounts in self._events:
                freed += amounts[i]
                if freed >= excess - 1e-9:
                    wait = max(wait, start + WINDOW_S - now)
                    break
            else:  # larger than the whole budget: it never fits, say so a window at a time
                wait = max(wait, WINDOW_S)
        return wait

    def admit(self, tokens: int, *, now: float, prompt: int | None = None) -> None:
        prompt = tokens if prompt is None else prompt
        self._add(now, self._amounts(prompt, tokens - prompt))

    def headers(self, *, now: float | None = None) -> dict[str, str]:
        """The limit headers in the model's style, as providers send them on every response."""
        if self.style == "none":
            return {}
        if now is not None:
            self._expire(now)
        # Full again once everything now in the window has expired.
        full_in = 0.0 if not self._events or now is None else self._events[-1][0] + WINDOW_S - now
        out: dict[str, str] = {}
        for i, (name, limit) in enumerate(zip(_DIMENSIONS, self.limits, strict=True)):
            if not limit:
                continue
            remaining = str(max(0, math.floor(limit - self._used[i] + 1e-9)))
            reset = max(0.0, full_in) if self._used[i] > 1e-9 else 0.0
            if self.style == "anthropic":
                at = datetime.now(UTC) + timedelta(seconds=math.ceil(reset))
                stamp = at.replace(microsecond=0).isoformat().replace("+00:00", "Z")
                prefix = f"anthropic-ratelimit-{name}"
                out |= {f"{prefix}-limit": str(limit), f"{prefix}-remaining": remaining}
                out[f"{prefix}-reset"] = stamp
            elif i < 2:  # OpenAI states requests and tokens only
                out[f"x-ratelimit-limit-{name}"] = str(limit)
                out[f"x-ratelimit-remaining-{name}"] = remaining
                out[f"x-ratelimit-reset-{name}"] = _duration(reset)
        return out


def _duration(seconds: float) -> str:
    """A Go-style duration as OpenAI writes it: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{rest:.3f}s" if minutes else f"{rest:.3f}s"
