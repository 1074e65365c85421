"""A user's mistake ends the real CLI with exit 2 and one line; a run with no row ok, exit 5."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import job_text, run_cli, write_job, write_tasks

from batchroute import read_metadata
from batchroute.sim import SimulatorHandle

pytestmark = pytest.mark.timeout(300)

FIXED = 'strategy = "fixed"\nmodel = "t/cheap"'


def _one_error_line(stderr: str) -> str:
    """The whole of stderr: one `batchroute: error:` line, without a traceback or aiohttp's
    "Unclosed connector" warnings."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("batchroute: error: "), stderr
    return lines[0]


def test_an_output_folder_that_is_a_file_is_one_line(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 5)
    (tmp_path / "out").write_text("not a folder")
    job = write_job(tmp_path, job_text(base_url=fresh_sim.base_url, route=FIXED))
    done = run_cli("run", job)
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert str(job) in line and "output.path" in line and "is a file" in line
    assert (tmp_path / "out").read_text() == "not a folder"


def test_an_output_that_cannot_be_opened_closes_the_connections_and_says_why(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    """The outputs' temporary files are opened after the connections: a failure there must
    still close them, and reach the user as itself."""
    write_tasks(tmp_path, 5)
    job = write_job(tmp_path, job_text(base_url=fresh_sim.base_url, route=FIXED))
    results = tmp_path / "out/results.parquet"
    assert run_cli("run", job).returncode == 0
    # --retry-failed reopens the earlier run, so its temporary file's name is known: make it
    # a folder, which no Parquet writer can open.
    run_id = read_metadata(results)["run_id"]
    (tmp_path / f"out/.results.parquet.{run_id}.partial").mkdir()
    before = results.read_bytes()
    done = run_cli("run", job, "--retry-failed", results)
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert str(results) in line and "cannot write the output" in line
    assert results.read_bytes() == before


MISTAKES = {
    "timeout inf": ("timeout_s = 5", "timeout_s = inf", "endpoint.timeout_s"),
    "timeout nan": ("timeout_s = 5", "timeout_s = nan", "endpoint.timeout_s"),
    "timeout 0": ("timeout_s = 5", "timeout_s = 0", "endpoint.timeout_s"),
    "timeout negative": ("timeout_s = 5", "timeout_s = -1", "endpoint.timeout_s"),
    "not http": ("SIM_URL", "ftp://127.0.0.1/v1", "endpoint.base_url"),
    "no scheme": ("SIM_URL", "127.0.0.1:8000/v1", "endpoint.base_url"),
    "port too large": ("SIM_URL", "http://127.0.0.1:99999/v1", "endpoint.base_url"),
    "port not a number": ("SIM_URL", "http://127.0.0.1:http/v1", "endpoint.base_url"),
    "password in url": ("SIM_URL", "http://me:hunter2@127.0.0.1:8000/v1", "endpoint.base_url"),
    "csv output": ("out/results.parquet", "out/results.csv", "output.path"),
    "output is the input": ("out/results.parquet", "tasks.parquet", "output.path"),
    "calls are the input": (
        'path = "out/results.parquet"',
        'path = "out/results.parquet"\ncalls = "tasks.parquet"',
        "output.calls",
    ),
    "output is the store": (
        "[run]",
        '[store]\npath = "out/results.parquet"\n\n[run]',
        "output.path",
    ),
    "output under /proc": ("out/results.parquet", "/proc/no-such/results.parquet", "output.path"),
    "store under a file": (
        "[run]",
        '[store]\npath = "tasks.parquet/store.sqlite"\n\n[run]',
        "store.path",
    ),
}


@pytest.mark.parametrize("case", MISTAKES.values(), ids=MISTAKES.keys())
def test_a_mistake_in_the_job_is_one_line_naming_the_key(
    tmp_path: Path, fresh_sim: SimulatorHandle, case: tuple[str, str, str]
) -> None:
    old, new, key = case
    write_tasks(tmp_path, 5)
    before = (tmp_path / "tasks.parquet").read_bytes()
    body = job_text(base_url="SIM_URL", route=FIXED)
    assert old in body
    body = body.replace(old, new).replace("SIM_URL", fresh_sim.base_url)
    job = write_job(tmp_path, body)
    done = run_cli("run", job, "--force")
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert str(job) in line and key in line
    assert "hunter2" not in line
    assert (tmp_path / "tasks.parquet").read_bytes() == before  # the input is never replaced
    assert fresh_sim.ledger()["total_charged_usd"] == 0
