"""Run statistics, the progress bar on stderr, and the closing summary."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from batchroute.job import Job
from batchroute.records import FAILED, OK, SKIPPED, RowResult
from batchroute.router import Router
from batchroute.shadow import RouteStats


@dataclass(slots=True)
class RunStats:
    """Counters updated as rows finish; what the bar shows and the summary reports."""

    total: int
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    unverified: int = 0  # answered, but no tier's answer passed the check
    escalated: int = 0
    fallback: int = 0
    repair_turns: int = 0  # repair calls' turns asked for
    repaired: int = 0  # rows whose answer passed after a repair turn
    repair_cost_usd: float = 0.0  # what the repair turns cost (part of cost_usd)
    calls: int = 0
    cost_usd: float = 0.0  # the known charges
    priced_rows: int = 0  # rows with at least one known charge
    unknown_cost_rows: int = 0  # rows with an answered call of unknown charge
    cached_usd: float = 0.0  # the original charges of answers taken from the store
    # What the same rows would have cost on the plans' top tier; None when it cannot be known.
    top_tier_cost_usd: float | None = 0.0
    top_tier: str | None = None
    balances_usd: dict[str, float] = field(default_factory=dict)  # by endpoint name
    routes: RouteStats = field(default_factory=RouteStats)  # per rule, label or plan
    # Per model, the latest limits per minute its answers' rate-limit headers named.
    limits_seen: dict[str, dict[str, int]] = field(default_factory=dict)
    rate_limited: int = 0  # calls answered 429
    deduped_rows: int = 0  # rows answered by another row's identical call
    shared_usd: float = 0.0  # what those calls cost, paid once by the rows that made them

    def add(self, result: RowResult, *, top_tier_cost: float | None) -> None:
        totals = result.totals()
        self.routes.add(result, totals)
        status = result.status
        self.done += 1
        self.ok += status == OK
        self.failed += status == FAILED
        self.skipped += status == SKIPPED
        self.unverified += status == OK and result.check_passed is False
        self.escalated += result.escalated
        self.fallback += result.fallback_used
        self.repair_turns += result.repairs
        self.repaired += result.repaired
        self.repair_cost_usd += totals.repair_cost_usd
        self.calls += totals.calls_made
        self.deduped_rows += totals.deduped
        self.shared_usd += totals.shared_cost_usd or 0.0
        self.cost_usd += totals.cost_usd or 0.0
        self.priced_rows += totals.priced
        self.unknown_cost_rows += totals.cost_partly_unknown
        self.cached_usd += totals.cached_usd
        self.rate_limited += totals.rate_limited
        for call in result.calls:
            limits = (
                ("requests", call.limit_requests),
                ("tokens", call.limit_tokens),
                ("input_tokens", call.limit_input_tokens),
                ("output_tokens", call.limit_output_tokens),
            )
            named = {dimension: value for dimension, value in limits if value is not None}
            if named:
                self.limits_seen[call.model] = named
        if self.top_tier_cost_usd is not None and result.status != SKIPPED:
            if top_tier_cost is None:
                self.top_tier_cost_usd = None
            else:
                self.top_tier_cost_usd += top_tier_cost

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def cost_unknown(self) -> bool:
        """No charge is known, and some answered call's is not: the total is unknown."""
        return self.unknown_cost_rows > 0 and self.priced_rows == 0

    def total_text(self) -> str:
        """`$x`, `$x + unknown` when some answered calls' charges are unknown, or `unknown`."""
        if self.cost_unknown:
            return "unknown"
        known = f"${self.cost_usd:.4f}"
        return f"{known} + unknown" if self.unknown_cost_rows else known

    def as_dict(self) -> dict[str, Any]:
        ran = self.done - self.skipped
        cost = None if self.cost_unknown else self.cost_usd
        return {
            "rows": self.done,
            "ok": self.ok,
            "failed": self.failed,
            "skipped": self.skipped,
            "unverified": self.unverified,
            "calls": self.calls,
            "escalation_rate": self.escalated / ran if ran else 0.0,
            "fallback_rate": self.fallback / ran if ran else 0.0,
            "repair_turns": self.repair_turns,
            "repair_rate": self.repaired / ran if ran else 0.0,  # rows a repair turn saved
            "repair_cost_usd": self.repair_cost_usd,
            "cost_usd": cost,  # the known charges; None when none is known (see the next)
            "cost_unknown_rows": self.unknown_cost_rows,
            "new_spend_usd": None if cost is None else cost - self.cached_usd,
            "cached_usd": self.cached_usd,
            "cost_per_row_usd": None if cost is None else cost / ran if ran else 0.0,
            "top_tier": self.top_tier,
            "top_tier_cost_usd": self.top_tier_cost_usd,
            # The job's own endpoint's balance; every endpoint's in balances_usd.
            "balance_usd": self.balances_usd.get("default"),
            "balances_usd": self.balances_usd,
            "elapsed_s": round(self.elapsed_s, 3),
            "routes": self.routes.as_dict(),
            "unknown_labels": self.routes.unknown_labels,
            "shadow_cost_usd": self.routes.shadow_cost_usd,
            "limits_seen": self.limits_seen,
            "rate_limited_calls": self.rate_limited,
            "deduped_rows": self.deduped_rows,
            "dedupe_saved_usd": self.shared_usd,
        }

    def summary_line(self) -> str:
        d = self.as_dict()
        ran = self.done - self.skipped
        parts = [
            f"{self.done} rows: {self.ok} ok"
            + (f" ({self.unverified} failed the check on every tier)" if self.unverified else "")
            + f", {self.failed} failed"
            + (f", {self.skipped} skipped" if self.skipped else ""),
            f"escalated {d['escalation_rate']:.1%}"
            + (
                f" (repaired {d['repair_rate']:.1%} in {self.repair_turns} repair turns"
                f" costing ${self.repair_cost_usd:.4f})"
                if self.repair_turns
                else ""
            ),
            _per_1k(d["cost_per_row_usd"], partly_unknown=self.unknown_cost_rows > 0),
            f"total {self.total_text()}"
            + (
                f" (new spend ${self.cost_usd - self.cached_usd:.4f},"
                f" cached ${self.cached_usd:.4f})"
                if self.cached_usd
                else ""
            ),
        ]
        if self.top_tier is not None and self.top_tier_cost_usd and ran and not self.cost_unknown:
            saving = 1 - self.cost_usd / self.top_tier_cost_usd
            parts.append(
                f"vs ~${self.top_tier_cost_usd:.4f} all on {self.top_tier} ({saving:.0%} saved)"
                if saving >= 0
                else f"vs ~${self.top_tier_cost_usd:.4f} all on {self.top_tier}"
            )
        if self.routes.unknown_labels:
            parts.append(f"{self.routes.unknown_labels} unknown labels sent to the default")
        if self.routes.shadow_cost_usd:
            parts.append(f"shadow sampling ${self.routes.shadow_cost_usd:.4f} (not in the total)")
        for model, seen in self.limits_seen.items():
            named = ", ".join(f"{value:,} {_PER_MINUTE[dim]}" for dim, value in seen.items())
            parts.append(f"{model} limits {named}")
        if self.deduped_rows:
            parts.append(
                f"{self.deduped_rows} identical rows shared a call (saved ${self.shared_usd:.4f})"
            )
        if self.rate_limited:
            parts.append(f"{self.rate_limited} calls answered 429")
        for endpoint, balance in self.balances_usd.items():
            name = "" if endpoint == "default" else f" ({endpoint})"
            parts.append(f"balance{name} ${balance:.2f}")
        # A model on a CPU does well under one row a second: show that, not "0 rows/s".
        rate = self.done / max(self.elapsed_s, 1e-9)
        shown = f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"
        parts.append(f"{self.elapsed_s:.1f}s ({shown} rows/s)")
        return "; ".join(parts)


_PER_MINUTE = {
    "requests": "rpm",
    "tokens": "tpm",
    "input_tokens": "itpm",
    "output_tokens": "otpm",
}


def _per_1k(cost_per_row: float | None, *, partly_unknown: bool) -> str:
    if cost_per_row is None:
        return "cost per row unknown"
    shown = f"${cost_per_row * 1000:.4f} per 1k rows"
    return f"at least {shown}" if partly_unknown else shown


class ProgressBar:
    """A tqdm bar on stderr, only when stderr is a terminal and the user did not ask quiet."""

    def __init__(self, stats: RunStats, *, quiet: bool) -> None:
        self._stats = stats
        enabled = not quiet and sys.stderr.isatty()
        self._bar = (
            tqdm(total=stats.total, unit="row", file=sys.stderr, dynamic_ncols=True)
            if enabled
            else None
        )
        self._last_postfix = 0.0

    def update(self, rows: int = 1) -> None:
        if self._bar is None:
            return
        self._bar.update(rows)
        now = time.monotonic()
        if now - self._last_postfix >= 0.5:  # postfix formatting is not free; refresh twice a s
            self._last_postfix = now
            self._set_postfix()

    def _set_postfix(self) -> None:
        assert self._bar is not None
        s = self._stats
        ran = max(s.done - s.skipped, 1)
        self._bar.set_postfix_str(
            f"${s.cost_usd:.4f} esc {s.escalated / ran:.0%} fail {s.failed / ran:.0%}",
            refresh=False,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._set_postfix()  # the final figures, not those of the last half second
            self._bar.close()


def top_tier_of(router: Router) -> str | None:
    """The model every row would go to in the "all on the best model" baseline.

    The run knows its plans, so its top tier is the last tier they share. `compare` reads
    only outputs and takes the model with the dearest mean answer call instead
    (`comparison._top_tier`): the two agree on a cascade and may differ on rules or a
    classifier, where the run names no top tier at all.
    """
    tops = {plan.tiers[-1] for plan in router.plans()}
    if len(tops) != 1 or all(not plan.is_cascade for plan in router.plans()):
        return None
    return tops.pop()


def top_tier_cost(result: RowResult, *, job: Job, top: str | None) -> float | None:
    """The row's cost had it gone straight to the top tier: paid if it did, else priced."""
    if top is None:
        return None
    for call in result.answer_calls:  # not the classifier's, a judge's or a shadow call
        # A shared answer (deduped) cost what the row that made the call paid.
        charge = call.shared_charge_usd if call.deduped else call.charge_usd
        if call.model == top and call.ok and charge is not None:
            return charge
    prices = job.model(top).usd_per_mtok
    if prices is None:
        return None
    for call in result.answer_calls:
        if call.ok and call.prompt_tokens is not None:
            tokens_in, tokens_out = call.prompt_tokens, call.completion_tokens or 0
            return prices.cost(tokens_in, tokens_out)
    return 0.0
