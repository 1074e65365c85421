"""`compare` against figures computed by hand on three small runs (tests/run_fixtures.py).

Rows r1-r4, truth billing, refund, bug, other.

cheap:   all on m/cheap, $0.001 each: total 0.004, $/row 0.001; right r1 r2: accuracy 0.5;
         latency 0.1 0.2 0.3 0.4: p50 0.25, p95 0.385 (linear).
top:     all on m/top, $0.010 0.012 0.014 0.016: total 0.052; right r1-r3: accuracy 0.75.
cascade: r1 m/cheap (cached), r2 m/cheap, r3 m/cheap then m/top 0.014, r4 m/cheap, m/top
         failing, fallback m/mid 0.005: total 4 x 0.001 + 0.014 + 0.005 = 0.023, cached 0.001,
         new 0.022, $/row 0.00575; escalated 2/4, fallback 1/4; row latencies 0.1 0.2 3.3 1.9:
         p50 1.05, p95 3.09; mix m/cheap 0.5, m/top 0.25, m/mid 0.25; right r1-r3: 0.75.
top tier: mean charge per answer call m/top 0.0132 > m/mid 0.005 > m/cheap 0.001.
baseline: every row measured in `top`: 0.052 for each run; saving = 1 - total / 0.052.
kept: accuracy / 0.75 (the `top` run put every row on m/top).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import polars as pl
import pytest
from helpers import run_cli
from run_fixtures import TRUTH, Row, call, cascade_run, cheap_run, top_run, write_run

import batchroute
from batchroute.compare_format import render
from batchroute.comparison import compare_runs
from batchroute.errors import ConfigError, DatasetError
from batchroute.runs import read_run, read_runs
from batchroute.truth import Truth, load_scorer, normalize_answer, truth_from_options

APPROX = pytest.approx


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [cheap_run(tmp_path), top_run(tmp_path), cascade_run(tmp_path)]


def by_run(frame: pl.DataFrame) -> dict[str, dict[str, object]]:
    return {row["run"]: row for row in frame.iter_rows(named=True)}


def test_figures_match_hand_computed_values(runs: list[Path]) -> None:
    table = by_run(batchroute.compare(runs, truth="expected"))
    cheap, top, cascade = table["cheap"], table["top"], table["cascade"]

    assert (cheap["rows"], cheap["ok"], cheap["failed"], cheap["skipped"]) == (4, 4, 0, 0)
    assert cheap["total_usd"] == APPROX(0.004)
    assert cheap["cost_per_row_usd"] == APPROX(0.001)
    assert (cheap["latency_p50_s"], cheap["latency_p95_s"]) == (APPROX(0.25), APPROX(0.385))
    assert cheap["accuracy"] == APPROX(0.5)
    assert cheap["accuracy_kept"] == APPROX(0.5 / 0.75)
    assert cheap["saving"] == APPROX(1 - 0.004 / 0.052)

    assert top["total_usd"] == APPROX(0.052)
    assert top["saving"] == APPROX(0.0)
    assert top["accuracy"] == APPROX(0.75)
    assert top["accuracy_kept"] == APPROX(1.0)

    assert cascade["strategy"] == "cascade"
    assert cascade["plans"] == [{"name": "cascade:m/cheap>m/top", "share": 1.0}]
    assert cascade["calls"] == 7
    assert cascade["escalation_rate"] == APPROX(0.5)
    assert cascade["fallback_rate"] == APPROX(0.25)
    assert cascade["total_usd"] == APPROX(0.023)
    assert cascade["cached_usd"] == APPROX(0.001)
    assert cascade["new_spend_usd"] == APPROX(0.022)
    assert cascade["cost_per_row_usd"] == APPROX(0.00575)
    assert (cascade["latency_p50_s"], cascade["latency_p95_s"]) == (APPROX(1.05), APPROX(3.09))
    assert cascade["model_mix"] == [
        {"name": "m/cheap", "share": 0.5},
        {"name": "m/mid", "share": 0.25},
        {"name": "m/top", "share": 0.25},
    ]
    assert cascade["baseline_usd"] == APPROX(0.052)
    assert cascade["baseline_measured"] == APPROX(1.0)
    assert cascade["saving"] == APPROX(1 - 0.023 / 0.052)
    assert cascade["accuracy"] == APPROX(0.75)
    assert cascade["accuracy_kept"] == APPROX(1.0)


def test_baseline_priced_when_the_top_tier_did_not_answer_a_row(tmp_path: Path) -> None:
    """Without `top`, only r3 has an m/top call (0.014); the other three rows are priced at
    m/top's $10/$30 per Mtok for their first call's 100 + 10 tokens: 0.0013 each."""
    paths = [cheap_run(tmp_path), cascade_run(tmp_path)]
    comparison = compare_runs([read_run(p) for p in paths])
    cascade = by_run(comparison.frame)["cascade"]
    assert comparison.top_tier == "m/top"
    assert cascade["baseline_usd"] == APPROX(0.014 + 3 * 0.0013)
    assert cascade["baseline_measured"] == APPROX(0.25)
    assert cascade["accuracy"] is None and cascade["accuracy_kept"] is None
    assert any("25% of rows" in note for note in comparison.notes)


def test_baseline_without_prices_uses_the_mean_charge(tmp_path: Path) -> None:
    paths = [cascade_run(tmp_path, prices=False)]
    cascade = by_run(batchroute.compare(paths))["cascade"]
    assert cascade["baseline_usd"] == APPROX(4 * 0.014)


def test_top_tier_can_be_named(runs: list[Path]) -> None:
    comparison = compare_runs([read_run(p) for p in runs], top_tier="m/mid")
    assert comparison.top_tier == "m/mid"
    # m/mid answered r4 only (0.005): the other rows cost its mean charge, 0.005 as well.
    assert by_run(comparison.frame)["top"]["baseline_usd"] == APPROX(0.02)


def test_skipped_rows_are_left_out_of_rates_and_accuracy(tmp_path: Path) -> None:
    rows = [
        Row("r1", "billing", "m/cheap", [call("m/cheap", 0.002, 0.1)]),
        Row("r2", "nope", "m/cheap", [call("m/cheap", 0.002, 0.1)], escalated=True),
        Row("r3", None, None, [call("m/cheap", None, 0.1)], status="failed"),
        Row("r4", None, None, [], status="skipped"),
    ]
    path = write_run(tmp_path, "partial", rows, strategy="fixed", plan="p", truth=TRUTH)
    row = by_run(batchroute.compare([path], truth="expected"))["partial"]
    assert (row["ok"], row["failed"], row["skipped"]) == (2, 1, 1)
    assert row["cost_per_row_usd"] == APPROX(0.004 / 3)
    assert row["escalation_rate"] == APPROX(1 / 3)
    assert row["accuracy"] == APPROX(1 / 3)  # the failed row counts as wrong
    assert row["model_mix"] == [{"name": "m/cheap", "share": 1.0}]


def test_truth_at_a_json_path_and_by_a_scorer_file(tmp_path: Path) -> None:
    rows = [
        Row("r1", '{"answer": "Billing"}', "m", [call("m", 0.001, 0.1)]),
        Row("r2", '{"answer": "bug"}', "m", [call("m", 0.001, 0.1)]),
        Row("r3", "not json", "m", [call("m", 0.001, 0.1)]),
        Row("r4", '{"label": "other"}', "m", [call("m", 0.001, 0.1)]),
    ]
    path = write_run(tmp_path, "json", rows, strategy="fixed", plan="p", truth=TRUTH)
    frame = batchroute.compare([path], truth="expected", answer_path="answer")
    assert frame["accuracy"][0] == APPROX(0.25)

    scorer = tmp_path / "score.py"
    scorer.write_text("def first_row(row, answer):\n    return row['row_id'] == 'r1', 'why'\n")
    truth = Truth.of(load_scorer(f"{scorer}:first_row"))
    comparison = compare_runs([read_run(path)], truth=truth)
    assert comparison.frame["accuracy"][0] == APPROX(0.25)


def test_normalisation_of_labels() -> None:
    assert normalize_answer(' "Billing." ') == normalize_answer("**BILLING**") == "billing"
    assert normalize_answer("Out  of\tstock!") == "out of stock"


def test_runs_over_different_rows_are_refused_unless_allowed(tmp_path: Path) -> None:
    cheap = cheap_run(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    rows = [Row("x1", "billing", "m/cheap", [call("m/cheap", 0.001, 0.1)])]
    odd = write_run(
        other,
        "odd",
        rows,
        strategy="fixed",
        plan="p",
        truth={"x1": "billing"},
        input_path="data/other.parquet",
    )
    with pytest.raises(DatasetError, match="different datasets.*--allow-mixed"):
        batchroute.compare([cheap, odd])
    frame = batchroute.compare([cheap, odd], allow_mixed=True)
    assert frame["dataset"].to_list() == ["data/tasks.parquet", "data/other.parquet"]

    result = run_cli("compare", cheap, odd)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--allow-mixed" in lines[0]
    assert run_cli("compare", cheap, odd, "--allow-mixed").returncode == 0


def test_read_run_joins_results_with_calls_and_metadata(runs: list[Path]) -> None:
    run = batchroute.read_run(runs[2])
    assert run.name == "cascade" and run.strategy == "cascade"
    assert run.metadata["run_id"] == "run-cascade"
    assert run.results.height == 4 and run.calls.height == 7
    joined = run.results_with_calls()
    calls = dict(zip(joined["row_id"], joined["call_records"].list.len(), strict=True))
    assert calls == {"r1": 1, "r2": 1, "r3": 2, "r4": 3}


def test_bad_run_files_are_one_line_errors(tmp_path: Path, runs: list[Path]) -> None:
    with pytest.raises(DatasetError, match="no such results file"):
        read_run(tmp_path / "missing.parquet")
    plain = tmp_path / "plain.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(plain)
    with pytest.raises(DatasetError, match="not a batchroute results file"):
        read_run(plain)
    with pytest.raises(DatasetError, match="calls file"):
        read_run(tmp_path / "cascade.calls.parquet")
    # A glob hands both files of a run: the calls file is skipped, not an error.
    plain.unlink()
    assert [r.name for r in read_runs(sorted(tmp_path.glob("*.parquet")))] == [
        "cascade",
        "cheap",
        "top",
    ]
    with pytest.raises(ConfigError, match="not both"):
        truth_from_options("expected", scorer="m:f", answer_path=None)


def test_formats(runs: list[Path]) -> None:
    comparison = compare_runs([read_run(p) for p in runs], truth=Truth.of("expected"))

    table = render(comparison, fmt="table").splitlines()
    assert table[0].split()[:3] == ["run", "strategy", "plan"]
    assert set(table[1]) <= {"-", " "}
    cascade = next(line for line in table if line.startswith("cascade"))
    assert "50.0%" in cascade and "25.0%" in cascade and "5.7500" in cascade  # $/1k rows
    assert "m/cheap 50.0%, m/mid 25.0%, m/top 25.0%" in cascade
    assert any(line.startswith("* saving: against every row run on m/top") for line in table)

    records = list(csv.DictReader(io.StringIO(render(comparison, fmt="csv"))))
    assert [r["run"] for r in records] == ["cheap", "top", "cascade"]
    assert float(records[2]["total_usd"]) == APPROX(0.023)
    assert records[2]["model_mix"] == "m/cheap=0.5;m/mid=0.25;m/top=0.25"

    document = json.loads(render(comparison, fmt="json"))
    assert document["top_tier"] == "m/top" and len(document["notes"]) == 3
    assert document["runs"][2]["saving"] == APPROX(1 - 0.023 / 0.052)

    markdown = render(comparison, fmt="markdown").splitlines()
    assert markdown[0].startswith("| run | strategy | plan |")
    assert markdown[1].startswith("|---|---|---|---:|")
    assert len([line for line in markdown if line.startswith("| ")]) == 4


def test_cli_compare_with_a_scorer_and_a_plot(tmp_path: Path, runs: list[Path]) -> None:
    scorer = tmp_path / "scoring.py"
    scorer.write_text(
        "def right(row, answer):\n    return answer.strip(' .').lower() == row['expected'], None\n"
    )
    plot = tmp_path / "plot.png"
    options: list[str | Path] = ["--truth-scorer", f"{scorer}:right", "--format", "json"]
    options += ["--plot", plot]
    result = run_cli("compare", *runs, *options)
    assert result.returncode == 0, result.stderr
    figures = {r["run"]: r for r in json.loads(result.stdout)["runs"]}
    assert figures["cheap"]["accuracy"] == APPROX(0.5)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 20_000

    bad = run_cli("compare", *runs, "--truth-scorer", "no_such_module:f")
    assert bad.returncode == 2 and "cannot import 'no_such_module'" in bad.stderr
    missing = run_cli("compare", *runs, "--truth", "nope")
    assert missing.returncode == 2 and "no column 'nope'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
