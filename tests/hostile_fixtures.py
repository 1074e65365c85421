"""Fixtures and helpers to run real jobs against the hostile server (tests/hostile_server.py)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from helpers import write_tasks
from hostile_server import HostileServer

import batchroute
from batchroute.results import read_calls, read_results


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


@pytest.fixture(params=["aiohttp", "openai"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Ran:
    report: batchroute.RunReport
    results: pl.DataFrame
    calls: pl.DataFrame


def hostile_job(
    tmp_path: Path,
    server: HostileServer,
    *,
    rows: int = 3,
    model: str = "h/model",
    route: str | None = None,
    models: str = "",
    base_url: str | None = None,
    endpoint: str = "",
    run: str = "",
    concurrency: int = 4,
    transport: str = "aiohttp",
    extra: str = "",
) -> Path:
    """Write a dataset of `rows` tasks and a one-model job against `server`; the job's path."""
    write_tasks(tmp_path, rows)
    body = f"""\
        [input]
        path = "tasks.parquet"
        id = "task_id"
        prompt = "Label: {{text}}"

        [output]
        path = "out/results.parquet"

        [endpoint]
        base_url = "{base_url or server.url}"
        timeout_s = 10
        transport = "{transport}"
        @ENDPOINT@

        [route]
        @ROUTE@

        [run]
        concurrency = {concurrency}
        max_attempts = 2
        backoff_base_s = 0.01
        backoff_max_s = 0.02
        @RUN@
        """
    path = tmp_path / "job.toml"
    text = textwrap.dedent(body)
    routed = route or f'strategy = "fixed"\nmodel = "{model}"'
    for mark, part in (("@ENDPOINT@", endpoint), ("@RUN@", run), ("@ROUTE@", routed)):
        text = text.replace(mark, textwrap.dedent(part))
    path.write_text(text + textwrap.dedent(models) + textwrap.dedent(extra), encoding="utf-8")
    return path


def run_job(path: Path, options: batchroute.RunOptions | None = None) -> Ran:
    """Run a job through the public API; its report and both output tables."""
    report = batchroute.run(batchroute.load_job(path), options)
    results_path = path.parent / "out" / "results.parquet"
    return Ran(report, read_results(results_path), read_calls(results_path))
