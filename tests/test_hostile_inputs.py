"""Input files that fight back: types that change late, codes with leading zeros, bad bytes."""

from __future__ import annotations

import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from helpers import job_text, run_cli, write_job, write_tasks

import batchroute
import batchroute.runner
from batchroute.checks import import_function
from batchroute.dataset import Dataset
from batchroute.errors import DatasetError
from batchroute.job import load_job
from batchroute.sim import SimulatorHandle

pytestmark = pytest.mark.timeout(180)


def _requests(sim: SimulatorHandle) -> int:
    return sum(model["requests"] for model in sim.ledger()["models"].values())


def _numbers_then_text(path: Path, *, rows: int, text_at: int) -> None:
    values = [str(i) for i in range(rows)]
    values[text_at] = "n/a"
    frame = pl.DataFrame({"task_id": [f"t{i}" for i in range(rows)], "n": values})
    frame.with_columns(text=pl.format("ticket {}", "n")).write_csv(path)


def test_a_text_value_after_100_000_numbers_is_read_as_text(tmp_path: Path) -> None:
    # pyarrow guessed int64 from its first block; the run died at row 100,000.
    path = tmp_path / "late.csv"
    _numbers_then_text(path, rows=110_000, text_at=100_000)
    dataset = Dataset(path, id_column="task_id", batch_rows=4096)
    assert dataset.schema["n"] == pl.String
    values = [v for batch in dataset.batches() for v in batch.frame["n"].to_list()]
    assert len(values) == 110_000 and values[100_000] == "n/a" and values[7] == "7"


def test_ids_with_leading_zeros_stay_text_unless_the_job_says_int(tmp_path: Path) -> None:
    path = tmp_path / "codes.csv"
    path.write_text('id,zip,text\n007,01234,"two\nlines"\n008,20500,x\n010,30000,y\n')
    dataset = Dataset(path, id_column="id", batch_rows=2)
    assert [b.row_ids for b in dataset.batches()] == [["007", "008"], ["010"]]
    assert dataset.schema["zip"] == pl.String
    assert next(dataset.batches()).frame["text"][0] == "two\nlines"
    typed = Dataset(path, id_column="id", batch_rows=8, column_types={"id": "int"})
    assert [b.row_ids for b in typed.batches()] == [[7, 8, 10]]
    huge = tmp_path / "huge.csv"
    huge.write_text("n\n99999999999999999999\n3\n")  # past int64: kept as the digits
    assert next(Dataset(huge, id_column=None, batch_rows=8).batches()).frame["n"][0] == (
        "99999999999999999999"
    )


def test_a_value_that_does_not_fit_input_schema_stops_before_any_call(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    _numbers_then_text(tmp_path / "tasks.csv", rows=300, text_at=250)
    body = job_text(
        base_url=fresh_sim.base_url,
        data="tasks.csv",
        route='strategy = "fixed"\nmodel = "t/cheap"',
        input_extra='id = "task_id"\nprompt = "{text}"\nschema = { n = "int" }',
    )
    done = run_cli("run", write_job(tmp_path, body))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "job.toml: input.path: " in done.stderr
    assert "row 250: column 'n': 'n/a' is not int" in done.stderr
    assert _requests(fresh_sim) == 0


def test_input_schema_names_a_missing_column(tmp_path: Path, fresh_sim: SimulatorHandle) -> None:
    _numbers_then_text(tmp_path / "tasks.csv", rows=3, text_at=1)
    body = job_text(
        base_url=fresh_sim.base_url,
        data="tasks.csv",
        route='strategy = "fixed"\nmodel = "t/cheap"',
        input_extra='id = "task_id"\nprompt = "{text}"\nschema = { nn = "int" }',
    )
    done = run_cli("run", write_job(tmp_path, body))
    assert done.returncode == 2
    assert "input.schema names column 'nn', which is not in the file" in done.stderr


def test_a_csv_that_is_not_utf8_names_its_line(tmp_path: Path, fresh_sim: SimulatorHandle) -> None:
    (tmp_path / "tasks.csv").write_bytes(b'task_id,text\nt1,"a\nb"\nt2,caf\xe9 au lait\nt3,ok\n')
    body = job_text(
        base_url=fresh_sim.base_url,
        data="tasks.csv",
        route='strategy = "fixed"\nmodel = "t/cheap"',
    )
    done = run_cli("run", write_job(tmp_path, body))
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        "tasks.csv: line 4, byte 7: not valid UTF-8 (b'\\xe9'); save the file as UTF-8"
    ), done.stderr
    assert "job.toml: input.path: " in done.stderr
    assert _requests(fresh_sim) == 0


def test_a_value_that_turns_bad_mid_stream_keeps_the_rows_already_paid_for(
    tmp_path: Path, fresh_sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file changes after the check pass read it (another program writing it): the row
    that no longer converts is named, and the batches answered before it are written."""
    rows, bad_row = 1000, 900
    pad = "x" * 2000  # 2 MB of rows, so pyarrow reads the file in more than one block
    frame = pl.DataFrame({"task_id": [f"t{i}" for i in range(rows)], "n": list(range(rows))})
    frame = frame.with_columns(text=pl.lit(pad))
    path = tmp_path / "tasks.csv"
    frame.write_csv(path)
    real_prepare = batchroute.runner.prepare

    def prepare_then_change_the_file(*args: object, **kwargs: object) -> object:
        prepared = real_prepare(*args, **kwargs)  # type: ignore[arg-type]
        changed = frame.with_columns(n=pl.col("n").cast(pl.String))
        changed[bad_row, "n"] = "n/a"
        changed.write_csv(path)
        return prepared

    monkeypatch.setattr(batchroute.runner, "prepare", prepare_then_change_the_file)
    body = job_text(
        base_url=fresh_sim.base_url,
        data="tasks.csv",
        route='strategy = "fixed"\nmodel = "t/cheap"',
        input_extra='id = "task_id"\nprompt = "{n}"\nbatch_rows = 50',
    )
    job = load_job(write_job(tmp_path, body))
    with pytest.raises(DatasetError, match=r"row 900: column 'n': 'n/a' is not int"):
        batchroute.run(job)
    paid = _requests(fresh_sim)
    assert paid > 0
    results = pl.read_parquet(tmp_path / "out/results.parquet")
    assert results.height > 0 and results.height <= paid
    assert (results["status"] == "ok").all()


# --- a json_schema check's $ref stays inside the schema -----------------------------------


@pytest.fixture
def schema_server() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on 127.0.0.1 that serves a schema and counts the GETs it gets."""
    gets: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            gets.append(self.path)
            body = json.dumps({"type": "string"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/label.json", gets
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


JSON_ANSWERS = """
[params]
max_tokens = 50
response_format = {{ type = "json_object" }}

[check]
type = "json_schema"
schema = {{ type = "object", properties = {{ answer = {{ "$ref" = "{ref}" }} }} }}
"""


@pytest.mark.parametrize("kind", ["http", "file"])
def test_a_remote_ref_in_a_json_schema_check_is_a_config_error_and_nothing_is_fetched(
    kind: str,
    tmp_path: Path,
    fresh_sim: SimulatorHandle,
    schema_server: tuple[str, list[str]],
) -> None:
    url, gets = schema_server
    (tmp_path / "label.json").write_text('{"type": "string"}')
    ref = url if kind == "http" else (tmp_path / "label.json").as_uri()
    write_tasks(tmp_path, 5)
    body = job_text(
        base_url=fresh_sim.base_url,
        route='strategy = "cascade"\ntiers = ["t/cheap", "t/strong"]',
        extra=JSON_ANSWERS.format(ref=ref),
    )
    done = run_cli("run", write_job(tmp_path, body))
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line
    assert f"job.toml: check.schema: $ref '{ref}' points outside the schema" in line
    assert gets == []
    assert _requests(fresh_sim) == 0


def test_a_ref_within_the_schema_still_validates(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 6)
    extra = JSON_ANSWERS.format(ref="#/$defs/text").replace(
        'type = "object", properties',
        '"$defs" = { text = { type = "string" } }, type = "object", properties',
    )
    body = job_text(
        base_url=fresh_sim.base_url,
        route='strategy = "cascade"\ntiers = ["t/cheap", "t/strong"]',
        extra=extra,
    )
    done = run_cli("run", write_job(tmp_path, body))
    assert done.returncode == 0, done.stderr
    results = pl.read_parquet(tmp_path / "out/results.parquet")
    assert results.height == 6 and results["check_passed"].is_not_null().all()


# --- a python check: bounded in time, and no lasting change to sys.path --------------------

SLOW_CHECKS = """
import threading

def stuck(row, answer):
    threading.Event().wait()  # never returns
    return True
"""


def test_a_python_check_past_its_timeout_fails_with_timeout_and_the_run_ends(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 4)
    (tmp_path / "slow_checks.py").write_text(SLOW_CHECKS, encoding="utf-8")
    body = job_text(
        base_url=fresh_sim.base_url,
        route='strategy = "cascade"\ntiers = ["t/cheap", "t/strong"]',
        extra='[check]\ntype = "python"\nfunction = "slow_checks:stuck"\ntimeout_s = 0.2\n',
    )
    done = run_cli("run", write_job(tmp_path, body))  # ends although four threads are stuck
    assert done.returncode == 0, done.stderr
    results = pl.read_parquet(tmp_path / "out/results.parquet")
    assert results["escalated"].all() and not results["check_passed"].any()
    reason = "python failed on t/cheap: timeout: slow_checks:stuck ran past 0.2 s"
    assert results["escalation_reason"].to_list() == [reason] * 4


def test_timeout_s_belongs_to_python_checks(tmp_path: Path, fresh_sim: SimulatorHandle) -> None:
    write_tasks(tmp_path, 2)
    body = job_text(
        base_url=fresh_sim.base_url,
        route='strategy = "fixed"\nmodel = "t/cheap"',
        extra='[check]\ntype = "regex"\npattern = "x"\ntimeout_s = 3\n',
    )
    done = run_cli("run", write_job(tmp_path, body))
    assert done.returncode == 2
    assert "check: 'timeout_s' does not apply to a regex check" in done.stderr


def test_importing_a_check_leaves_sys_path_as_it_was(tmp_path: Path) -> None:
    folder = tmp_path / "job_folder"
    folder.mkdir()
    (folder / "helper_mod_41.py").write_text("WORD = 'ok'\n", encoding="utf-8")
    (folder / "checks_mod_41.py").write_text(
        "from helper_mod_41 import WORD\n\ndef good(row, answer):\n    return answer == WORD\n",
        encoding="utf-8",
    )
    before = list(sys.path)
    function = import_function("checks_mod_41:good", base_dir=folder)
    assert function({}, "ok") is True
    assert sys.path == before
