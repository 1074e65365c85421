"""The Executor: runs one row's plan tier by tier, escalating when the check fails.

A row's calls, in order: the classifier's (when the plan is pending a label), each tier's
with any judge calls of its checks, and for a sampled row the shadow answer of the cheapest
tier. All go through the Caller, which records each with its purpose and shadow mark; shadow
calls are kept out of the row's cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchroute.caller import Caller, TierOutcome
from batchroute.checks import GraderError, Subject, Verdict
from batchroute.classifier import Classifier, PendingPlan
from batchroute.errors import FailureKind
from batchroute.job import Job
from batchroute.prompts import BadRowInput, Message, PromptTemplate, build_messages
from batchroute.records import CLASSIFIER, FAILED, JUDGE, OK, REPAIR, SKIPPED, RowResult
from batchroute.repair import repair_messages, repairable
from batchroute.router import Plan, Routed
from batchroute.shadow import ShadowPolicy


class Executor:
    """Turns (row, plan) into a RowResult. Never raises for a row's own failure."""

    def __init__(self, caller: Caller, *, job: Job) -> None:
        self._caller = caller
        self._prompt = job.input.template()
        self._system = job.input.system_template()
        self._messages_column = job.input.messages
        self._shadow = ShadowPolicy.from_job(job)
        self._repair_attempts = job.run.repair_attempts
        self._job = job

    async def run_row(self, row_id: object, row: Mapping[str, Any], plan: Routed) -> RowResult:
        result = RowResult(row_id=row_id, plan=plan.name, rule=plan.rule)
        result.route_key = plan.rule or plan.name
        try:
            messages = build_messages(
                row,
                prompt=self._prompt,
                system=self._system,
                messages_column=self._messages_column,
            )
        except BadRowInput as exc:
            result.status, result.error = FAILED, f"bad input: {exc}"
            return result
        if isinstance(plan, PendingPlan):
            plan = await self._classify(row_id, row=row, classifier=plan.classifier, result=result)
        verdicts = await self._run_tiers(
            row_id, row=row, messages=messages, plan=plan, result=result
        )
        shadow = self._shadow
        if shadow is not None and plan.check is not None and result.status == OK:
            result.past_cheapest = shadow.past(result.model)
            if result.past_cheapest and shadow.sampled(row_id):
                await self._run_shadow(
                    shadow.model,
                    row=row,
                    messages=messages,
                    plan=plan,
                    result=result,
                    verdicts=verdicts,
                )
        return result

    async def _classify(
        self,
        row_id: object,
        *,
        row: Mapping[str, Any],
        classifier: Classifier,
        result: RowResult,
    ) -> Plan:
        """Ask the classifier model for the row's label; the label's plan, else the default."""
        reply = None
        try:
            messages = classifier.messages(row)
        except BadRowInput:
            pass  # the classifier's own columns are null: no label, the default plan answers
        else:
            outcome = await self._caller.call_tier(
                row_id,
                tier=0,
                model=classifier.model,
                messages=messages,
                params=classifier.params,
                purpose=CLASSIFIER,
            )
            result.calls.extend(outcome.records)
            if outcome.failure is None:
                reply = outcome.answer
        picked = classifier.pick(reply)
        result.label, result.label_unknown = picked.label, not picked.known
        result.route_key, result.plan = picked.route_key, picked.plan.name
        return picked.plan

    async def _run_tiers(
        self,
        row_id: object,
        *,
        row: Mapping[str, Any],
        messages: list[Message],
        plan: Plan,
        result: RowResult,
    ) -> dict[str, Verdict]:
        """Each tier in turn until an answer passes; returns the verdict per answering model."""
        verdicts: dict[str, Verdict] = {}
        for tier, model in enumerate(plan.tiers):
            result.tiers_tried.append(model)
            try:
                tier_messages = self._model_messages(model, row=row, default=messages)
            except BadRowInput as exc:
                result.status, result.error = FAILED, f"bad input for {model}: {exc}"
                return verdicts
            outcome = await self._caller.call_tier(
                row_id,
                tier=tier,
                model=model,
                messages=tier_messages,
                params=plan.params,
                messages_for=lambda name: self._fallback_messages(name, row=row, default=messages),
            )
            result.calls.extend(outcome.records)
            if outcome.failure is not None:
                # A call that was never made (the run is stopping, or offline without a stored
                # answer) leaves the row skipped, so `--retry-failed` picks it up; an earlier
                # tier's answer, if any, is kept.
                skipped = outcome.failure.kind is FailureKind.SKIP
                result.status = SKIPPED if skipped else FAILED
                result.error = f"{outcome.failure.error_kind}: {outcome.failure.message}"
                return verdicts
            result.answer, result.model = outcome.answer, outcome.model
            result.fallback_used = result.fallback_used or outcome.fallback_used
            if plan.check is None:
                return verdicts
            grader = _RowGrader(self._caller, row_id=row_id, tier=tier, result=result)
            verdict = await plan.check.verify(_subject(outcome, row=row), grader=grader)
            if repairable(verdict) and self._repair_attempts:
                # The conversation goes on from what the answering model was asked: its own
                # templates when it has them (a fallback's too; they rendered, or it was
                # skipped).
                assert outcome.model is not None
                answered = self._model_messages(outcome.model, row=row, default=messages)
                outcome, verdict = await self._repair(
                    row_id,
                    row=row,
                    messages=answered,
                    plan=plan,
                    tier=tier,
                    outcome=outcome,
                    verdict=verdict,
                    result=result,
                )
            assert outcome.model is not None
            verdicts[outcome.model] = verdict
            result.check_passed = verdict.passed
            if verdict.passed:
                return verdicts
            # Every failed check's reason is kept (the last is why the final answer is
            # unvouched for), also on a one-tier plan that cannot escalate.
            reason = f"{verdict.check or plan.check.name} failed on {model}: {verdict.reason}"
            result.check_reasons.append(reason)
            if tier + 1 < len(plan.tiers):
                # Escalation: the reason recorded is the first failed check's, which is
                # what sent the row past its first tier.
                result.escalated = True
                result.escalation_reason = result.escalation_reason or reason
        # Every tier's answer failed the check: keep the last answer (it is often still the
        # best there is) and let `check_passed = false` say that nothing vouched for it.
        return verdicts

    async def _repair(
        self,
        row_id: object,
        *,
        row: Mapping[str, Any],
        messages: list[Message],
        plan: Plan,
        tier: int,
        outcome: TierOutcome,
        verdict: Verdict,
        result: RowResult,
    ) -> tuple[TierOutcome, Verdict]:
        """Up to `run.repair_attempts` more turns of the model that answered, each told why
        its last answer failed; the last answer and its verdict. A repair call that fails
        leaves the answer before it: the row escalates as it would have."""
        assert plan.check is not None
        conversation = messages
        for _ in range(self._repair_attempts):
            if not repairable(verdict):
                break  # a repaired answer that now fails a content check: no more turns
            assert outcome.answer is not None and outcome.model is not None
            # Each turn goes on from the last: a second repair shows the model both answers
            # that failed and why (the same request again would get the same answer).
            conversation = repair_messages(conversation, answer=outcome.answer, verdict=verdict)
            turn = await self._caller.call_tier(
                row_id,
                tier=tier,
                model=outcome.model,
                messages=conversation,
                params=plan.params,
                purpose=REPAIR,
            )
            result.calls.extend(turn.records)
            result.repairs += 1
            if turn.failure is not None:
                break
            result.answer, result.model = turn.answer, turn.model
            result.fallback_used = result.fallback_used or turn.fallback_used
            grader = _RowGrader(self._caller, row_id=row_id, tier=tier, result=result)
            outcome = turn
            verdict = await plan.check.verify(_subject(turn, row=row), grader=grader)
            if verdict.passed:
                result.repaired = True
                break
        return outcome, verdict

    def _model_messages(
        self, model: str, *, row: Mapping[str, Any], default: list[Message]
    ) -> list[Message]:
        """The row's messages for `model`: its own templates (`models.X.prompt`/`system`)
        over [input]'s, else the row's messages as built once."""
        config = self._job.model(model)
        if config.prompt is None and config.system is None:
            return default
        return build_messages(
            row,
            prompt=PromptTemplate.parse(config.prompt) if config.prompt else self._prompt,
            system=PromptTemplate.parse(config.system) if config.system else self._system,
            messages_column=None if config.prompt else self._messages_column,
        )

    def _fallback_messages(
        self, model: str, *, row: Mapping[str, Any], default: list[Message]
    ) -> list[Message] | None:
        """A fallback model's messages; None when its own templates cannot render the row."""
        try:
            return self._model_messages(model, row=row, default=default)
        except BadRowInput:
            return None

    async def _run_shadow(
        self,
        model: str,
        *,
        row: Mapping[str, Any],
        messages: list[Message],
        plan: Plan,
        result: RowResult,
        verdicts: Mapping[str, Verdict],
    ) -> None:
        """Would the cheapest model's answer have passed the plan's checks for this row?"""
        assert plan.check is not None
        row_id = result.row_id
        if model in verdicts:
            # It was a tier of this row and failed the check: the answer is known, for free.
            result.shadow_passed = verdicts[model].passed
            return
        outcome = await self._caller.call_tier(
            row_id, tier=0, model=model, messages=messages, params=plan.params, shadow=True
        )
        result.calls.extend(outcome.records)
        if outcome.failure is not None or outcome.model != model:
            return  # no verdict when the cheapest model itself did not answer
        grader = _RowGrader(self._caller, row_id=row_id, tier=0, result=result, shadow=True)
        verdict = await plan.check.verify(_subject(outcome, row=row), grader=grader)
        result.shadow_passed = verdict.passed


class _RowGrader:
    """A check's model calls for one row: through the Caller, recorded on the row as `judge`."""

    def __init__(
        self,
        caller: Caller,
        *,
        row_id: object,
        tier: int,
        result: RowResult,
        shadow: bool = False,
    ) -> None:
        self._caller = caller
        self._row_id = row_id
        self._tier = tier
        self._result = result
        self._shadow = shadow

    async def ask(self, *, model: str, messages: list[Message], params: dict[str, Any]) -> str:
        outcome = await self._caller.call_tier(
            self._row_id,
            tier=self._tier,
            model=model,
            messages=messages,
            params=params,
            purpose=JUDGE,
            shadow=self._shadow,
        )
        self._result.calls.extend(outcome.records)
        if outcome.failure is not None:
            raise GraderError(f"{outcome.failure.error_kind}: {outcome.failure.message}")
        assert outcome.answer is not None
        return outcome.answer


def _subject(outcome: TierOutcome, *, row: Mapping[str, Any]) -> Subject:
    assert outcome.answer is not None and outcome.model is not None
    # The last record is the attempt that answered; its logprobs are the answer's.
    return Subject(
        answer=outcome.answer,
        row=row,
        model=outcome.model,
        mean_logprob=outcome.records[-1].mean_logprob if outcome.records else None,
    )
