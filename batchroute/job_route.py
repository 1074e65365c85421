"""The job file's route: the strategy, its rules or classifier, and the named plans."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from batchroute.check_config import Checks, as_check_list
from batchroute.job_sections import Params, Section
from batchroute.prompts import PromptTemplate


class RuleConfig(Section):
    """One `[[route.rules]]` entry: a SQL predicate over the row's columns and its target."""

    when: str
    target: str  # a `[plans]` name or a model name
    name: str | None = None  # default: "rule N"


class ClassifierConfig(Section):
    """`[route.classifier]`: a cheap model's normalised label picks the target."""

    model: str
    prompt: str
    system: str | None = None
    labels: Annotated[dict[str, str], Field(min_length=1)]  # label -> target
    max_tokens: Annotated[int, Field(gt=0)] = 16
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0

    @model_validator(mode="after")
    def _templates_parse(self) -> ClassifierConfig:
        PromptTemplate.parse(self.prompt)
        if self.system is not None:
            PromptTemplate.parse(self.system)
        return self

    def template(self) -> PromptTemplate:
        return PromptTemplate.parse(self.prompt)

    def system_template(self) -> PromptTemplate | None:
        return PromptTemplate.parse(self.system) if self.system is not None else None


class PlanConfig(Section):
    """`[plans.NAME]`: tiers with their own checks and parameters, for rules and labels to name."""

    tiers: Annotated[tuple[str, ...], Field(min_length=1)]
    check: Checks | None = None  # none: the job's [check]; an empty list: no check
    params: Params | None = None  # merged over the job's [params], key by key

    _checks = field_validator("check", mode="before")(as_check_list)


class RouteConfig(Section):
    strategy: Literal["fixed", "cascade", "rules", "classifier", "learned"]
    model: str | None = None
    tiers: tuple[str, ...] = ()
    rules: tuple[RuleConfig, ...] = ()
    classifier: ClassifierConfig | None = None
    default: str | None = None  # rules and classifier: the target when nothing else applies
    shadow_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    shadow_model: str | None = None  # default: the cheapest tier by usd_per_mtok
    seed: int = 0  # of shadow sampling
    router: Path | None = None  # learned: the router file `batchroute tune` wrote

    @model_validator(mode="after")
    def _shape_fits_strategy(self) -> RouteConfig:
        if self.strategy == "fixed" and (self.model is None or self.tiers):
            raise ValueError("strategy 'fixed' takes 'model' (and no 'tiers')")
        if self.strategy == "cascade" and (len(self.tiers) < 2 or self.model is not None):
            raise ValueError("strategy 'cascade' takes 'tiers', two or more models")
        if (self.strategy == "learned") != (self.router is not None):
            raise ValueError("'router' goes with strategy 'learned', which needs it")
        if self.strategy == "learned" and (len(self.tiers) != 2 or self.model is not None):
            raise ValueError("strategy 'learned' takes 'tiers': the cheaper model, then the top")
        return self

    @model_validator(mode="after")
    def _strategy_keys_fit(self) -> RouteConfig:
        routed = self.strategy in ("rules", "classifier")
        if routed and (self.model is not None or self.tiers):
            raise ValueError(f"strategy {self.strategy!r} takes targets, not 'model' or 'tiers'")
        if routed and self.default is None:
            raise ValueError(f"strategy {self.strategy!r} needs 'default', the target of the rest")
        if (self.strategy == "rules") != bool(self.rules):
            raise ValueError("'rules' go with strategy 'rules', which needs one or more")
        if (self.strategy == "classifier") != (self.classifier is not None):
            raise ValueError("[route.classifier] goes with strategy 'classifier', which needs it")
        if not routed and self.default is not None:
            raise ValueError(f"'default' does not apply to strategy {self.strategy!r}")
        names = [rule.name for rule in self.rules if rule.name is not None]
        if len(names) != len(set(names)):
            raise ValueError("two rules have the same name")
        return self

    def rule_name(self, index: int) -> str:
        """The name of rule `index` (0-based): its own, else "rule N" counting from 1."""
        return self.rules[index].name or f"rule {index + 1}"
