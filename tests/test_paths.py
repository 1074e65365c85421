"""Inputs beyond one local file on the local engine: directories, globs and s3:// URLs (a
real moto S3 server on 127.0.0.1), and outputs uploaded to s3://."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from helpers import job_text, make_tasks, run_cli, write_job

from batchroute.sim import SimulatorHandle
from batchroute.sink import read_metadata

pytest.importorskip("moto.server", reason="moto[server] is in the dev extra: make install")
from s3_server import KEY_ENV, KEY_VALUE, SECRET_ENV, SECRET_VALUE, S3Server, running_s3  # noqa: E402

FIXED = 'strategy = "fixed"\nmodel = "t/cheap"'
S3_ENV = {KEY_ENV: KEY_VALUE, SECRET_ENV: SECRET_VALUE}


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with running_s3() as server:
        server.filesystem().create_dir("data")  # a bucket
        yield server


def _requests(sim: SimulatorHandle) -> int:
    return sum(m["requests"] for m in sim.ledger()["models"].values())


def _parts(directory: Path, sizes: list[int], *, with_id: bool = True) -> pl.DataFrame:
    """Write consecutive slices of one task table as part files; returns the whole table."""
    whole = make_tasks(sum(sizes), with_id=with_id)
    directory.mkdir(parents=True, exist_ok=True)
    start = 0
    for number, size in enumerate(sizes):
        whole.slice(start, size).write_parquet(directory / f"part-{number:03d}.parquet")
        start += size
    return whole


def test_a_directory_is_read_as_one_dataset_in_file_order(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    whole = _parts(tmp_path / "parts", [5, 7, 3])
    (tmp_path / "parts" / "_SUCCESS").write_text("")  # a writer's marker: not data
    job = write_job(tmp_path, job_text(base_url=fresh_sim.base_url, data="parts", route=FIXED))
    done = run_cli("run", job)
    assert done.returncode == 0, done.stderr
    results = pl.read_parquet(tmp_path / "out/results.parquet")
    assert results["task_id"].to_list() == whole["task_id"].to_list()
    assert results["status"].to_list() == ["ok"] * 15
    assert _requests(fresh_sim) == 15


def test_a_glob_without_an_id_column_numbers_rows_across_files(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    whole = _parts(tmp_path / "parts", [4, 6], with_id=False)
    (tmp_path / "parts" / "other.parquet").write_bytes(b"not matched by the glob")
    body = job_text(
        base_url=fresh_sim.base_url,
        data="parts/part-*.parquet",
        route=FIXED,
        input_extra='prompt = "Label: {text}"',
    )
    done = run_cli("run", write_job(tmp_path, body))
    assert done.returncode == 0, done.stderr
    results = pl.read_parquet(tmp_path / "out/results.parquet")
    assert results["row_id"].to_list() == list(range(10))
    assert results["text"].to_list() == whole["text"].to_list()


def test_a_duplicate_id_across_files_stops_before_any_call(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    parts = tmp_path / "parts"
    _parts(parts, [3])
    make_tasks(2).write_parquet(parts / "part-001.parquet")  # task-0000 again
    job = write_job(tmp_path, job_text(base_url=fresh_sim.base_url, data="parts", route=FIXED))
    done = run_cli("run", job)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "duplicate id 'task-0000'" in done.stderr and "input.path" in done.stderr
    assert _requests(fresh_sim) == 0


def test_files_with_other_columns_stop_before_any_call(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    parts = tmp_path / "parts"
    _parts(parts, [3])
    make_tasks(2).rename({"text": "body"}).with_columns(
        task_id=pl.Series(["y1", "y2"])
    ).write_parquet(parts / "part-001.parquet")
    job = write_job(tmp_path, job_text(base_url=fresh_sim.base_url, data="parts", route=FIXED))
    done = run_cli("run", job)
    assert done.returncode == 2
    assert "part-001.parquet has other columns or types" in done.stderr
    assert _requests(fresh_sim) == 0


def _s3_job(tmp_path: Path, s3: S3Server, sim: SimulatorHandle, *, data: str, out: str) -> Path:
    body = job_text(base_url=sim.base_url, data=data, route=FIXED)
    body = body.replace('path = "out/results.parquet"', f'path = "{out}"')
    options = s3.storage_options()
    body = body.replace("[output]\n", f"[output]\nstorage_options = {options}\n")
    body = body.replace("[input]\n", f"[input]\nstorage_options = {options}\n")
    return write_job(tmp_path, body)


def test_an_s3_prefix_in_and_an_s3_url_out(
    tmp_path: Path, s3: S3Server, fresh_sim: SimulatorHandle
) -> None:
    fs = s3.filesystem()
    whole = make_tasks(9)
    for number, start in enumerate((0, 4)):
        with fs.open_output_stream(f"data/in/tasks/part-{number}.parquet") as sink:
            pq.write_table(whole.slice(start, 4 if start == 0 else 5).to_arrow(), sink)
    job = _s3_job(
        tmp_path,
        s3,
        fresh_sim,
        data="s3://data/in/tasks/",
        out="s3://data/out/results.parquet",
    )
    done = run_cli("run", job, env=S3_ENV)
    assert done.returncode == 0, done.stderr
    with fs.open_input_file("data/out/results.parquet") as handle:
        results = pl.read_parquet(handle)
    assert results["task_id"].to_list() == whole["task_id"].to_list()
    with fs.open_input_file("data/out/results.calls.parquet") as handle:
        calls = pl.read_parquet(handle)
    assert calls.height == 9
    local = next((tmp_path / ".batchroute" / "remote").rglob("results.parquet"))
    meta = read_metadata(local)
    assert meta["job"]["input"]["url"] == "s3://data/in/tasks/"
    # The names of the key variables are kept; their values never are.
    for path in (tmp_path / ".batchroute").rglob("*.parquet"):
        assert SECRET_VALUE.encode() not in path.read_bytes()
        assert KEY_VALUE.encode() not in path.read_bytes()
    # The same command again resumes nothing new: every call comes from the store.
    again = run_cli("run", job, env=S3_ENV)
    assert again.returncode == 0, again.stderr
    assert _requests(fresh_sim) == 9


def test_an_s3_output_of_another_job_is_not_replaced(
    tmp_path: Path, s3: S3Server, fresh_sim: SimulatorHandle
) -> None:
    fs = s3.filesystem()
    with fs.open_output_stream("data/in2/tasks.parquet") as sink:
        pq.write_table(make_tasks(3).to_arrow(), sink)
    with fs.open_output_stream("data/out2/results.parquet") as sink:
        pq.write_table(make_tasks(1).to_arrow(), sink)  # someone else's
    job = _s3_job(
        tmp_path,
        s3,
        fresh_sim,
        data="s3://data/in2/tasks.parquet",
        out="s3://data/out2/results.parquet",
    )
    done = run_cli("run", job, env=S3_ENV)
    assert done.returncode == 2, done.stderr
    assert "s3://data/out2/results.parquet: exists and was not written by this job" in done.stderr
    assert _requests(fresh_sim) == 0


def test_a_missing_key_variable_names_the_job_key(
    tmp_path: Path, s3: S3Server, fresh_sim: SimulatorHandle
) -> None:
    job = _s3_job(tmp_path, s3, fresh_sim, data="s3://data/in/", out="out/results.parquet")
    assert KEY_ENV not in os.environ
    done = run_cli("run", job)
    assert done.returncode == 2
    assert f"input.storage_options: environment variable {KEY_ENV} is not set" in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr


def test_a_second_run_does_not_replace_the_copy_the_first_is_reading(
    tmp_path: Path, s3: S3Server, fresh_sim: SimulatorHandle
) -> None:
    from batchroute.job import load_job
    from batchroute.lock import output_lock

    fs = s3.filesystem()
    with fs.open_output_stream("data/in3/tasks.parquet") as sink:
        pq.write_table(make_tasks(3).to_arrow(), sink)
    job_path = _s3_job(
        tmp_path, s3, fresh_sim, data="s3://data/in3/tasks.parquet", out="out/results.parquet"
    )
    job = load_job(job_path)
    staged = job.input.path / "tasks.parquet"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"the first run's copy")
    with output_lock(job.output.path, where="the first run"):  # the first run, still going
        done = run_cli("run", job_path, env=S3_ENV)
    assert done.returncode == 2, done.stderr
    assert "another run" in done.stderr or "pid" in done.stderr, done.stderr
    assert staged.read_bytes() == b"the first run's copy"
    assert _requests(fresh_sim) == 0
