"""The Executor: runs one row's plan tier by tier, escalating when the check fails."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchroute.caller import Caller
from batchroute.errors import FailureKind
from batchroute.job import Job
from batchroute.prompts import BadRowInput, build_messages
from batchroute.records import FAILED, SKIPPED, RowResult
from batchroute.router import Plan


class Executor:
    """Turns (row, plan) into a RowResult. Never raises for a row's own failure."""

    def __init__(self, caller: Caller, *, job: Job) -> None:
        self._caller = caller
        self._prompt = job.input.template()
        self._system = job.input.system_template()
        self._messages_column = job.input.messages

    async def run_row(self, row_id: object, row: Mapping[str, Any], plan: Plan) -> RowResult:
        result = RowResult(row_id=row_id, plan=plan.name)
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

        for tier, model in enumerate(plan.tiers):
            result.tiers_tried.append(model)
            outcome = await self._caller.call_tier(
                row_id, tier=tier, model=model, messages=messages, params=plan.params
            )
            result.calls.extend(outcome.records)
            if outcome.failure is not None:
                # A call that was never made (the run is stopping, or offline without a stored
                # answer) leaves the row skipped, so `--retry-failed` picks it up; an earlier
                # tier's answer, if any, is kept.
                skipped = outcome.failure.kind is FailureKind.SKIP
                result.status = SKIPPED if skipped else FAILED
                result.error = f"{outcome.failure.error_kind}: {outcome.failure.message}"
                return result
            result.answer, result.model = outcome.answer, outcome.model
            result.fallback_used = result.fallback_used or outcome.fallback_used
            if plan.check is None:
                return result
            assert outcome.answer is not None
            verdict = plan.check(outcome.answer)
            result.check_passed = verdict.passed
            if verdict.passed:
                return result
            if tier + 1 < len(plan.tiers):
                # Escalation: the reason recorded is the first failed check's, which is
                # what sent the row past its first tier.
                result.escalated = True
                result.escalation_reason = result.escalation_reason or (
                    f"{plan.check.name} failed on {model}: {verdict.reason}"
                )
        # Every tier's answer failed the check: keep the last answer (it is often still the
        # best there is) and let `check_passed = false` say that nothing vouched for it.
        return result
