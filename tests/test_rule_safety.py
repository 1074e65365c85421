"""A rule reads the row's own columns and nothing else: no files, no subqueries, no tables."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from helpers import job_text, run_cli, write_job, write_tasks

from batchroute import read_results
from batchroute.rules import Predicate, PredicateError
from batchroute.sim import SimulatorHandle

pytestmark = pytest.mark.timeout(120)

SECRET = "SECRET-MARKER-41"


@pytest.fixture
def secret_files(tmp_path: Path) -> Path:
    """A CSV and a Parquet file that a rule must never read."""
    pl.DataFrame({"column_1": [SECRET]}).write_csv(tmp_path / "secret.csv", include_header=False)
    pl.DataFrame({"column_1": [SECRET]}).write_parquet(tmp_path / "secret.parquet")
    return tmp_path


READS_OUTSIDE = [
    "text IN (SELECT column_1 FROM read_csv('{dir}/secret.csv'))",
    "text IN (SELECT * FROM read_parquet('{dir}/secret.parquet'))",
    "text = (SELECT max(column_1) FROM read_csv('{dir}/secret.csv'))",
    "EXISTS (SELECT 1)",
    "text IN (VALUES ('a'), ('b'))",
    "read_csv('{dir}/secret.csv') IS NOT NULL",
    "READ_PARQUET ('{dir}/secret.parquet') IS NULL",
    "\"read_csv\"('{dir}/secret.csv') IS NULL",
    "length(text) > avg(length(text))",  # an aggregate reads the other rows of the batch
    "text = 'x' -- AND read_csv('{dir}/secret.csv')",
    "text = $$x$$",
    "task_type = 'a'; SELECT 1",
]


@pytest.mark.parametrize("when", READS_OUTSIDE)
def test_a_rule_that_reads_outside_the_row_is_refused_before_polars_sees_it(
    when: str, secret_files: Path
) -> None:
    with pytest.raises(PredicateError, match="is not allowed") as caught:
        Predicate.parse(when.format(dir=secret_files))
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "when",
    [
        "task_type = 'select' AND text LIKE '%from read_csv(%'",  # words in strings are text
        "lower(task_type) IN ('classify', 'extract') AND length(text) < 4000",
        "coalesce(task_type, '') <> 'x' AND NOT (text ILIKE '%crash%')",
        "CAST(length(text) AS DOUBLE) / 2 > 1 AND substr(text, 1, 6) = 'Ticket'",
        "task_type IS DISTINCT FROM 'summarize'",
        "text = 'it''s' OR text = 'back\\slash'",
    ],
)
def test_rules_over_the_row_still_parse(when: str) -> None:
    schema = {"task_type": pl.String(), "text": pl.String()}
    Predicate.parse(when).check(schema)


def test_the_cli_refuses_a_file_reading_rule_in_one_line_before_any_call(
    tmp_path: Path, fresh_sim: SimulatorHandle, secret_files: Path
) -> None:
    write_tasks(tmp_path, 6)
    when = f"text IN (SELECT column_1 FROM read_csv('{secret_files}/secret.csv'))"
    route = f"""
        strategy = "rules"
        default = "t/cheap"
        [[route.rules]]
        name = "peek"
        when = "{when}"
        target = "t/strong"
    """
    done = run_cli("run", write_job(tmp_path, job_text(base_url=fresh_sim.base_url, route=route)))
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "job.toml: route.rules: rule 1 ('peek')" in line
    assert "SELECT is not allowed" in line
    assert SECRET not in done.stderr + done.stdout
    assert sum(m["requests"] for m in fresh_sim.ledger()["models"].values()) == 0


def test_a_normal_rule_still_routes_rows(tmp_path: Path, fresh_sim: SimulatorHandle) -> None:
    write_tasks(tmp_path, 9)
    route = """
        strategy = "rules"
        default = "t/cheap"
        [[route.rules]]
        name = "long summaries"
        when = "task_type = 'summarize' AND length(text) >= 10"
        target = "t/strong"
    """
    done = run_cli("run", write_job(tmp_path, job_text(base_url=fresh_sim.base_url, route=route)))
    assert done.returncode == 0, done.stderr
    results = read_results(tmp_path / "out/results.parquet")
    strong = results.filter(pl.col("model") == "t/strong")["task_type"].to_list()
    assert strong == ["summarize"] * 3 and results.height == 9
