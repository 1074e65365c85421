"""Routers pick a Plan for every row of a batch; strategies compose through plans.

    fixed       one one-tier plan for every row
    cascade     one multi-tier plan for every row
    rules       the first SQL predicate true for the row names its target; else `default`
    classifier  a cheap model's label for the row names its target; else `default`
    learned     a router file's model predicts whether the cheaper tier will do (learned.py)

A target is a `[plans.NAME]` table or a model, so a rule or a label can pick a cascade.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import polars as pl

from batchroute.checks import normalize_label
from batchroute.classifier import DEFAULT, Classifier, PendingPlan
from batchroute.dataset import Dataset
from batchroute.errors import ConfigError, DatasetError
from batchroute.job import Job
from batchroute.learned import RouterModel
from batchroute.plans import Plan, PlanBook
from batchroute.rules import Predicate, PredicateError, first_match
from batchroute.shadow import ShadowPolicy

__all__ = [
    "ClassifierRouter",
    "LearnedRouter",
    "PendingPlan",
    "Plan",
    "Routed",
    "Router",
    "RulesRouter",
    "SinglePlanRouter",
    "build_router",
]


# What a router hands each row: a plan, or the classifier's plan still pending its label.
Routed = Plan | PendingPlan


class Router(Protocol):
    strategy: str

    def plans(self) -> list[Plan]:
        """Every plan this router can pick, for validation and cost estimates."""
        ...

    def route(self, frame: pl.DataFrame) -> Sequence[Routed]:
        """One plan per row of `frame`, in order; whole-batch so rules can run in polars."""
        ...

    def validate(self, dataset: Dataset) -> None:
        """Check what the router reads against the dataset's columns, before any call.

        Raises DatasetError naming the job file and the rule, template or check at fault.
        """
        ...


def _require_check_columns(plans: Sequence[Plan], *, dataset: Dataset, source: object) -> None:
    for plan in plans:
        if plan.check is not None and plan.check.columns:
            what = f"{source}: a judge's prompt in plan {plan.name!r}"
            dataset.require_columns(list(plan.check.columns), what=what)


class SinglePlanRouter:
    """`fixed` (a one-tier plan) and `cascade` (a multi-tier plan): the same plan for every row."""

    def __init__(self, strategy: str, plan: Plan, *, source: Path | None = None) -> None:
        self.strategy = strategy
        self._plan = plan
        self._source = source

    def plans(self) -> list[Plan]:
        return [self._plan]

    def route(self, frame: pl.DataFrame) -> list[Plan]:
        return [self._plan] * frame.height

    def validate(self, dataset: Dataset) -> None:
        _require_check_columns(self.plans(), dataset=dataset, source=self._source)


class RulesRouter:
    """Ordered rules, each a predicate and a plan; the first true for a row wins."""

    strategy = "rules"

    def __init__(
        self,
        rules: Sequence[tuple[str, Predicate, Plan]],
        *,
        default: Plan,
        source: Path | None = None,
    ) -> None:
        self._names = [name for name, _, _ in rules]
        self._predicates = [predicate for _, predicate, _ in rules]
        # Each rule's plan carries the rule's name, so results and summary can say which won.
        self._plans = [replace(plan, rule=name) for name, _, plan in rules]
        self._plans.append(replace(default, rule=DEFAULT))
        self._source = source

    def plans(self) -> list[Plan]:
        return list(self._plans)

    def route(self, frame: pl.DataFrame) -> list[Plan]:
        try:
            picks = first_match(frame, predicates=self._predicates)
        except PredicateError as exc:
            # Types that fit the schema but not a batch (CSV inference): a dataset error.
            raise DatasetError(f"{self._source}: route.rules: {exc}") from None
        return [self._plans[pick] for pick in picks]

    def validate(self, dataset: Dataset) -> None:
        for number, (name, predicate) in enumerate(zip(self._names, self._predicates, strict=True)):
            try:
                predicate.check(dataset.schema)
            except PredicateError as exc:
                raise DatasetError(
                    f"{self._source}: route.rules: rule {number + 1} ({name!r}):"
                    f' when "{predicate.sql}" {exc} in {dataset.path}'
                ) from None
        _require_check_columns(self._plans, dataset=dataset, source=self._source)


class ClassifierRouter:
    """Every row gets the classifier's pending plan; the executor asks the model and resolves it."""

    strategy = "classifier"

    def __init__(self, classifier: Classifier, *, source: Path | None = None) -> None:
        self._classifier = classifier
        self._pending = PendingPlan(classifier)
        self._source = source

    def plans(self) -> list[Plan]:
        return self._classifier.plans()

    def route(self, frame: pl.DataFrame) -> list[PendingPlan]:
        return [self._pending] * frame.height

    def validate(self, dataset: Dataset) -> None:
        what = f"{self._source}: route.classifier.prompt"
        dataset.require_columns(list(self._classifier.columns), what=what)
        _require_check_columns(self.plans(), dataset=dataset, source=self._source)


class LearnedRouter:
    """A router file's model picks, per row and before any call, the cheaper tier or the top."""

    strategy = "learned"

    def __init__(
        self, model: RouterModel, *, cheap: Plan, top: Plan, source: Path | None = None
    ) -> None:
        self._model = model
        self._cheap = replace(cheap, rule="learned: cheaper")
        self._top = replace(top, rule="learned: top")
        self._source = source

    def plans(self) -> list[Plan]:
        return [self._cheap, self._top]

    def route(self, frame: pl.DataFrame) -> list[Plan]:
        return [
            self._cheap if self._model.picks_cheap(row) else self._top
            for row in frame.select(self._model.columns).iter_rows(named=True)
        ]

    def validate(self, dataset: Dataset) -> None:
        what = f"{self._source}: route.router (the columns its model reads)"
        dataset.require_columns(list(self._model.columns), what=what)
        _require_check_columns(self.plans(), dataset=dataset, source=self._source)


def _learned(job: Job, book: PlanBook) -> LearnedRouter:
    route, source = job.route, job.source
    assert route.router is not None
    try:
        model = RouterModel.read(route.router)
    except ValueError as exc:
        raise ConfigError(f"{source}: route.router: {exc}") from None
    if (model.cheap, model.top) != tuple(route.tiers):
        raise ConfigError(
            f"{source}: route.tiers: the router was trained for [{model.cheap!r}, {model.top!r}]"
        )
    cheap, top = (book.target(model) for model in route.tiers)
    return LearnedRouter(model, cheap=cheap, top=top, source=source)


def build_router(job: Job) -> Router:
    """The router a job asks for; a bad check, rule or label is a ConfigError naming the file."""
    book = PlanBook(job)
    route, source = job.route, job.source
    router: Router
    if route.strategy == "fixed":
        assert route.model is not None
        plan = book.plan(f"fixed:{route.model}", tiers=(route.model,))
        router = SinglePlanRouter("fixed", plan, source=source)
    elif route.strategy == "cascade":
        plan = book.plan("cascade:" + ">".join(route.tiers), tiers=route.tiers)
        router = SinglePlanRouter("cascade", plan, source=source)
    elif route.strategy == "rules":
        assert route.default is not None
        rules = []
        for number, rule in enumerate(route.rules):
            name = route.rule_name(number)
            if name == DEFAULT:
                raise ConfigError(f"{source}: route.rules: {DEFAULT!r} names the default; rename")
            try:
                predicate = Predicate.parse(rule.when)
            except PredicateError as exc:
                raise ConfigError(
                    f'{source}: route.rules: rule {number + 1} ({name!r}): when "{rule.when}":'
                    f" {exc}"
                ) from None
            rules.append((name, predicate, book.target(rule.target)))
        router = RulesRouter(rules, default=book.target(route.default), source=source)
    elif route.strategy == "learned":
        router = _learned(job, book)
    else:
        assert route.classifier is not None and route.default is not None
        labels: dict[str, Plan] = {}
        for raw, target in route.classifier.labels.items():
            label = normalize_label(raw)
            problem = _label_problem(label, taken=labels)
            if problem is not None:
                raise ConfigError(
                    f"{source}: route.classifier.labels: {raw!r} {problem} once normalised"
                    " (trimmed, lower case, no punctuation or quotes)"
                )
            labels[label] = book.target(target)
        classifier = Classifier(route.classifier, labels=labels, default=book.target(route.default))
        router = ClassifierRouter(classifier, source=source)
    if route.shadow_rate > 0:
        _check_shadow(job, router)
    return router


def _label_problem(label: str, *, taken: Mapping[str, Plan]) -> str | None:
    if not label:
        return "is empty"
    if label in taken:
        return "repeats another label"
    if label == DEFAULT:
        return f"is {DEFAULT!r}, the summary's name for unlabelled rows,"
    return None


def _check_shadow(job: Job, router: Router) -> None:
    try:
        ShadowPolicy.from_job(job)
    except ValueError as exc:
        raise ConfigError(f"{job.source}: route.shadow_model: {exc}") from None
    if all(plan.check is None for plan in router.plans()):
        raise ConfigError(
            f"{job.source}: route.shadow_rate: no plan has a check to judge the shadow answers"
        )
