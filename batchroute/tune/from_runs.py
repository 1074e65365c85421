"""Earlier runs' outcomes as extra training examples for the learned router (`--from-runs`).

An earlier run of the same job over the same dataset says, for some rows, whether a model's
answer did: the answer it kept, judged by the tune's truth; the first tier of a cascade whose
answer failed its check (the row escalated); the shadow model's check verdict on a row that
shadow sampling answered twice. Each such row is an example of "the cheaper model will do".
The answers behind the check verdicts are not in the run's files, but their calls are in the
job's store: asked again offline (no call is made), the ones found are judged by the truth too.

Runs are accepted only where their answers speak for this job: every row id of the run is a
row of the job's dataset (the row ids are what `compare` checks too) with the same prompt
columns, and the run asked the same prompt with the same parameters. Rows of the tuning
sample are left out (so no row of the half the guarantee is tested on is ever learned from),
and a row seen in several runs counts once: per model, a verdict by the truth wins over a
check's, else the first is kept. The examples only ever join the router's learning half; the
test half stays the sample's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from batchroute.dataset import open_dataset
from batchroute.errors import DatasetError
from batchroute.job import Job
from batchroute.options import RunOptions
from batchroute.results import read_results
from batchroute.runner import run
from batchroute.runs import Run, read_run
from batchroute.truth import Truth
from batchroute.tune.router_model import text_columns
from batchroute.tune.sample import sample_jobs, temp_dir

__all__ = ["RunExamples", "read_examples"]

Verdicts = dict[str, bool]  # model -> its answer did

# What a run's job must share with the tuned job for its answers to be this job's answers.
_SAME_INPUT = ("prompt", "system", "messages")


@dataclass(frozen=True, slots=True)
class RunExamples:
    """Rows of earlier runs outside the sample, each with the models whose answer did or not."""

    rows: list[dict[str, Any]]  # the dataset's own row, as the router reads it at run time
    verdicts: list[dict[str, bool]]  # model -> its answer did (right, or passed its check)
    left_out: int = 0  # rows of the runs that are in the tuning sample
    by_check: int = 0  # verdicts only a check gave (the answer was not found in the store)

    def __len__(self) -> int:
        return len(self.rows)

    def labelled(self, *, cheap: str, top: str) -> tuple[list[dict[str, Any]], list[bool]]:
        """The rows that say something about `cheap`, labelled as the sample's are: the
        cheaper model's answer did, or the top model's did not either."""
        rows, labels = [], []
        for row, verdict in zip(self.rows, self.verdicts, strict=True):
            if cheap in verdict:
                rows.append(row)
                labels.append(verdict[cheap] or verdict.get(top) is False)
        return rows, labels


def read_examples(
    paths: Sequence[Path], *, job: Job, sample_ids: Sequence[object], truth: Truth
) -> RunExamples:
    """The examples of the runs at `paths`; DatasetError (exit 2) naming a file that is not
    a run of this job's dataset and prompt."""
    dataset = _Dataset.read(job)
    in_sample = {str(i) for i in sample_ids}
    judged: dict[str, dict[str, bool]] = {}  # by the truth
    checked: dict[str, dict[str, bool]] = {}  # by a check only
    left_out: set[str] = set()
    for path in paths:
        run = read_run(path)
        _check_compatible(run, job=job, dataset=dataset)
        for row_id, (by_truth, by_check) in _verdicts(run, truth=truth).items():
            if row_id in in_sample:
                left_out.add(row_id)
                continue
            for merged, verdict in ((judged, by_truth), (checked, by_check)):
                known = merged.setdefault(row_id, {})
                for model, did in verdict.items():
                    known.setdefault(model, did)
    unjudged: dict[str, list[str]] = {}
    for row_id, verdict in checked.items():
        for model in verdict.keys() - judged[row_id].keys():
            unjudged.setdefault(model, []).append(row_id)
    for row_id, verdict in _judge_stored(job, unjudged, dataset=dataset, truth=truth).items():
        judged[row_id] |= verdict
    rows = {r: checked[r] | judged[r] for r in judged}
    kept = [r for r, v in rows.items() if v]
    proxies = sum(len(checked[r].keys() - judged[r].keys()) for r in kept)
    return RunExamples(
        [dataset.row(r) for r in kept], [rows[r] for r in kept], len(left_out), proxies
    )


@dataclass(frozen=True, slots=True)
class _Dataset:
    """The job's dataset, its rows found by row id (as text, as `compare` matches ids)."""

    frame: pl.DataFrame
    index: dict[str, int]

    @classmethod
    def read(cls, job: Job) -> _Dataset:
        frame = pl.concat([b.frame for b in open_dataset(job).batches()], how="vertical_relaxed")
        ids = frame[job.input.id].to_list() if job.input.id is not None else range(frame.height)
        return cls(frame, {str(i): n for n, i in enumerate(ids)})

    def row(self, row_id: str) -> dict[str, Any]:
        return self.frame.row(self.index[row_id], named=True)


_ROW = "_batchroute_from_runs_row"  # the temporary jobs' row id: the dataset's, as text


def _judge_stored(
    job: Job, wanted: Mapping[str, Sequence[str]], *, dataset: _Dataset, truth: Truth
) -> dict[str, Verdicts]:
    """Row id -> model -> its stored answer is right: each model of `wanted` asked again,
    offline, for its rows, through a temporary `fixed` job as the tuning sample's (the same
    requests, so the same store keys). A row whose call is not stored is skipped by the run
    and keeps its check verdict."""
    out: dict[str, Verdicts] = {}
    with temp_dir() as tmp:
        for number, (model, row_ids) in enumerate(sorted(wanted.items())):
            where = Path(tmp) / f"m{number}"
            where.mkdir()
            picks = [dataset.index[r] for r in row_ids]
            dataset.frame[picks].with_columns(pl.Series(_ROW, list(row_ids))).write_parquet(
                where / "rows.parquet"
            )
            asked = sample_jobs(job, [model], data=where / "rows.parquet", out=where)[model]
            asked = asked.model_copy(update={"input": asked.input.model_copy(update={"id": _ROW})})
            report = run(asked, RunOptions(force=True, cache="offline"))
            if report.stop_error is not None:
                continue  # nothing judged: the check verdicts stand
            results = read_results(report.results_path).filter(pl.col("status") == "ok")
            right = truth.correct(results, run=f"stored answers of {model}").to_list()
            for row_id, good in zip(results["row_id"].to_list(), right, strict=True):
                out.setdefault(str(row_id), {})[model] = good
    return out


def _check_compatible(run: Run, *, job: Job, dataset: _Dataset) -> None:
    ids = [str(i) for i in run.results["row_id"].to_list()]
    unknown = sum(1 for i in ids if i not in dataset.index)
    if unknown:
        raise DatasetError(
            f"{run.path}: --from-runs: a run of another dataset: {unknown} of its"
            f" {len(ids)} row ids (of {run.metadata.get('input', '?')}) are not rows of"
            f" {job.input.path}"
        )
    # The same ids over other text (another version of the file) are another dataset too.
    picks = [dataset.index[i] for i in ids]
    for column in text_columns(job):
        if column not in run.results.columns or column not in dataset.frame.columns:
            continue
        here = dataset.frame[column][picks].cast(pl.String).to_list()
        there = run.results[column].cast(pl.String).to_list()
        differ = [i for i, a, b in zip(ids, here, there, strict=True) if a != b]
        if differ:
            raise DatasetError(
                f"{run.path}: --from-runs: a run of another dataset: {len(differ)} of its rows"
                f" (first: row {differ[0]}) have another {column!r} than {job.input.path}"
            )
    theirs = run.metadata.get("job") or {}
    ours = job.settings()
    for key in _SAME_INPUT:
        if (theirs.get("input") or {}).get(key) != ours["input"].get(key):
            raise DatasetError(
                f"{run.path}: --from-runs: a run of another job: its input.{key} differs from"
                f" {job.source}'s, so its answers are not this job's"
            )
    if (theirs.get("params") or {}) != (ours.get("params") or {}):
        raise DatasetError(
            f"{run.path}: --from-runs: a run of another job: its [params] differ from"
            f" {job.source}'s, so its answers are not this job's"
        )


def _verdicts(run: Run, *, truth: Truth) -> dict[str, tuple[Verdicts, Verdicts]]:
    """Row id -> (verdicts by the truth, verdicts by a check), for the run's answered rows."""
    results = run.results.filter(pl.col("status") == "ok")
    right = truth.correct(results, run=run.name).to_list()
    shadows = _shadow_models(run.calls)
    out: dict[str, tuple[Verdicts, Verdicts]] = {}
    for row, good in zip(results.iter_rows(named=True), right, strict=True):
        row_id = str(row["row_id"])
        by_truth: Verdicts = {}
        by_check: Verdicts = {}
        if row.get("model") is not None:
            by_truth[row["model"]] = good  # the kept answer, judged as the sample's are
        tiers = row.get("tiers_tried") or []
        if row.get("escalated") and tiers and not row.get("fallback_used"):
            by_check[tiers[0]] = False  # its answer failed the check: the row escalated
        if row.get("shadow_passed") is not None and row_id in shadows:
            by_check[shadows[row_id]] = bool(row["shadow_passed"])
        out[row_id] = (by_truth, by_check)
    return out


def _shadow_models(calls: pl.DataFrame) -> dict[str, str]:
    """Row id -> the model whose shadow answer was checked (calls of older runs lack the
    columns: no shadow verdict is read from them)."""
    if "shadow" not in calls.columns or "purpose" not in calls.columns:
        return {}
    answered = calls.filter(
        pl.col("shadow").fill_null(False)
        & (pl.col("purpose") == "answer")
        & pl.col("error_kind").is_null()
    )
    return {
        str(r): m
        for r, m in zip(answered["row_id"].to_list(), answered["model"].to_list(), strict=True)
    }
