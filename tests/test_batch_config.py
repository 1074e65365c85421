"""Batch settings a user can get wrong (exit 2, one line naming the key), and batch objects a
server can get wrong (refused where they enter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import job_text, run_cli, write_job, write_tasks

from batchroute.batch import tier_modes
from batchroute.batch.client import BatchApiError, read_batch
from batchroute.job import duration_s, load_job

MODEL = '[models."t/cheap"]\nusd_per_mtok = {{ input = 0.2, output = 0.8 }}\n{extra}\n'


def _job(tmp_path: Path, *, model: str = "", run: str = "") -> Path:
    write_tasks(tmp_path, 3)
    body = job_text(
        base_url="http://127.0.0.1:9/v1",
        route='strategy = "fixed"\nmodel = "t/cheap"',
        models=MODEL.format(extra=model),
        run_extra=run,
    )
    return write_job(tmp_path, body)


@pytest.mark.parametrize(
    ("model", "run", "key"),
    [
        ('mode = "bulk"', "", "models.t/cheap.mode"),
        ('mode = "batch"\ncompletion_window = "24 hours"', "", "models.t/cheap.completion_window"),
        ("batch_price_factor = 2", "", "models.t/cheap.batch_price_factor"),
        ('batch_fallback = "later"', "", "models.t/cheap.batch_fallback"),
        ("", 'deadline = "0h"', "run.deadline"),
        ("", 'deadline = "6 hours"', "run.deadline"),
    ],
)
def test_a_bad_batch_setting_is_one_line_naming_the_key(
    tmp_path: Path, model: str, run: str, key: str
) -> None:
    done = run_cli("run", _job(tmp_path, model=model, run=run))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "job.toml" in lines[0] and key in lines[0], done.stderr


def test_the_deadline_rule(tmp_path: Path) -> None:
    assert duration_s("90m") == 5400 and duration_s("2d") == 172800
    job = load_job(_job(tmp_path, model='mode = "batch"', run='deadline = "23h"'))
    assert tier_modes(job) == {"t/cheap": "online (run.deadline 23h is before its 24h window)"}
    job = load_job(_job(tmp_path, model='mode = "batch"', run='deadline = "24h"'))
    assert tier_modes(job) == {"t/cheap": "batch"}
    assert tier_modes(load_job(_job(tmp_path))) == {}


GOOD: dict[str, Any] = {
    "id": "batch_1",
    "status": "completed",
    "request_counts": {"total": 2, "completed": 1, "failed": 1},
    "output_file_id": "file-out",
    "error_file_id": None,
}


@pytest.mark.parametrize(
    "change",
    [
        {"id": "../../files/x"},
        {"id": None},
        {"status": "done"},
        {"request_counts": {"total": -1}},
        {"request_counts": {"total": "2"}},
        {"request_counts": {"total": True}},
        {"output_file_id": "file/../../etc"},
        {"error_file_id": 7},
    ],
)
def test_a_hostile_batch_object_is_refused(change: dict[str, Any]) -> None:
    assert read_batch(GOOD).output_file_id == "file-out"
    with pytest.raises(BatchApiError):
        read_batch({**GOOD, **change})
