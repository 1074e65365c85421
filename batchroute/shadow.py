"""Shadow sampling: would the cheapest tier have handled the rows the router sent past it?

For a deterministic sample of those rows the executor also runs the cheapest model with the
plan's checks. Per rule or label, `RouteStats` turns the sample into the estimated share of
rows the cheapest tier would have handled (a Wilson 95% interval) and the money that is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batchroute.job import Job, route_targets
from batchroute.records import OK, RowResult, RowTotals
from batchroute.stats import wilson


def _tiers(job: Job) -> list[str]:
    """Every model a row can be answered by: the route's tiers and its targets' tiers."""
    route = job.route
    tiers = [m for m in (route.model, *route.tiers) if m is not None]
    for target in route_targets(job):
        tiers += job.plans[target].tiers if target in job.plans else (target,)
    return list(dict.fromkeys(tiers))


def _price(job: Job, model: str) -> float | None:
    prices = job.model(model).usd_per_mtok
    return None if prices is None else prices.input + prices.output


def shadow_model(job: Job) -> str:
    """The shadow model: `route.shadow_model`, else the tier with the lowest price per token.

    Raises ValueError when the cheapest cannot be known (a tier without `usd_per_mtok`).
    """
    if job.route.shadow_model is not None:
        return job.route.shadow_model
    priced: dict[str, float] = {}
    for model in _tiers(job):
        price = _price(job, model)
        if price is None:
            raise ValueError(
                f"set it, or give [models.{model!r}] usd_per_mtok so the cheapest tier is known"
            )
        priced[model] = price
    return min(priced, key=lambda m: priced[m])


def is_sampled(row_id: object, *, rate: float, seed: int) -> bool:
    """Whether `row_id` is in the sample: a hash of (seed, row id), so reruns pick the same rows."""
    if rate <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\x00{row_id!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < rate


@dataclass(frozen=True, slots=True)
class ShadowPolicy:
    """Which rows get a shadow answer, and from which model."""

    model: str
    rate: float
    seed: int
    # Tiers priced at or under the shadow model: a row they answered was not sent past it.
    not_past: frozenset[str]

    @classmethod
    def from_job(cls, job: Job) -> ShadowPolicy | None:
        """The job's policy; None without `shadow_rate`. Raises ValueError like shadow_model."""
        if job.route.shadow_rate <= 0:
            return None
        model = shadow_model(job)
        price = _price(job, model)
        cheap = {model}
        if price is not None:
            cheap |= {m for m in _tiers(job) if (p := _price(job, m)) is not None and p <= price}
        return cls(model, job.route.shadow_rate, job.route.seed, frozenset(cheap))

    def past(self, answered_by: str | None) -> bool:
        """Whether an answer from `answered_by` means the row went past the cheapest tier."""
        return answered_by is not None and answered_by not in self.not_past

    def sampled(self, row_id: object) -> bool:
        return is_sampled(row_id, rate=self.rate, seed=self.seed)


@dataclass(slots=True)
class _Route:
    rows: int = 0
    cost_usd: float = 0.0
    past_cheapest: int = 0  # rows the router sent past the cheapest tier
    sampled: int = 0  # of those, shadowed with a verdict
    passed: int = 0
    potential_saving_usd: float = 0.0  # sum over sampled rows of (row cost - shadow cost)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, "cost_usd": self.cost_usd}
        if not self.past_cheapest:
            return out
        out |= {"past_cheapest": self.past_cheapest, "sampled": self.sampled}
        if self.sampled:
            share = self.passed / self.sampled
            low, high = wilson(self.passed, self.sampled)
            # The money: rows past the cheapest tier x the share it would have handled x the
            # mean difference between what such a row cost and what the shadow answer cost.
            per_row = self.potential_saving_usd / self.sampled
            out |= {
                "passed": self.passed,
                "share": share,
                "share_low": low,
                "share_high": high,
                "saving_usd": self.past_cheapest * share * per_row,
                "saving_usd_low": self.past_cheapest * low * per_row,
                "saving_usd_high": self.past_cheapest * high * per_row,
            }
        return out


@dataclass(slots=True)
class RouteStats:
    """Rows, cost and the shadow estimate per route key (rule name, label or plan)."""

    routes: dict[str, _Route] = field(default_factory=dict)
    unknown_labels: int = 0
    shadow_cost_usd: float = 0.0

    def add(self, result: RowResult, totals: RowTotals) -> None:
        """`totals`: the row's own (`result.totals()`), summed once by the caller."""
        if result.route_key is None:
            return
        route = self.routes.setdefault(result.route_key, _Route())
        route.rows += 1
        paid = totals.cost_usd or 0.0  # the known charges
        route.cost_usd += paid
        self.unknown_labels += result.label_unknown
        self.shadow_cost_usd += totals.shadow_cost_usd or 0.0
        if result.status != OK or not result.past_cheapest:
            return
        route.past_cheapest += 1
        if result.shadow_passed is not None:
            route.sampled += 1
            route.passed += result.shadow_passed
            paid -= totals.classifier_cost_usd or 0.0
            route.potential_saving_usd += paid - (totals.shadow_cost_usd or 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {key: route.as_dict() for key, route in self.routes.items()}


def shadow_lines(routes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per route key of a run summary that has a shadow estimate."""
    out = []
    for key, d in routes.items():
        if "share" not in d:
            continue
        out.append(
            f"shadow {key}: the cheapest tier would have handled ~{d['share']:.0%}"
            f" [{d['share_low']:.0%}-{d['share_high']:.0%}] of {d['past_cheapest']} rows"
            f" sent past it ({d['passed']}/{d['sampled']} sampled passed):"
            f" ~${d['saving_usd']:.4f} [{d['saving_usd_low']:.4f}-{d['saving_usd_high']:.4f}]"
        )
    return out
