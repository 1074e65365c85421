"""The simulator's state: its model table, balance, ledger, fault draws and rate windows."""

from __future__ import annotations

import itertools
import os
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchroute.sim import answers
from batchroute.sim.config import ModelSpec, SimConfig
from batchroute.sim.window import RateWindow

if TYPE_CHECKING:  # replay needs polars, which a simulator without --replay never loads
    from batchroute.sim.replay import ReplayTable

__all__ = ["ERROR_KEYS", "BatchDesk", "ModelBook", "Sim"]

ERROR_KEYS = ("429", "500", "503", "hang", "402", "404")


@dataclass(slots=True)
class ModelBook:
    """What the simulator did and charged for one model."""

    requests: int = 0
    ok: int = 0
    charged_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KEYS, 0))


@dataclass(slots=True)
class BatchDesk:
    """The Batch API's files and batches (their logic lives in `batches.py`)."""

    files: dict[str, Any] = field(default_factory=dict)
    batches: dict[str, Any] = field(default_factory=dict)
    lines: int = 0  # lines processed across batches
    charged_usd: float = 0.0
    cancelled: int = 0
    seen: dict[bytes, int] = field(default_factory=dict)  # line draws per (model, prompt)


class Sim:
    """The server's whole state: config, balance, ledger, retry counters and rate windows."""

    def __init__(
        self,
        config: SimConfig,
        *,
        seed: int = 0,
        balance: float | None = None,
        api_key: str | None = None,
        fast: bool = False,
        replay: ReplayTable | None = None,
    ) -> None:
        self.config, self.seed, self.fast = config, seed, fast
        self.replay = replay  # replay mode: these models answer from recorded outputs
        self.start_balance = config.balance_usd if balance is None else balance
        self.auth = None if api_key is None else f"Bearer {api_key}"
        self._ids = itertools.count()
        self._id_prefix = os.urandom(4).hex()
        self.reset()

    def reset(self) -> None:
        """Forget every charge, count and window, as if the server had just started."""
        self.balance = self.start_balance
        self.total_charged = 0.0
        self.books = {name: ModelBook() for name in self.config.models}
        self.rejected = {"400": 0, "401": 0}
        # Keyed by a digest of (model, prompt) so long prompts are not kept in memory.
        self.seen: dict[bytes, int] = {}
        now = time.monotonic()
        self.windows = {
            name: RateWindow(
                rpm=m.rpm,
                tpm=m.tpm,
                itpm=m.itpm,
                otpm=m.otpm,
                style=m.header_style,
                spent=m.spent,
                now=now,
            )
            for name, m in self.config.models.items()
        }
        self.rng = random.Random(self.seed)
        self.desk = BatchDesk()

    def next_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):012x}"

    def fault(self, model: str, spec: ModelSpec, prompt: str) -> str | None:
        """The injected failure for this request, if any.

        The draw hashes (seed, model, prompt, k) where k counts earlier requests of the same
        (model, prompt): a retry draws again, and a run replays identically in any order.
        """
        e = spec.errors
        if not (e.rate_429 or e.rate_500 or e.rate_503 or e.hang):
            return None
        key = answers.digest_key(model, prompt)
        k = self.seen.get(key, 0)
        self.seen[key] = k + 1
        u = answers.unit_draw(self.seed, model, prompt, k)
        for name, p in (("429", e.rate_429), ("500", e.rate_500), ("503", e.rate_503)):
            if u < p:
                return name
            u -= p
        return "hang" if u < e.hang else None

    def latency_s(self, spec: ModelSpec) -> float:
        """A delay uniform in [mean - jitter, mean + jitter] milliseconds, floor 0, in seconds."""
        latency = spec.latency_ms
        low, high = latency.mean - latency.jitter, latency.mean + latency.jitter
        return max(0.0, self.rng.uniform(low, high)) / 1000

    def charge(
        self, book: ModelBook, spec: ModelSpec, *, prompt: int, completion: int
    ) -> dict[str, str]:
        """Book a successful call; returns the charge and balance headers."""
        prices = spec.usd_per_mtok
        usd = (prompt * prices.input + completion * prices.output) / 1e6
        return self.book_charge(book, usd=usd, prompt=prompt, completion=completion)

    def book_charge(
        self, book: ModelBook, *, usd: float, prompt: int, completion: int
    ) -> dict[str, str]:
        """Book a successful call charged `usd`; returns the charge and balance headers."""
        charged = f"{usd:.10f}"
        # Add exactly what the header says, so a client summing headers matches the ledger.
        value = float(charged)
        self.balance -= value
        self.total_charged += value
        book.ok += 1
        book.charged_usd += value
        book.prompt_tokens += prompt
        book.completion_tokens += completion
        return {"X-MDB-Charged-USD": charged, "X-MDB-Balance-USD": f"{self.balance:.10f}"}

    def ledger(self) -> dict[str, Any]:
        return {
            "balance_usd": self.balance,
            "starting_balance_usd": self.start_balance,
            "total_charged_usd": self.total_charged,
            "rejected": dict(self.rejected),
            "batches": {
                "files": len(self.desk.files),
                "batches": len(self.desk.batches),
                "cancelled": self.desk.cancelled,
                "lines": self.desk.lines,
                "charged_usd": self.desk.charged_usd,
            },
            "models": {
                name: {
                    "requests": b.requests,
                    "ok": b.ok,
                    "charged_usd": b.charged_usd,
                    "prompt_tokens": b.prompt_tokens,
                    "completion_tokens": b.completion_tokens,
                    "errors": dict(b.errors),
                }
                for name, b in self.books.items()
            },
        }
