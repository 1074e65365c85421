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
