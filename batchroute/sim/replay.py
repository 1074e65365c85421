"""Replay mode: answer with real recorded model outputs and charge their recorded cost.

A replay table is a "wide" Parquet or CSV file: one row per prompt, a `prompt` column, and
per model `<model>__response`, `__correct`, `__score`, `__input_tokens`, `__output_tokens`
and `__cost_usd` columns (data/routing/ holds RouteLLM's GSM8K and MT-Bench in this layout).
A model is served when the table has its `__cost_usd` column plus a response or a label.

For a request to a replayed model the simulator finds the row whose prompt is the request's
last user message (exactly after trimming, else the longest recorded prompt it contains) and
answers with that model's recorded response, its recorded tokens as usage and its recorded
cost as the charge header. Where no text was recorded it answers a JSON object carrying the
recorded label: `{"correct": true, "score": null, "note": "..."}`. The model `replay-judge`
stands in for a judge: it finds the recorded response quoted in its prompt and replies with
that response's recorded score (or 10/1 for a recorded correct/incorrect label).

`recorded_correct` and `recorded_score` read the same labels for `batchroute compare`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

__all__ = [
    "FIELDS",
    "JUDGE_MODEL",
    "Recorded",
    "ReplayError",
    "ReplayMiss",
    "ReplayReply",
    "ReplayTable",
    "check_layout",
    "recorded_correct",
    "recorded_score",
]

SEP = "__"
FIELDS = ("response", "correct", "score", "input_tokens", "output_tokens", "cost_usd")
JUDGE_MODEL = "replay-judge"
PROMPT = "prompt"
NO_TEXT = "replayed: no response text was recorded for this model and prompt"


class ReplayError(ValueError):
    """A replay table that cannot be used; one line naming the file and what is wrong."""


class ReplayMiss(LookupError):
    """Nothing recorded for a request; `status` is the HTTP status the simulator answers."""

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message)
        self.status = status  # "400": no such prompt; "404": this model has no answer to it


@dataclass(frozen=True, slots=True)
class Recorded:
    """One model's recorded outcome on one prompt."""

    response: str | None
    correct: bool | None
    score: float | None
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class ReplayReply:
    """What the simulator sends back: message content, usage and the charge."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def _models_of(columns: list[str]) -> list[str]:
    costed = [c.removesuffix(SEP + "cost_usd") for c in columns if c.endswith(SEP + "cost_usd")]
    known = set(columns)
    return [m for m in costed if f"{m}{SEP}response" in known or f"{m}{SEP}correct" in known]


def check_layout(path: Path) -> list[str]:
    """The models a replay table serves, from its schema alone; raises ReplayError."""
    try:
        columns = _read(path, schema_only=True).columns
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ReplayError(f"{path}: cannot read the replay table: {exc}") from None
    if PROMPT not in columns:
        raise ReplayError(f"{path}: a replay table needs a '{PROMPT}' column")
    models = _models_of(columns)
    if not models:
        raise ReplayError(
            f"{path}: no replayable model: a model needs '<model>{SEP}cost_usd' and"
            f" '<model>{SEP}response' or '<model>{SEP}correct' columns"
        )
    return models


def _read(path: Path, *, schema_only: bool = False) -> pl.DataFrame:
    if path.suffix == ".csv":
        frame = pl.read_csv(path, n_rows=0 if schema_only else None)
    else:
        frame = pl.read_parquet(path, n_rows=0 if schema_only else None)
    return frame


class ReplayTable:
    """Recorded outcomes by prompt and model, with an index of responses for the judge."""

    def __init__(self, frame: pl.DataFrame, *, name: str) -> None:
        self.name = name
        self.models = tuple(_models_of(frame.columns))
        prompts = [str(p).strip() for p in frame[PROMPT].to_list()]
        self._row_of = {p: i for i, p in reversed(list(enumerate(prompts)))}
        # Longest first, so a message quoting two recorded prompts matches the fuller one.
        self._by_length = sorted(self._row_of, key=len, reverse=True)
        self._cells: dict[str, list[Recorded | None]] = {
            m: [_cell(row, model=m) for row in frame.iter_rows(named=True)] for m in self.models
        }
        # (response text, row, model) for the judge, longest response first.
        quoted = [
            (cell.response.strip(), row, model)
            for model, cells in self._cells.items()
            for row, cell in enumerate(cells)
            if cell is not None and cell.response and cell.response.strip()
        ]
        self._responses = sorted(quoted, key=lambda q: len(q[0]), reverse=True)
        self._prompts = prompts

    @classmethod
    def read(cls, path: Path) -> ReplayTable:
        check_layout(path)
        try:
            frame = _read(path)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise ReplayError(f"{path}: cannot read the replay table: {exc}") from None
        return cls(frame, name=str(path))

    @property
    def served(self) -> tuple[str, ...]:
        """The model names the simulator answers from this table, the judge included."""
        return (*self.models, JUDGE_MODEL)

    def serves(self, model: str) -> bool:
        return model == JUDGE_MODEL or model in self._cells

    def row_of(self, message: str) -> int | None:
        """The row whose prompt is `message` (trimmed), else the longest one it quotes."""
        text = message.strip()
        row = self._row_of.get(text)
        if row is not None:
            return row
        # A template around the recorded prompt ("Question: ...\nAnswer:") still matches.
        for prompt in self._by_length:
            if prompt and prompt in text:
                return self._row_of[prompt]
        return None

    def reply(self, model: str, message: str) -> ReplayReply:
        """The recorded answer of `model` to `message`; raises ReplayMiss."""
        if model == JUDGE_MODEL:
            return self._judge(message)
        row = self.row_of(message)
        if row is None:
            shown = json.dumps(message.strip()[:60])
            raise ReplayMiss(f"replay: no recorded prompt matches {shown}", status="400")
        cell = self._cells[model][row]
        if cell is None:
            raise ReplayMiss(f"replay: {model} has no recorded answer to this prompt", status="404")
        content = cell.response
        if content is None:
            content = json.dumps({"correct": cell.correct, "score": cell.score, "note": NO_TEXT})
        return ReplayReply(content, cell.input_tokens, cell.output_tokens, cell.cost_usd)

    def _judge(self, message: str) -> ReplayReply:
        # Free: the sources record no judge cost, and the recorded figures count answers only.
        cell = self.quoted(message)
        if cell is None:
            return ReplayReply("No recorded response is quoted in this prompt.", 0, 0, 0.0)
        if cell.score is not None:
            verdict = f"Rating: [[{cell.score:g}]]"
        elif cell.correct is not None:
            verdict = f"Rating: [[{10 if cell.correct else 1}]]"
        else:
            verdict = "The recorded judgement could not be parsed: no rating."
        return ReplayReply(verdict, 0, 0, 0.0)

    def quoted(self, message: str) -> Recorded | None:
        """The recorded outcome of the longest recorded response that `message` quotes.

        When the same text was recorded for several prompts, the one whose prompt the
        message also quotes wins.
        """
        hits: list[tuple[str, int, str]] = []
        for response, row, model in self._responses:
            if hits and len(response) < len(hits[0][0]):
                break
            if response in message:
                hits.append((response, row, model))
        if not hits:
            return None
        chosen = next((h for h in hits if self._prompts[h[1]] in message), hits[0])
        return self._cells[chosen[2]][chosen[1]]


def _cell(row: Mapping[str, Any], *, model: str) -> Recorded | None:
    values = {f: row.get(f"{model}{SEP}{f}") for f in FIELDS}
    if values["cost_usd"] is None or (values["response"] is None and values["correct"] is None):
        return None  # this model was not recorded on this prompt
    return Recorded(
        response=values["response"],
        correct=None if values["correct"] is None else bool(values["correct"]),
        score=None if values["score"] is None else float(values["score"]),
        input_tokens=int(values["input_tokens"] or 0),
        output_tokens=int(values["output_tokens"] or 0),
        cost_usd=float(values["cost_usd"]),
    )


# --- truth scorers for `batchroute compare` over replayed runs --------------------------------


def _recorded_for(row: Mapping[str, Any], answer: str | None) -> tuple[str, Any] | None:
    """(model, row) of the recorded response that `answer` is, read from the row's columns."""
    if answer is None:
        return None
    text = answer.strip()
    for column, value in row.items():
        if column.endswith(SEP + "response") and isinstance(value, str) and value.strip() == text:
            return column.removesuffix(SEP + "response"), row
    try:  # a replayed answer without recorded text carries its label itself
        carried = json.loads(text)
    except ValueError:
        return None
    if isinstance(carried, dict) and carried.get("note") == NO_TEXT:
        return "", carried
    return None


def recorded_correct(row: Mapping[str, Any], answer: str | None) -> tuple[bool, str | None]:
    """Truth scorer: the recorded correct label of the recorded response `answer` is.

    Use it as `--truth-scorer batchroute.sim.replay:recorded_correct` on runs replayed from
    a table that is also the dataset, so the row carries every model's responses and labels.
    """
    found = _recorded_for(row, answer)
    if found is None:
        return False, "the answer is none of the row's recorded responses"
    model, values = found
    label = values.get(f"{model}{SEP}correct" if model else "correct")
    if label is None:
        return False, f"no recorded label for {model or 'this answer'}"
    return bool(label), None


def recorded_score(row: Mapping[str, Any], answer: str | None) -> float | None:
    """The recorded judge score of the recorded response `answer` is, if there is one."""
    found = _recorded_for(row, answer)
    if found is None:
        return None
    model, values = found
    score = values.get(f"{model}{SEP}score" if model else "score")
    return None if score is None else float(score)
