"""What the stored answers say offline: the job's checks re-run, and the confidence signals.

Checks are pure functions of the answer and the row, so they are re-run on the sample's
answers without a call; a `judge` check would need one, so it is left out (and said so).
Signals are numbers a threshold can be swept over: a stated confidence at a JSON path of the
answer, and the mean token logprob when the calls carried logprobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import polars as pl

from batchroute.check_config import CheckConfig, parse_json_path
from batchroute.checks import GraderError, Subject, as_number, value_at
from batchroute.errors import ConfigError
from batchroute.job import Job
from batchroute.plans import build_checks
from batchroute.prompts import Message
from batchroute.tune.sample import Answers

__all__ = ["Signal", "check_verdicts", "judge_skipped", "signals_of", "stated"]

LOGPROB = "logprob"


class _NoGrader:
    """Offline there is no model to ask; the judge checks that would are left out before."""

    async def ask(self, *, model: str, messages: list[Message], params: dict[str, Any]) -> str:
        raise GraderError("no model calls while tuning offline")


def _configs(job: Job) -> list[CheckConfig]:
    return [c for c in job.check or () if c.type != "judge"]


def judge_skipped(job: Job) -> bool:
    return any(c.type == "judge" for c in job.check or ())


def check_verdicts(job: Job, answers: Answers, *, rows: pl.DataFrame) -> list[bool] | None:
    """Whether each answer passes the job's checks (judges left out); None without checks."""
    base_dir = job.source.parent if job.source is not None else None
    try:
        suite = build_checks(_configs(job), params=job.params, base_dir=base_dir)
    except ValueError as exc:
        raise ConfigError(f"{job.source}: {exc}") from None
    if suite is None:
        return None
    records = rows.to_dicts()

    async def verify_all() -> list[bool]:
        verdicts = []
        for answer, ok, row, logprob in zip(
            answers.answer, answers.ok, records, answers.mean_logprob, strict=True
        ):
            if not ok or answer is None:
                verdicts.append(False)
                continue
            subject = Subject(answer=answer, row=row, model=answers.model, mean_logprob=logprob)
            verdict = await suite.verify(subject, grader=_NoGrader())
            verdicts.append(verdict.passed)
        return verdicts

    return anyio.run(verify_all)


@dataclass(frozen=True, slots=True)
class Signal:
    """A number read from each answer, escalating below a threshold: a JSON path or logprob."""

    name: str  # the JSON path, or "logprob"

    def read(self, answers: Answers) -> list[float | None]:
        if self.name == LOGPROB:
            return list(answers.mean_logprob)
        return stated(answers.answer, path=self.name)


def stated(answers: Sequence[str | None], *, path: str) -> list[float | None]:
    """The number at `path` of each answer, None where there is none."""
    steps = parse_json_path(path)
    values: list[float | None] = []
    for answer in answers:
        try:
            value = as_number(value_at(answer, steps=steps)) if answer is not None else None
        except ValueError:
            value = None
        values.append(value)
    return values


def signals_of(job: Job, answers: Sequence[Answers]) -> list[Signal]:
    """The signals worth sweeping: confidence paths the job's checks name (else `confidence`
    when most answers state one there), and logprobs when most answers carry them."""
    paths = [c.path for c in _configs(job) if c.type == "confidence" and c.path and not c.logprobs]
    if not paths:
        paths = ["confidence"]
    found = []
    for path in dict.fromkeys(paths):
        if any(_mostly([v is not None for v in stated(a.answer, path=path)]) for a in answers):
            found.append(Signal(path))
    if any(_mostly([v is not None for v in a.mean_logprob]) for a in answers):
        found.append(Signal(LOGPROB))
    return found


def _mostly(flags: Sequence[bool]) -> bool:
    return bool(flags) and sum(flags) * 2 >= len(flags)
