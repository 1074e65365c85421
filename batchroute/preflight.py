"""Everything that can be wrong with a job, checked before the first call is made."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from batchroute.dataset import Dataset, open_dataset
from batchroute.endpoints import api_keys
from batchroute.errors import ConfigError, DatasetError, OutputError
from batchroute.job import Job
from batchroute.lock import output_lock
from batchroute.options import RunOptions as RunOptions  # its old home; estimate.py
from batchroute.parsed import parser_for
from batchroute.records import result_schema
from batchroute.router import Router, build_router
from batchroute.sink import read_metadata
from batchroute.store import CallStore


@dataclass(slots=True)
class Prepared:
    dataset: Dataset
    router: Router
    api_keys: dict[str, str]  # by endpoint name
    store: CallStore
    run_id: str
    resumed: bool
    calls_file: str
    held: contextlib.ExitStack  # the outputs' locks and the store, released by `close`

    def close(self) -> None:
        """Close the store and release the job's lock."""
        self.held.close()


def prepare(job: Job, options: RunOptions) -> Prepared:
    """Validate job, data and paths; take the job's lock, open the store and decide the run
    id. Blocking. The caller must `close` what it returns."""
    dataset = open_dataset(job, limit_rows=options.limit_rows)
    _check_columns(job, dataset)
    router = build_router(job)
    router.validate(dataset)  # rule predicates, classifier and judge templates vs the columns
    job_key = job.key()
    assert job.store.path is not None  # load_job fills in the default
    _check_output_paths(job)
    for path in (job.output.path, job.output.calls_path):
        check_output(path, job_key=job_key, force=options.force)
    keys = api_keys(job)
    previous_run = _previous_run(options.retry_failed, job_key=job_key)
    with contextlib.ExitStack() as held:
        # The lock comes before the store's run id: a second run of the job must not resume
        # the first one's run while it is still going.
        for key, path in (
            ("output.path", job.output.path),
            ("output.calls", job.output.calls_path),
        ):
            held.enter_context(output_lock(path, where=f"{job.source}: {key}"))
        try:
            store = CallStore(job.store.path)
        except ConfigError as exc:
            raise ConfigError(f"{job.source}: store.path: {exc}") from None
        held.callback(store.close)
        new_run_id = _new_run_id()
        run_id = store.open_run(job_key, new_run_id=new_run_id, reopen=previous_run)
        calls_file = os.path.relpath(job.output.calls_path, job.output.path.parent)
        return Prepared(
            dataset,
            router,
            keys,
            store,
            run_id,
            resumed=run_id != new_run_id,
            calls_file=calls_file,
            held=held.pop_all(),
        )
    raise AssertionError("unreachable")  # pragma: no cover


# Outputs are always Parquet; a name that says otherwise would be a Parquet file in disguise.
_NOT_PARQUET = frozenset({".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".txt", ".xlsx"})


def _check_output_paths(job: Job) -> None:
    """Whatever the flags, an output never replaces the input, the store or the other output."""
    assert job.store.path is not None
    results, calls = job.output.path, job.output.calls_path
    if results.resolve() == calls.resolve():
        raise ConfigError(f"{job.source}: output.calls must differ from output.path")
    for key, path in (("output.path", results), ("output.calls", calls)):
        if path.suffix.lower() in _NOT_PARQUET:
            raise ConfigError(
                f"{job.source}: {key}: {path.name} would be Parquet under a"
                f" {path.suffix} name; name it .parquet"
            )
        for what, other in (("input.path", job.input.path), ("store.path", job.store.path)):
            if path.resolve() == other.resolve():
                raise ConfigError(
                    f"{job.source}: {key}: {path} is the {what} file; write the output elsewhere"
                )


def _check_columns(job: Job, dataset: Dataset) -> None:
    for what, template in (
        ("the prompt template", job.input.template()),
        ("the system prompt", job.input.system_template()),
    ):
        if template is not None:
            dataset.require_columns(list(template.columns), what=f"{job.source}: {what}")
    if job.input.messages is not None:
        dataset.require_columns([job.input.messages], what=f"{job.source}: input.messages")
    outputs = result_schema(pl.Int64(), parser=parser_for(job.settings()))
    for column in dataset.schema:
        if column in outputs and not (column == "row_id" and job.input.id == "row_id"):
            raise DatasetError(
                f"{dataset.path}: input column {column!r} has the name of an output column;"
                " rename it in the data"
            )


def check_output(path: Path, *, job_key: str, force: bool) -> None:
    """An existing output may be replaced by a run of the same job (a resume, a rerun), not
    silently by another job's run."""
    if path.is_dir():
        raise OutputError(f"{path}: output path is a directory")
    if not path.exists() or force:
        return
    try:
        previous = read_metadata(path).get("job_key")
    except (OSError, ValueError):
        previous = None
    if previous != job_key:
        raise OutputError(
            f"{path}: exists and was not written by this job; pass --force to replace it"
        )


def _previous_run(path: Path | None, *, job_key: str) -> str | None:
    if path is None:
        return None
    try:
        meta = read_metadata(path)
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path}: cannot read it as a batchroute results file: {exc}") from None
    if meta.get("job_key") != job_key:
        raise OutputError(f"{path}: was written by a different job (or an edited one)")
    run_id = meta.get("run_id")
    return str(run_id) if run_id else None


def _new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
