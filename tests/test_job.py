"""Bad jobs, bad data and occupied outputs through the real CLI: exit 2 and one line that names
the file and the key, column or row at fault. Plus how load_job anchors relative paths."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
from helpers import job_text, run_cli, write_job, write_tasks

from batchroute import cli, runner
from batchroute.job import load_job
from batchroute.sim import SimulatorHandle

pytestmark = pytest.mark.timeout(60)

FIXED = 'strategy = "fixed"\nmodel = "t/cheap"'
CASCADE = 'strategy = "cascade"\ntiers = ["t/cheap", "t/strong"]'
ID_AND_PROMPT = 'id = "task_id"\nprompt = "Label: {text}"'
UNSET_VAR = "BATCHROUTE_TEST_SURELY_UNSET_KEY"


def _job(**parts: str) -> str:
    # "embedded" starts the simulator only once the job has passed every check.
    return job_text(base_url="embedded", **{"route": FIXED, **parts})


def _frame(path: Path, **columns: Sequence[object]) -> None:
    pl.DataFrame(columns).write_parquet(path)


def _api_key_body() -> str:
    # job_text writes one [endpoint] table; the key variable goes into it.
    return _job().replace("[endpoint]\n", f'[endpoint]\napi_key_env = "{UNSET_VAR}"\n', 1)


@dataclass(frozen=True)
class Case:
    body: str
    says: tuple[str, ...]  # fragments the error line must hold, besides the file it names
    names: str = "job.toml"  # the file at fault
    setup: Callable[[Path], object] = field(default=lambda d: None)
    before_start: bool = True  # found before the run starts: nothing may be left behind
    # Found once the run has started: point it at the shared simulator, which is quicker
    # than starting the embedded one.
    needs_server: bool = False


CASES = {
    "unknown key": Case(
        _job(route='strategy = "cascade"\ntierz = ["t/cheap", "t/strong"]'),
        ("route.tierz", "unknown key"),
    ),
    "missing required key": Case(
        _job(route='model = "t/cheap"'), ("route.strategy", "required key is missing")
    ),
    "wrong type": Case(
        _job(run_extra='max_attempts = "many"'), ("run.max_attempts", "valid integer")
    ),
    "wrong type: a string for a list": Case(
        _job(route='strategy = "cascade"\ntiers = "t/cheap"'), ("route.tiers", "tuple")
    ),
    "template attribute access": Case(
        _job(input_extra='id = "task_id"\nprompt = "Label: {text.__class__}"'),
        ("input", "{text.__class__}", "not a plain column name"),
    ),
    "template indexing": Case(
        _job(input_extra='id = "task_id"\nprompt = "Label: {text[0]}"'),
        ("input", "{text[0]}", "not a plain column name"),
    ),
    "template column not in the data": Case(
        _job(input_extra='id = "task_id"\nprompt = "Label: {body}"'),
        ("tasks.parquet", "prompt template", "'body'", "not in the dataset", "text"),
    ),
    "missing input file": Case(
        _job(data="missing.parquet"), ("no such input file",), names="missing.parquet"
    ),
    "unsupported extension": Case(
        _job(data="tasks.json"),
        (".parquet or .csv",),
        names="tasks.json",
        setup=lambda d: (d / "tasks.json").write_text('[{"task_id": 1}]'),
    ),
    "corrupt parquet": Case(
        _job(data="bad.parquet"),
        ("cannot read the input",),
        names="bad.parquet",
        setup=lambda d: (d / "bad.parquet").write_bytes(b"PAR1" + os.urandom(200) + b"PAR1"),
    ),
    "duplicate ids": Case(
        _job(),
        ("row 2", "duplicate id 'a'", "'task_id'"),
        names="tasks.parquet",
        setup=lambda d: _frame(d / "tasks.parquet", task_id=["a", "b", "a"], text=["x"] * 3),
    ),
    "null id": Case(
        _job(),
        ("row 1", "'task_id' is null"),
        names="tasks.parquet",
        setup=lambda d: _frame(d / "tasks.parquet", task_id=["a", None, "c"], text=["x"] * 3),
    ),
    "id column missing": Case(
        _job(input_extra='id = "ticket_id"\nprompt = "Label: {text}"'),
        ("id column 'ticket_id'", "not in the dataset"),
        names="tasks.parquet",
    ),
    "invalid TOML": Case("[input\npath = 'tasks.parquet'\n", ("not valid TOML", "line 1")),
    "cascade with one tier": Case(
        _job(route='strategy = "cascade"\ntiers = ["t/cheap"]'), ("route", "two or more")
    ),
    "model without a [models] table": Case(
        _job(route=CASCADE, models='[models."t/cheap"]\nrpm = 600\n'),
        ("'t/strong'", "[models]"),
    ),
    "invalid regex": Case(
        _job(extra='[check]\ntype = "regex"\npattern = "(unclosed"\n'),
        ("check.pattern", "not a valid regular expression"),
    ),
    "api key variable unset": Case(_api_key_body(), ("endpoint.api_key_env", UNSET_VAR, "not set")),
    "input column named like an output column": Case(
        _job(),
        ("input column 'answer'", "output column"),
        names="tasks.parquet",
        setup=lambda d: _frame(
            d / "tasks.parquet", task_id=["a", "b"], text=["x", "y"], answer=["1", "2"]
        ),
    ),
}


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("batchroute: error: ")
    return lines[0]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_bad_job_or_dataset_exits_2_with_one_line_naming_the_fault(
    tmp_path: Path, case: Case, request: pytest.FixtureRequest
) -> None:
    write_tasks(tmp_path, 5)
    case.setup(tmp_path)
    body = case.body
    if case.needs_server:
        sim: SimulatorHandle = request.getfixturevalue("fresh_sim")
        body = body.replace('base_url = "embedded"', f'base_url = "{sim.base_url}"')
    job = write_job(tmp_path, body)
    env = {UNSET_VAR: ""}  # empty counts as unset, and keeps the case independent of the shell

    done = run_cli("run", job, env=env)

    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert str(tmp_path / case.names) in line
    for fragment in case.says:
        assert fragment in line
    assert done.stdout == ""
    if case.before_start:
        # Nothing was started: no output directory, no call store beside the job.
        assert not (tmp_path / "out").exists()
        assert not (tmp_path / ".batchroute").exists()


def test_a_missing_job_file_exits_2(tmp_path: Path) -> None:
    done = run_cli("run", tmp_path / "nojob.toml")
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert str(tmp_path / "nojob.toml") in line and "no such job file" in line


def test_a_bad_system_template_is_reported_as_the_system_prompt(tmp_path: Path) -> None:
    write_tasks(tmp_path, 3)
    body = _job(input_extra='id = "task_id"\nprompt = "Label: {text}"\nsystem = "Be {text!r}"')
    done = run_cli("run", write_job(tmp_path, body))
    line = _one_error_line(done.stderr)
    assert "{text!r}" in line
    assert "input.system" in line or "system prompt" in line


def test_validation_happens_before_the_embedded_simulator_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_simulator(*args: object) -> str:
        raise AssertionError("the simulator was started for a job that cannot run")

    monkeypatch.setattr(runner, "endpoint_urls", no_simulator)
    write_tasks(tmp_path, 3)
    for body in (
        _job(input_extra='id = "task_id"\nprompt = "Label: {body}"'),  # data does not fit
        _job(extra='[check]\ntype = "regex"\npattern = "[a-"\n'),  # the router cannot be built
        _api_key_body(),  # no key
    ):
        monkeypatch.delenv(UNSET_VAR, raising=False)
        assert cli.main(["run", str(write_job(tmp_path, body)), "-q"]) == 2
        assert _one_error_line(capsys.readouterr().err)


def test_a_duplicate_id_late_in_the_data_is_found_before_any_call(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    ids = [f"task-{i}" for i in range(20)]
    ids[18] = ids[1]
    _frame(tmp_path / "tasks.parquet", task_id=ids, text=[f"ticket {i}" for i in range(20)])
    body = job_text(
        base_url=fresh_sim.base_url,
        route=FIXED,
        input_extra=f"{ID_AND_PROMPT}\nbatch_rows = 2",
    )
    # One worker keeps three batches in flight, so the batch holding row 18 is read only
    # after earlier batches were answered: today the duplicate is met after those calls.
    body = body.replace("concurrency = 16", "concurrency = 1")
    done = run_cli("run", write_job(tmp_path, body))
    assert done.returncode == 2 and "duplicate id 'task-1'" in _one_error_line(done.stderr)
    requests = sum(m["requests"] for m in fresh_sim.ledger()["models"].values())
    assert requests == 0


# ---- outputs that are already there ---------------------------------------------------------


def _ready_job(tmp_path: Path, sim: SimulatorHandle) -> Path:
    write_tasks(tmp_path, 3)
    return write_job(tmp_path, job_text(base_url=sim.base_url, route=FIXED))


@pytest.mark.parametrize("which", ["results.parquet", "results.calls.parquet"])
def test_an_existing_foreign_output_is_kept_byte_for_byte_unless_forced(
    tmp_path: Path, fresh_sim: SimulatorHandle, which: str
) -> None:
    job = _ready_job(tmp_path, fresh_sim)
    occupied = tmp_path / "out" / which
    occupied.parent.mkdir()
    occupied.write_bytes(b"someone's notes, not a batchroute output\n")
    before = occupied.read_bytes()

    done = run_cli("run", job)
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert str(occupied) in line and "--force" in line
    assert occupied.read_bytes() == before
    assert sorted(p.name for p in occupied.parent.iterdir()) == [which]  # no partial files
    assert sum(m["requests"] for m in fresh_sim.ledger()["models"].values()) == 0

    if which != "results.parquet":
        return  # refusing the calls file is the point; replacing is the same code path
    done = run_cli("run", job, "--force")
    assert done.returncode == 0, done.stderr
    results = pl.read_parquet(tmp_path / "out/results.parquet")
    assert results.height == 3 and set(results["status"]) == {"ok"}
    assert occupied.read_bytes() != before


def test_an_output_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    write_tasks(tmp_path, 3)
    (tmp_path / "out/results.parquet").mkdir(parents=True)
    done = run_cli("run", write_job(tmp_path, _job()), "--force")
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert str(tmp_path / "out/results.parquet") in line and "directory" in line


# ---- load_job -------------------------------------------------------------------------------


def _write_nested_job(tmp_path: Path, *, calls: Path) -> Path:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    return write_job(
        jobs,
        f"""
        [input]
        path = "../data/tasks.parquet"
        prompt = "{{text}}"
        [output]
        path = "out/results.parquet"
        calls = "{calls}"
        [simulator]
        models = "./sim/models.toml"
        [route]
        strategy = "fixed"
        model = "m"
        """,
    )


def test_relative_paths_resolve_against_the_job_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absolute_calls = tmp_path / "abs" / "calls.parquet"
    path = _write_nested_job(tmp_path, calls=absolute_calls)
    jobs = path.parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not change what a path means

    for given in (path, Path("..") / "jobs" / "job.toml", str(path)):
        job = load_job(given)
        assert job.input.path.resolve() == tmp_path / "data" / "tasks.parquet"
        assert str(job.input.path) == os.path.normpath(job.input.path)  # no "jobs/../data"
        assert job.output.path.resolve() == jobs / "out" / "results.parquet"
        assert job.output.calls == absolute_calls  # absolute paths are kept as they are
        assert job.simulator.models is not None
        assert job.simulator.models.resolve() == jobs / "sim" / "models.toml"
        assert job.store.path is not None
        assert job.store.path.resolve() == jobs / ".batchroute" / "store.sqlite"
        assert job.source == Path(given)

    job = load_job(path)  # an absolute job path gives absolute paths throughout
    assert job.input.path == tmp_path / "data" / "tasks.parquet"
    assert job.output.path == jobs / "out" / "results.parquet"


def test_the_job_key_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write_nested_job(tmp_path, calls=tmp_path / "calls.parquet")
    monkeypatch.chdir(path.parent)
    from_its_directory = load_job("job.toml").key()
    monkeypatch.chdir(tmp_path)
    assert load_job("jobs/job.toml").key() == from_its_directory
    assert load_job(path).key() == from_its_directory


def test_the_job_key_follows_what_decides_results_not_how_fast_a_run_goes(
    tmp_path: Path,
) -> None:
    base = job_text(base_url="http://127.0.0.1:8000/v1", route=FIXED)

    def key(body: str) -> str:
        return load_job(write_job(tmp_path, body)).key()

    same = key(base)
    for pace in (
        base.replace("concurrency = 16", "concurrency = 2\ngrace_s = 1\nbudget_usd = 3"),
        base.replace("timeout_s = 5", "timeout_s = 50").replace("aiohttp", "openai"),
        base + '\n[store]\npath = "elsewhere.sqlite"\n',
    ):
        assert key(pace) == same
    for result in (
        base.replace("Label: {text}", "Tag: {text}"),
        base.replace("t/cheap", "t/strong"),
        base.replace("out/results.parquet", "out/other.parquet"),
        base.replace("127.0.0.1:8000", "127.0.0.1:8001"),
    ):
        assert key(result) != same


def test_rerunning_the_same_job_from_another_directory_replaces_its_own_output(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    _ready_job(jobs, fresh_sim)
    assert run_cli("run", "job.toml", cwd=jobs).returncode == 0
    done = run_cli("run", "jobs/job.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_the_default_calls_path_sits_beside_the_anchored_results(tmp_path: Path) -> None:
    path = write_job(
        tmp_path,
        """
        [input]
        path = "tasks.csv"
        prompt = "{text}"
        [output]
        path = "out/run1.parquet"
        [route]
        strategy = "fixed"
        model = "m"
        """,
    )
    job = load_job(str(path))
    assert job.output.calls_path == tmp_path / "out" / "run1.calls.parquet"
    assert job.input.path == tmp_path / "tasks.csv"


def test_an_unreachable_endpoint_is_one_line_before_any_row(tmp_path: Path) -> None:
    write_tasks(tmp_path, 50)
    closed = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
    done = run_cli("run", write_job(tmp_path, job_text(base_url=closed, route=FIXED)))
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert "endpoint.base_url: cannot reach" in line and "127.0.0.1:9" in line
    assert not (tmp_path / "out" / "results.parquet").exists()
