"""Providers' rate-limit headers (OpenAI's and Anthropic's) read into validated quotas.

OpenAI sends `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, the reset as a Go-style
duration (`1s`, `6m0s`, `20ms`); Anthropic sends `anthropic-ratelimit-{requests,tokens,
input-tokens,output-tokens}-{limit,remaining,reset}`, the reset as an RFC 3339 time. Both
count per minute and replenish continuously: `reset` is when the quota is full again.
Whatever a server sends is hostile: a value that is not a finite amount in range makes its
whole dimension unusable, and its header name is returned so the caller can warn once.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = [
    "DIMENSIONS",
    "LimitHeaders",
    "Quota",
    "limit_of",
    "parse_duration",
    "read_limit_headers",
]

# What a limit counts: requests, all tokens, or (Anthropic) input and output tokens apart.
DIMENSIONS = ("requests", "tokens", "input_tokens", "output_tokens")

# Larger than any real provider's per-minute quota; a bigger number is a garbled header.
MAX_AMOUNT = 10**12
# A reset further away than a day is not a per-minute limit's reset.
MAX_RESET_S = 86_400.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@dataclass(frozen=True, slots=True)
class Quota:
    """One dimension's limit per minute, what remains of it, and seconds until it is full."""

    limit: int
    remaining: int
    reset_s: float | None = None


@dataclass(frozen=True, slots=True)
class LimitHeaders:
    """The quotas a response named, by dimension; `garbled` names headers that were unusable."""

    quotas: dict[str, Quota] = field(default_factory=dict)
    garbled: tuple[str, ...] = ()


_PARTS = ("limit", "remaining", "reset")


def _names(dimension: str) -> tuple[tuple[str, str, str], ...]:
    """(limit, remaining, reset) header names of `dimension`, in each provider's spelling."""
    dashed = dimension.replace("_", "-")
    anthropic = tuple(f"anthropic-ratelimit-{dashed}-{part}" for part in _PARTS)
    if dimension not in ("requests", "tokens"):
        return (anthropic,)  # type: ignore[return-value]
    openai = tuple(f"x-ratelimit-{part}-{dimension}" for part in _PARTS)
    return (openai, anthropic)  # type: ignore[return-value]


# Every answer is read for them: spelled out once, not on each answer.
_NAMES = {dimension: _names(dimension) for dimension in DIMENSIONS}


_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


def read_limit_headers(headers: Mapping[str, str], *, now: datetime | None = None) -> LimitHeaders:
    """Every quota `headers` name (header names in any case; the first of a repeated one)."""
    # One pass over the answer's few names, then plain lookups: looking up each provider's
    # twenty spellings case-insensitively cost more, on every answer.
    named: dict[str, str] = {}
    for name, value in headers.items():
        low = name.lower()
        if low.startswith(_PREFIXES):
            named.setdefault(low, value)
    if not named:
        return LimitHeaders()
    quotas: dict[str, Quota] = {}
    garbled: list[str] = []
    for dimension in DIMENSIONS:
        for limit_name, remaining_name, reset_name in _NAMES[dimension]:
            raw_limit, raw_remaining = named.get(limit_name), named.get(remaining_name)
            raw_reset = named.get(reset_name)
            if raw_limit is None and raw_remaining is None:
                continue
            limit, remaining = _amount(raw_limit), _amount(raw_remaining)
            reset = None if raw_reset is None else _reset_s(raw_reset, now=now)
            bad = [
                name
                for name, value, raw in (
                    (limit_name, limit, raw_limit),
                    (remaining_name, remaining, raw_remaining),
                    (reset_name, reset, raw_reset),
                )
                if value is None and raw is not None
            ]
            if raw_limit is None or raw_remaining is None:
                bad.append(remaining_name if raw_remaining is None else limit_name)
            if bad or limit is None or remaining is None or limit <= 0:
                garbled.extend(bad or [limit_name])
                continue
            quotas[dimension] = Quota(int(limit), int(min(remaining, limit)), reset)
            break
    return LimitHeaders(quotas, tuple(dict.fromkeys(garbled)))


def _amount(raw: str | None) -> float | None:
    """A whole, finite, non-negative count within range, else None."""
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0 or value > MAX_AMOUNT or value != int(value):
        return None
    return value


def _reset_s(raw: str, *, now: datetime | None) -> float | None:
    """Seconds until the quota is full: a duration (OpenAI) or an RFC 3339 time (Anthropic)."""
    text = raw.strip()
    seconds = parse_duration(text)
    if seconds is None and "T" in text:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
        if when.tzinfo is None:  # RFC 3339 always carries a zone; a time without one is garbled
            return None
        seconds = max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds <= MAX_RESET_S:
        return None
    return seconds


@functools.lru_cache(maxsize=4096)
def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (`6m0s`, `1.5s`, `20ms`) or a bare number; else None."""
    try:
        return float(text) if text and text[-1].isdigit() else _go_duration(text)
    except ValueError:
        return None


def _go_duration(text: str) -> float | None:
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


def limit_of(quotas: Mapping[str, Quota], dimension: str) -> int | None:
    """The limit per minute `quotas` name for `dimension`, or None."""
    quota = quotas.get(dimension)
    return quota.limit if quota is not None else None
