"""Rules learned from a low-cardinality column, the stratified sample, and the textual rewrite
of the job file."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import tomllib
from pathlib import Path

import polars as pl
from helpers import run_cli, write_job

from batchroute import read_results
from batchroute.job import load_job
from batchroute.tune.sample import draw_sample
from batchroute.tune.writer import replace_tables

ROWS = 800
KINDS = ("billing", "refund", "shipping", "legal")  # the cheap model fails on "legal" only


def _table(path: Path) -> None:
    rng = random.Random(3)
    kinds = [KINDS[i % len(KINDS)] for i in range(ROWS)]
    pl.DataFrame(
        {
            "item": [f"q{i}" for i in range(ROWS)],
            "kind": kinds,
            "prompt": [f"Ticket {i}: {rng.random():.6f}" for i in range(ROWS)],
            "a__correct": [k != "legal" or rng.random() < 0.3 for k in kinds],
            "a__cost_usd": [0.0001] * ROWS,
            "b__correct": [True] * ROWS,
            "b__cost_usd": [0.002] * ROWS,
        }
    ).write_parquet(path)


JOB = """
[input]
path = "table.parquet"
id = "item"
prompt = "{prompt}"

[output]
path = "out/rules.parquet"

[endpoint]
base_url = "embedded"

[simulator]
replay = "table.parquet"

[route]
strategy = "cascade"
tiers = ["a", "b"]
"""


def _stored_calls(directory: Path) -> int:
    with contextlib.closing(sqlite3.connect(directory / ".batchroute" / "store.sqlite")) as db:
        return int(db.execute("SELECT count(*) FROM calls").fetchone()[0])


def test_tune_learns_which_values_of_a_column_the_cheap_model_can_take(tmp_path: Path) -> None:
    _table(tmp_path / "table.parquet")
    job = write_job(tmp_path, JOB)
    tuned = tmp_path / "job.tuned.toml"
    done = run_cli(
        "tune", job, "--truth-scorer", "batchroute.sim.replay:recorded_correct",
        "--sample", "400", "--target-kept", "0.95", "--rules-on", "kind", "--no-learned",
        "--stratify", "kind", "-o", tuned,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "chosen: rules: 3 kind value(s) to a, the rest to b" in done.stdout, done.stdout
    route = tomllib.loads(tuned.read_text())["route"]
    assert route["strategy"] == "rules" and route["default"] == "b"
    assert route["rules"][0]["target"] == "a"
    assert "'legal'" not in route["rules"][0]["when"]

    ran = run_cli("run", "-q", tuned)
    assert ran.returncode == 0, ran.stderr
    results = read_results(tmp_path / "out/rules.parquet")
    legal = results["kind"] == "legal"
    assert (results.filter(legal)["model"] == "b").all()
    assert (results.filter(~legal)["model"] == "a").all()

    calls = _stored_calls(tmp_path)
    bad = run_cli(
        "tune", job, "--truth-scorer", "batchroute.sim.replay:recorded_correct", "--sample",
        "100", "--target-kept", "0.95", "--rules-on", "prompt", "-o", tmp_path / "x.toml",
        "--seed", "9",
    )  # fmt: skip
    assert bad.returncode == 2 and "--rules-on prompt: 100 distinct values" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert _stored_calls(tmp_path) == calls  # checked before any call was made


def test_a_stratified_sample_keeps_each_value_in_proportion(tmp_path: Path) -> None:
    _table(tmp_path / "table.parquet")
    job = load_job(write_job(tmp_path, JOB))
    sample = draw_sample(job, size=101, seed=4, stratify="kind")
    counts = sample.frame["kind"].value_counts().sort("kind")["count"].to_list()
    assert sorted(counts) == [25, 25, 25, 26] and sample.total_rows == ROWS
    again = draw_sample(job, size=101, seed=4, stratify="kind")
    assert again.frame["item"].to_list() == sample.frame["item"].to_list()
    other = draw_sample(job, size=101, seed=5, stratify=None)
    assert other.frame["item"].to_list() != sample.frame["item"].to_list()


ORIGINAL = '''# My job.
[input]
path = "t.parquet"
prompt = """Answer this.
[route]
not a table: inside a string
"""

# How to route: a guess.
[route]
strategy = "cascade"
tiers = ["a", "b"]

[plans.strict]
tiers = ["b"]

# The params stay.
[params]
max_tokens = 5  # short

[[check]]
type = "regex"
pattern = "x"

[[check]]
type = "min_length"
chars = 1
# Run settings follow.
[run]
concurrency = 4
'''


def test_the_rewrite_replaces_route_plans_and_check_and_keeps_the_rest() -> None:
    new = '[route]\nstrategy = "fixed"\nmodel = "a"\n'
    text = replace_tables(ORIGINAL, new_tables=new)
    assert text == (
        '# My job.\n[input]\npath = "t.parquet"\nprompt = """Answer this.\n[route]\n'
        'not a table: inside a string\n"""\n\n'
        '[route]\nstrategy = "fixed"\nmodel = "a"\n\n'
        "# The params stay.\n[params]\nmax_tokens = 5  # short\n\n"
        "# Run settings follow.\n[run]\nconcurrency = 4\n"
    )
    assert tomllib.loads(text)["input"]["prompt"].startswith("Answer this.\n[route]")
