"""Everything that can be wrong with a job, checked before the first call is made."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import polars as pl

from batchroute.dataset import Dataset
from batchroute.endpoints import api_keys
from batchroute.errors import ConfigError, DatasetError, OutputError
from batchroute.job import Job
from batchroute.records import result_schema
from batchroute.router import Router, build_router
from batchroute.sink import read_metadata
from batchroute.store import CallStore

if TYPE_CHECKING:
    from batchroute.transport import Transport

CacheMode = Literal["use", "off", "offline"]


class TransportFactory(Protocol):
    """Builds the transport of endpoint `name` in place of `open_transport` (tests only)."""

    def __call__(
        self, name: str, /, *, base_url: str, api_key: str, timeout_s: float
    ) -> Transport: ...


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run, beyond the job file: the command line's flags."""

    force: bool = False  # replace outputs written by a different job
    quiet: bool = True
    cache: CacheMode = "use"
    retry_failed: Path | None = None  # an earlier results file whose failed rows to rerun
    handle_signals: bool = False  # only in the main thread of a CLI process
    limit_rows: int | None = None  # only the first rows (estimate --sample)
    # Not a flag: tests answer calls in-process with it; no embedded simulator is started.
    transport_factory: TransportFactory | None = None


@dataclass(slots=True)
class Prepared:
    dataset: Dataset
    router: Router
    api_keys: dict[str, str]  # by endpoint name
    store: CallStore
    run_id: str
    resumed: bool
    calls_file: str


def prepare(job: Job, options: RunOptions) -> Prepared:
    """Validate job, data and paths; open the store and decide the run id. Blocking."""
    dataset = Dataset(
        job.input.path,
        id_column=job.input.id,
        batch_rows=job.input.batch_rows,
        limit_rows=options.limit_rows,
    )
    _check_columns(job, dataset)
    router = build_router(job)
    router.validate(dataset)  # rule predicates, classifier and judge templates vs the columns
    job_key = job.key()
    for path in (job.output.path, job.output.calls_path):
        check_output(path, job_key=job_key, force=options.force)
    if job.output.path.resolve() == job.output.calls_path.resolve():
        raise ConfigError(f"{job.source}: output.calls must differ from output.path")
    keys = api_keys(job)
    previous_run = _previous_run(options.retry_failed, job_key=job_key)
    assert job.store.path is not None  # load_job fills in the default
    store = CallStore(job.store.path)
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
    outputs = result_schema(pl.Int64())
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
