"""Routers pick a Plan for every row of a batch; strategies compose through plans."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

from batchroute.checks import Check, build_check
from batchroute.errors import ConfigError
from batchroute.job import Job


@dataclass(frozen=True, slots=True)
class Plan:
    """Ordered tiers (model names), an optional check, and the request parameters."""

    name: str
    tiers: tuple[str, ...]
    check: Check | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def is_cascade(self) -> bool:
        return len(self.tiers) > 1


class Router(Protocol):
    strategy: str

    def plans(self) -> list[Plan]:
        """Every plan this router can pick, for validation and cost estimates."""
        ...

    def route(self, frame: pl.DataFrame) -> list[Plan]:
        """One plan per row of `frame`, in order; whole-batch so rules can run in polars."""
        ...


class SinglePlanRouter:
    """`fixed` (a one-tier plan) and `cascade` (a multi-tier plan): the same plan for every row."""

    def __init__(self, strategy: str, plan: Plan) -> None:
        self.strategy = strategy
        self._plan = plan

    def plans(self) -> list[Plan]:
        return [self._plan]

    def route(self, frame: pl.DataFrame) -> list[Plan]:
        return [self._plan] * frame.height


def build_router(job: Job) -> Router:
    """The router a job asks for; a bad check becomes a ConfigError naming the job file."""
    try:
        check = build_check(job.check, params=job.params)
    except ValueError as exc:
        raise ConfigError(f"{job.source}: check.{exc}") from None
    params = job.params.to_wire()
    route = job.route
    if route.strategy == "fixed":
        assert route.model is not None
        plan = Plan(name=f"fixed:{route.model}", tiers=(route.model,), check=check, params=params)
    else:
        plan = Plan(
            name="cascade:" + ">".join(route.tiers), tiers=route.tiers, check=check, params=params
        )
    return SinglePlanRouter(route.strategy, plan)
