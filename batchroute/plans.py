"""Plans: tiers, checks and parameters; built from the route, `[plans.NAME]` and model targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchroute.check_config import CheckConfig
from batchroute.checks import (
    Check,
    CheckSuite,
    ContextCheck,
    LogprobCheck,
    PythonCheck,
    build_check,
    import_function,
)
from batchroute.errors import ConfigError
from batchroute.job import Job, Params
from batchroute.judge import JudgeCheck


@dataclass(frozen=True, slots=True)
class Plan:
    """Ordered tiers (model names), an optional check suite, and the request parameters."""

    name: str
    tiers: tuple[str, ...]
    check: CheckSuite | None = None
    params: dict[str, Any] = field(default_factory=dict)
    rule: str | None = None  # the rule that picked this plan, for the results and the summary

    @property
    def is_cascade(self) -> bool:
        return len(self.tiers) > 1


def merge_params(base: Params, *, override: Params | None) -> Params:
    """`override`'s keys that were written in the job file, over `base`."""
    if override is None:
        return base
    return base.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})


def build_checks(
    configs: Sequence[CheckConfig], *, params: Params, base_dir: Path | None
) -> CheckSuite | None:
    """The suite of a plan, None without checks.

    Raises ValueError("check.key: problem", or "check[N] (type).key: problem" when there
    are several) for a check that cannot work, a python function that does not import.
    """
    quick: list[Check] = []
    slow: list[ContextCheck] = []
    columns: list[str] = []
    for number, config in enumerate(configs, start=1):
        where = "check" if len(configs) == 1 else f"check[{number}] ({config.type})"
        try:
            if config.type == "python":
                assert config.function is not None
                try:
                    function = import_function(config.function, base_dir=base_dir)
                except ValueError as exc:
                    raise ValueError(f"function: {exc}") from None
                slow.append(
                    PythonCheck(function, reference=config.function, timeout_s=config.timeout_s)
                )
            elif config.type == "judge":
                judge = JudgeCheck(config)
                slow.append(judge)
                columns.extend(judge.columns)
            elif config.type == "confidence" and config.logprobs:
                if not params.logprobs:
                    raise ValueError(
                        "logprobs: the plan must ask for them (params.logprobs = true)"
                    )
                assert config.threshold is not None
                slow.append(LogprobCheck(threshold=config.threshold))
            else:
                check = build_check(config, params=params)
                assert check is not None
                quick.append(check)
        except ValueError as exc:
            raise ValueError(f"{where}.{exc}") from None
    return CheckSuite(quick=quick, slow=slow, columns=columns) if quick or slow else None


class PlanBook:
    """Every plan of a job, built once: checks import and compile before any call is made.

    A target names a `[plans.NAME]` table, or else a model, which becomes a one-tier plan
    with the job's `[check]` and `[params]`. Raises ConfigError naming the job file and key.
    """

    def __init__(self, job: Job) -> None:
        self._job = job
        self._base_dir = job.source.parent if job.source is not None else None
        self._job_checks = self._suite(job.check or (), params=job.params, where="")
        self._by_target: dict[str, Plan] = {}
        for name, config in job.plans.items():
            params = merge_params(job.params, override=config.params)
            check = (
                self._job_checks
                if config.check is None and params == job.params
                else self._suite(
                    job.check if config.check is None else config.check,
                    params=params,
                    where=f"plans.{name}.",
                )
            )
            self._by_target[name] = Plan(
                name=name,
                tiers=config.tiers,
                check=check,
                params=params.to_wire(),
            )

    def _suite(
        self, configs: Sequence[CheckConfig] | None, *, params: Params, where: str
    ) -> CheckSuite | None:
        try:
            return build_checks(configs or (), params=params, base_dir=self._base_dir)
        except ValueError as exc:
            raise ConfigError(f"{self._job.source}: {where}{exc}") from None

    def plan(self, name: str, *, tiers: tuple[str, ...]) -> Plan:
        """A plan of the job's own tiers, check and params (`fixed`, `cascade`)."""
        params = self._job.params
        return Plan(
            name=name,
            tiers=tiers,
            check=self._job_checks,
            params=params.to_wire(),
        )

    def target(self, target: str) -> Plan:
        """The plan a rule's, a label's or the default target names."""
        plan = self._by_target.get(target)
        if plan is None:
            plan = self.plan(f"fixed:{target}", tiers=(target,))
            self._by_target[target] = plan
        return plan
