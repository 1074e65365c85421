"""Ground truth for `compare`: is a run's answer right, by a column of the input or a scorer?

Two ways to say what is right:

- a **column** of the input (`--truth expected`): the answer, or the JSON field of it at
  `answer_path`, equals the column's value after both are normalised like labels (trimmed of
  space, punctuation and quotes, case-folded, inner runs of space made one);
- a **scorer** (`--truth-scorer module:function` or `path/to/file.py:function`), called as
  `function(row, answer)` like a `python` check, returning a bool or (bool, reason).

Rows that failed count as wrong; skipped rows are left out of accuracy by the caller.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import polars as pl

from batchroute.check_config import parse_json_path
from batchroute.checks import import_function, normalize_label, value_at
from batchroute.errors import ConfigError, DatasetError

__all__ = ["Scorer", "Truth", "load_scorer", "normalize_answer", "truth_from_options"]

Scorer = Callable[[Mapping[str, Any], str | None], Any]


def normalize_answer(value: object) -> str:
    """`" Billing. "`, `"BILLING"` and `"**billing**"` all become `billing`."""
    return " ".join(normalize_label(str(value)).split())


def load_scorer(reference: str) -> Scorer:
    """Import `module:function` (from the working directory or sys.path) or `file.py:function`.

    Raises ConfigError naming the reference.
    """
    target, colon, attribute = reference.rpartition(":")
    if not colon or not target or not attribute.isidentifier():
        raise ConfigError(
            f"--truth-scorer {reference}: not 'module:function' or 'file.py:function'"
        )
    if target.endswith(".py") or "/" in target:
        return _from_file(Path(target), attribute, reference=reference)
    try:
        return import_function(reference, base_dir=Path.cwd())
    except ValueError as exc:
        raise ConfigError(f"--truth-scorer {reference}: {exc}") from None


def _from_file(path: Path, attribute: str, *, reference: str) -> Scorer:
    if not path.is_file():
        raise ConfigError(f"--truth-scorer {reference}: no such file {path}")
    name = f"_batchroute_scorer_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # The module's own directory first, so it can import its neighbours like a check can.
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module runs at import: any error is theirs to see
        raise ConfigError(f"--truth-scorer {reference}: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.pop(0)
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(f"--truth-scorer {reference}: {path} has no function {attribute!r}")
    return cast(Scorer, function)


@dataclass(frozen=True)
class Truth:
    """What is right: a column of the input or a scorer (exactly one)."""

    column: str | None = None
    scorer: Scorer | None = None
    answer_path: str | None = None
    name: str = ""  # how notes name it: the column, or the scorer's reference

    @classmethod
    def of(cls, value: str | Scorer, *, answer_path: str | None = None) -> Truth:
        """A column name (str) or a scorer function, as `compare(truth=...)` takes them."""
        if answer_path is not None:
            try:
                parse_json_path(answer_path)
            except ValueError as exc:
                raise ConfigError(f"--answer-path: {exc}") from None
        if isinstance(value, str):
            return cls(column=value, answer_path=answer_path, name=f"column {value!r}")
        name = getattr(value, "__qualname__", None) or repr(value)
        return cls(scorer=value, answer_path=answer_path, name=f"scorer {name}")

    def named(self, name: str) -> Truth:
        return Truth(self.column, self.scorer, self.answer_path, name)

    def correct(self, results: pl.DataFrame, *, run: str) -> pl.Series:
        """One bool per row of `results`: the row's answer is right. Failed rows are wrong."""
        if self.column is not None and self.column not in results.columns:
            shown = ", ".join(results.columns[:12])
            raise DatasetError(f"{run}: no column {self.column!r} to take the truth from ({shown})")
        steps = parse_json_path(self.answer_path) if self.answer_path else None
        marks = []
        for row in results.iter_rows(named=True):
            if row.get("status") != "ok" or row.get("answer") is None:
                marks.append(False)
                continue
            answer = row["answer"]
            if steps is not None:
                try:
                    answer = value_at(answer, steps=steps)
                except ValueError:
                    marks.append(False)  # the answer lacks the field: it cannot be right
                    continue
                answer = answer if isinstance(answer, str) else json.dumps(answer)
            marks.append(self._judge(row, answer, run=run))
        return pl.Series("correct", marks, dtype=pl.Boolean)

    def _judge(self, row: dict[str, Any], answer: str, *, run: str) -> bool:
        if self.column is not None:
            expected = row.get(self.column)
            return expected is not None and normalize_answer(answer) == normalize_answer(expected)
        assert self.scorer is not None
        try:
            outcome = self.scorer(row, answer)
        except Exception as exc:  # a scorer bug: say which row made it, once, and stop
            raise ConfigError(
                f"{self.name} raised {type(exc).__name__}: {exc} (run {run}, row"
                f" {row.get('row_id')!r})"
            ) from None
        if isinstance(outcome, tuple) and len(outcome) == 2:
            outcome = outcome[0]
        if not isinstance(outcome, bool):
            raise ConfigError(
                f"{self.name} returned {type(outcome).__name__}, not a bool or (bool, reason)"
            )
        return outcome


def truth_from_options(
    column: str | None, *, scorer: str | None, answer_path: str | None
) -> Truth | None:
    """The truth the command line asked for (`--truth`, `--truth-scorer`), if any."""
    if column is not None and scorer is not None:
        raise ConfigError("give --truth COLUMN or --truth-scorer FUNCTION, not both")
    if scorer is not None:
        return Truth.of(load_scorer(scorer), answer_path=answer_path).named(scorer)
    if column is not None:
        return Truth.of(column, answer_path=answer_path)
    if answer_path is not None:
        raise ConfigError("--answer-path goes with --truth or --truth-scorer")
    return None
