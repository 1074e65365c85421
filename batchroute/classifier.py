"""The classifier: a cheap model labels each row, and the normalised label picks its plan."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchroute.checks import normalize_label
from batchroute.job import ClassifierConfig
from batchroute.plans import Plan
from batchroute.prompts import Message, build_messages

DEFAULT = "default"  # the route key of rows whose label picked no target


@dataclass(frozen=True, slots=True)
class PendingPlan:
    """What the classifier router hands a row before its label is known: the executor asks
    the classifier's model (one call) and runs the plan the label picks."""

    classifier: Classifier
    name: str = "classifier"
    rule: None = None  # no rule picks a classifier's plan


@dataclass(frozen=True, slots=True)
class Classification:
    """What the label decided: `known` is false when the default caught the row."""

    label: str | None  # normalised; None when there was no answer to read
    plan: Plan
    known: bool

    @property
    def route_key(self) -> str:
        return self.label if self.known and self.label is not None else DEFAULT


class Classifier:
    """Builds the classifier's messages for a row and reads its reply into a plan.

    The call itself is the executor's, made through the Caller like any other: limited,
    retried, recorded in the calls table and charged to the row.
    """

    def __init__(
        self, config: ClassifierConfig, *, labels: Mapping[str, Plan], default: Plan
    ) -> None:
        self.model = config.model
        self._prompt = config.template()
        self._system = config.system_template()
        self._labels = dict(labels)
        self._default = default
        self.params: dict[str, Any] = {
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
        }

    @property
    def columns(self) -> tuple[str, ...]:
        """The dataset columns the classifier's templates substitute."""
        templates = (self._prompt, self._system) if self._system else (self._prompt,)
        return tuple(dict.fromkeys(c for t in templates for c in t.columns))

    def plans(self) -> list[Plan]:
        """Every plan a label can pick, the default's last, without repeats."""
        unique = {id(plan): plan for plan in (*self._labels.values(), self._default)}
        return list(unique.values())

    def messages(self, row: Mapping[str, Any]) -> list[Message]:
        """The classifier's messages for `row`; raises BadRowInput for a null column."""
        return build_messages(row, prompt=self._prompt, system=self._system, messages_column=None)

    def pick(self, reply: str | None) -> Classification:
        """The plan for the classifier's `reply`; None (no reply) and unknown labels go default."""
        if reply is None:
            return Classification(label=None, plan=self._default, known=False)
        label = normalize_label(reply)
        plan = self._labels.get(label)
        if plan is None:
            return Classification(label=label, plan=self._default, known=False)
        return Classification(label=label, plan=plan, known=True)
