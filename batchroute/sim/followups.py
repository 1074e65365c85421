"""Follow-ups: a user turn after the model's own answer re-asks the task that answer was about.

A repair turn (batchroute's `run.repair_attempts`) is the conversation
[system?, user(task), assistant(the model's answer), user("your answer did not match ...")].
A real model told its JSON was malformed answers the same task again; the simulator, which
answers from a hash of a prompt, would otherwise answer the instruction's text, a new task.

A conversation ends in a *follow-up* when its last user message comes right after an
assistant turn whose content is this model's own answer (as this simulator gives it, with this
seed, response format and `max_tokens`) to the conversation before that turn, either as drawn
or with its format fixed, and that user message speaks to the answer: it opens with "Your
answer", "Your previous answer", "Your last answer", "Your reply" or "Your response" (any
case), as batchroute's three repair requests do (batchroute/repair.py). The structure alone
is not enough: in a few-shot conversation in text mode an example's label is the model's own
answer one time in eight, or more often when the examples are right, and the task after it
is a new task. A follow-up's answer keeps the content of the earlier answer (label,
correctness, confidence) and fixes a broken format with probability `format_fix` (the model
table's key), decided by a hash of (seed, model, task, that answer, the follow-up), so the
same request always gets the same answer and a model that broke the format once is not sure
to fix it. A text answer has
no format to fix: its follow-up repeats it. Any other conversation, including a multi-turn
input whose assistant turns the simulator did not write, is answered from its last user
message, exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from batchroute.sim import answers
from batchroute.sim.request import ChatRequest

__all__ = ["FEEDBACK", "draw", "replayed_task"]

# How a user message that speaks to the answer before it opens (compared in lower case).
FEEDBACK = (
    "your answer",
    "your previous answer",
    "your last answer",
    "your reply",
    "your response",
)


def draw(req: ChatRequest, *, skill: float, format_fix: float, seed: int) -> answers.Draw:
    """What `req.model` answers to `req`: about its last user message, or, for a follow-up to
    its own answer, about the task that answer was about."""
    roles, texts = req.roles, req.texts
    start = len(roles)
    # The trailing (assistant, user) pairs: each may be a follow-up to the answer before it.
    while start >= 2 and roles[start - 1] == "user" and roles[start - 2] == "assistant":
        start -= 2
    if start == len(roles):  # single-turn and most multi-turn requests: the fast path
        return answers.draw(req.prompt, model=req.model, skill=skill, seed=seed)
    task = next((texts[i] for i in range(start - 1, -1, -1) if roles[i] == "user"), None)
    current = None if task is None else answers.draw(task, model=req.model, skill=skill, seed=seed)
    # Forward through the pairs, so a client that keeps every turn (task, answer, repair,
    # answer, repair) is read like one that sends only the last answer and repair.
    for i in range(start, len(roles), 2):
        said, asked = texts[i], texts[i + 1]
        feedback = asked.lstrip().lower().startswith(FEEDBACK)
        own = None if current is None or not feedback else _own(current, said=said, req=req)
        if own is None:  # not this model's answer: the follow-up is a new task, as before
            task = asked
            current = answers.draw(asked, model=req.model, skill=skill, seed=seed)
            continue
        fixed = answers.unit_draw("followup", seed, req.model, task, said, asked) < format_fix
        current = replace(own, violates=False) if fixed else own
    assert current is not None  # the last pair always sets it
    return current


def _own(d: answers.Draw, *, said: str, req: ChatRequest) -> answers.Draw | None:
    """The draw whose answer is `said` (as drawn, else with its format fixed), if either."""
    candidates = [d, replace(d, violates=False)] if d.violates else [d]
    for candidate in candidates:
        text = answers.render(candidate, mode=req.mode, schema=req.schema)
        content, _, _ = answers.complete(text, max_tokens=req.max_tokens)
        if content.strip() == said.strip():
            return candidate
    return None


def replayed_task(req: ChatRequest, *, recorded: Callable[[str], str | None]) -> str:
    """Replay mode's prompt to look up: the last user message, or, for a follow-up to the
    recorded answer (`recorded(prompt)`, None when there is none) of the task before it, that
    task. A recording holds one answer per prompt, so a repair turn gets the same answer again:
    its content kept, its format as the model first wrote it."""
    roles, texts = req.roles, req.texts
    start = len(roles)
    while start >= 2 and roles[start - 1] == "user" and roles[start - 2] == "assistant":
        start -= 2
    if start == len(roles):
        return req.prompt
    task = next((texts[i] for i in range(start - 1, -1, -1) if roles[i] == "user"), None)
    for i in range(start, len(roles), 2):
        said, asked = texts[i], texts[i + 1]
        feedback = asked.lstrip().lower().startswith(FEEDBACK)
        answer = recorded(task) if task is not None and feedback else None
        if answer is None or answer.strip() != said.strip():
            task = asked  # not a follow-up to the recorded answer: a new task, as before
    return task if task is not None else req.prompt
