"""Test helpers: simulator model tables, datasets and job files on disk, the real CLI."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl

from batchroute.sim.answers import Draw, draw

SIM_SEED = 1  # the seed of the shared test simulator (conftest.py)
SKILLS = {"t/cheap": 0.3, "t/strong": 0.97}

# Test models: latency 0 so tests are fast; each failure mode on its own model.
SIM_MODELS = """
balance_usd = 1000.0

[models."t/cheap"]
usd_per_mtok = { input = 0.2, output = 0.8 }
latency_ms = { mean = 0, jitter = 0 }
skill = 0.3

[models."t/strong"]
usd_per_mtok = { input = 4.0, output = 20.0 }
latency_ms = { mean = 0, jitter = 0 }
skill = 0.97

[models."t/broken"]
usd_per_mtok = { input = 1.0, output = 1.0 }
errors = { "500" = 1.0 }

[models."t/hangs"]
usd_per_mtok = { input = 1.0, output = 1.0 }
errors = { hang = 1.0 }
hang_s = 30

[models."t/throttled"]
usd_per_mtok = { input = 0.5, output = 0.5 }
latency_ms = { mean = 0, jitter = 0 }
errors = { "429" = 0.5 }
"""


def write_sim_models(directory: Path, text: str = SIM_MODELS) -> Path:
    path = directory / "sim_models.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def make_tasks(n: int, *, with_id: bool = True) -> pl.DataFrame:
    columns: dict[str, list[object]] = {
        "task_type": [("classify", "extract", "summarize")[i % 3] for i in range(n)],
        "text": [f"Ticket number {i}: the parcel arrived damaged, box {i * 7}." for i in range(n)],
    }
    if with_id:
        columns = {"task_id": [f"task-{i:04d}" for i in range(n)], **columns}
    return pl.DataFrame(columns)


def write_tasks(
    directory: Path, n: int, *, name: str = "tasks.parquet", with_id: bool = True
) -> Path:
    path = directory / name
    frame = make_tasks(n, with_id=with_id)
    if path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return path


def write_job(directory: Path, body: str, *, name: str = "job.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def job_text(
    *,
    base_url: str,
    data: str = "tasks.parquet",
    route: str,
    models: str = "",
    extra: str = "",
    input_extra: str = 'id = "task_id"\nprompt = "Label: {text}"',
    run_extra: str = "",
    transport: str = "aiohttp",
) -> str:
    """A complete job file; tests pass the parts they care about."""
    return (
        f'[input]\npath = "{data}"\n{input_extra}\n\n'
        f'[output]\npath = "out/results.parquet"\n\n'
        f'[endpoint]\nbase_url = "{base_url}"\ntimeout_s = 5\ntransport = "{transport}"\n\n'
        f"{textwrap.dedent(models)}\n[route]\n{textwrap.dedent(route)}\n"
        f"[run]\nconcurrency = 16\nbackoff_base_s = 0.05\n{textwrap.dedent(run_extra)}\n"
        f"{textwrap.dedent(extra)}"
    )


def run_cli(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """The real `batchroute` command in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "batchroute", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sim_draw(prompt: str, model: str) -> Draw:
    """What the shared test simulator answers `model` for the user message `prompt`."""
    return draw(prompt, model=model, skill=SKILLS[model], seed=SIM_SEED)


# --- a run in the background, stopped at a chosen point (kill -9, a second run, a lower
# concurrency): it is watched through the call store it commits to.


def stored_calls(store: Path) -> int:
    """How many calls the store at `store` holds; 0 before the run has created it."""
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT count(*) FROM calls").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not created yet
        return 0


def start_run(job: Path) -> subprocess.Popen[str]:
    """`batchroute run JOB -q` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchroute", "run", str(job), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_calls(store: Path, count: int, process: subprocess.Popen[str]) -> None:
    """Until the running `process` has committed `count` calls; fails if it ends first."""
    deadline = time.monotonic() + 60
    while stored_calls(store) < count:
        assert process.poll() is None, "the run ended before the point it was to stop at"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.01)


def wait_for_batch_id(store: Path, process: subprocess.Popen[str], *, timeout: float = 60) -> str:
    """Until the running `process` has recorded its batch's id in the store; the id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if store.exists():
            try:
                with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
                    row = db.execute(
                        "SELECT batch_id FROM batch_files WHERE batch_id IS NOT NULL"
                    ).fetchone()
            except sqlite3.OperationalError:  # the table is not created yet
                row = None
            if row is not None:
                return str(row[0])
        time.sleep(0.02)
    raise AssertionError(f"the run recorded no batch within {timeout:g} s")


# --- replayed outcomes for tune's learned router: only the words tell easy from hard.

LEARNED_TOPICS = ("rivers", "planets", "poems", "bridges", "insects", "markets")


def write_easy_hard_table(path: Path, *, rows: int, with_level: bool = False) -> pl.DataFrame:
    """A replay table: the cheap model `a` gets the easy half right and 20% of the hard half,
    the dear `b` everything; the prompt's words (and `level`, when asked for) tell them apart."""
    rng = random.Random(5)
    easy = [i % 2 == 0 for i in range(rows)]
    columns: dict[str, list[object]] = {"item": [f"q{i}" for i in range(rows)]}
    if with_level:
        columns["level"] = ["easy" if e else "hard" for e in easy]
    columns["prompt"] = [
        f"Question {i} ({'a simple warm-up' if e else 'a tricky proof'}) on"
        f" {LEARNED_TOPICS[i % len(LEARNED_TOPICS)]}: what follows?"
        for i, e in enumerate(easy)
    ]
    columns |= {
        "a__correct": [e or rng.random() < 0.2 for e in easy],
        "a__input_tokens": [50] * rows,
        "a__output_tokens": [1] * rows,
        "a__cost_usd": [0.0001] * rows,
        "b__correct": [True] * rows,
        "b__input_tokens": [50] * rows,
        "b__output_tokens": [1] * rows,
        "b__cost_usd": [0.002] * rows,
    }
    frame = pl.DataFrame(columns)
    frame.write_parquet(path)
    return frame


def ray_job(
    directory: Path,
    *,
    model: str,
    run: str,
    base_url: str = "embedded",
    models: Path | None = None,
    model_settings: str = "",
    batch_rows: int = 20,
    extra: str = "",
) -> Path:
    """A job routing every row of `directory`'s tasks to `model` at `base_url` (the embedded
    simulator with the model table `models`, else its built-in one), run on Ray with the
    `[run]` lines, then `extra`."""
    table = f'[simulator]\nmodels = "{models.name}"\n' if models is not None else ""
    settings = f'[models."{model}"]\n{model_settings}\n' if model_settings else ""
    job = directory / "job.toml"
    job.write_text(
        textwrap.dedent(
            f"""
            [input]
            path = "tasks.parquet"
            id = "task_id"
            prompt = "Label: {{text}}"
            batch_rows = {batch_rows}
            [output]
            path = "out/results.parquet"
            [endpoint]
            base_url = "{base_url}"
            """
        )
        + table
        + settings
        + f'[route]\nstrategy = "fixed"\nmodel = "{model}"\n[run]\nengine = "ray"\n{run}\n'
        + extra,
        encoding="utf-8",
    )
    return job
