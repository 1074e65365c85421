"""`batchroute tune` end to end through the CLI on the simulator: the sample is paid once,
the tuned job is the cheapest route that holds the target, and mistakes are one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import polars as pl
from helpers import job_text, run_cli, write_job, write_tasks

from batchroute import load_job, read_calls, read_results
from batchroute.sim import SimulatorHandle, expected_answer

MODELS = """
[models."t/cheap"]
usd_per_mtok = { input = 0.2, output = 0.8 }
[models."t/strong"]
usd_per_mtok = { input = 4.0, output = 20.0 }
"""
CASCADE = 'strategy = "cascade"\ntiers = ["t/cheap", "t/strong"]'
EXTRA = """
[params]
max_tokens = 50
response_format = { type = "json_object" }

# The answer must be JSON with a label.
[check]
type = "json_schema"
schema = { type = "object", required = ["answer"] }
"""
ROWS = 400


def _labelled(tmp_path: Path, rows: int = ROWS) -> Path:
    """Tasks with the simulator's right answer in `expected` (prompt "Label: {text}")."""
    path = write_tasks(tmp_path, rows)
    frame = pl.read_parquet(path)
    expected = [expected_answer(f"Label: {text}") for text in frame["text"].to_list()]
    frame.with_columns(pl.Series("expected", expected)).write_parquet(path)
    return path


def _job(tmp_path: Path, sim: SimulatorHandle) -> Path:
    _labelled(tmp_path)
    body = job_text(base_url=sim.base_url, route=CASCADE, models=MODELS, extra=EXTRA)
    return write_job(tmp_path, "# The job's own comment stays.\n" + body)


def test_tune_finds_the_confidence_cascade_and_the_full_run_reuses_the_sample(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    job_path = _job(tmp_path, fresh_sim)
    tuned = tmp_path / "job.tuned.toml"
    done = run_cli(
        "tune", job_path, "--truth", "expected", "--answer-path", "answer", "--sample", "150",
        "--target-kept", "0.9", "--seed", "3", "-o", tuned,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "at most $" in done.stdout.splitlines()[0]  # the estimate comes first
    assert "chosen: t/cheap > t/strong [confidence >= " in done.stdout
    ledger = fresh_sim.ledger()["models"]
    assert ledger["t/cheap"]["requests"] == ledger["t/strong"]["requests"] == 150

    text = tuned.read_text()
    settings = tomllib.loads(text)
    assert settings["route"] == {"strategy": "cascade", "tiers": ["t/cheap", "t/strong"]}
    assert settings["check"]["type"] == "confidence" and settings["check"]["path"] == "confidence"
    assert text.startswith("# The job's own comment stays.\n")
    assert "The answer must be JSON" not in text  # the replaced check's comment went with it
    assert settings["params"]["max_tokens"] == 50 and settings["input"]["path"] == "tasks.parquet"
    assert load_job(tuned).route.strategy == "cascade"

    fresh_sim.reset()
    ran = run_cli("run", tuned)
    assert ran.returncode == 0, ran.stderr
    calls = read_calls(tmp_path / "out/results.parquet")
    first = calls.filter(pl.col("tier") == 0)
    # Every sampled row's cheap answer came from the store; only the rest were paid.
    assert first["cached"].sum() == 150
    assert fresh_sim.ledger()["models"]["t/cheap"]["requests"] == ROWS - 150
    results = read_results(tmp_path / "out/results.parquet")
    right = results.filter(pl.col("model") == "t/strong").height
    assert 0 < right < ROWS  # a real cascade: some rows kept the cheap answer


def test_tune_says_so_when_no_policy_holds_the_target(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    job_path = _job(tmp_path, fresh_sim)
    tuned = tmp_path / "job.tuned.toml"
    # Five rows cannot show 99% kept with 95% confidence, not even for the top model.
    done = run_cli(
        "tune", job_path, "--truth", "expected", "--answer-path", "answer", "--sample", "5",
        "--target-kept", "0.99", "-o", tuned,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "no policy keeps 99% of t/strong's accuracy" in done.stdout
    assert not tuned.exists()


def test_tune_mistakes_are_one_line_errors(tmp_path: Path, fresh_sim: SimulatorHandle) -> None:
    job_path = _job(tmp_path, fresh_sim)
    tuned = tmp_path / "job.tuned.toml"
    common = ["--sample", "10", "-o", tuned]
    cases = [
        (["--truth", "expected", "--target-kept", "1.5", *common], "--target-kept 1.5"),
        (["--truth", "nope", "--target-kept", "0.9", *common], "--truth nope: no such column"),
        (["--truth", "expected", "--target-kept", "0.9", "--confidence", "1", *common], "--conf"),
        (
            ["--truth", "expected", "--target-kept", "0.9", "--sample", "5", "-o", job_path],
            "that is the job file itself",
        ),
        (
            ["--truth", "expected", "--target-kept", "0.9", "--models", "t/cheap", *common],
            "two or more candidate models",
        ),
    ]
    for args, message in cases:
        done = run_cli("tune", job_path, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    tuned.write_text("# mine\n")
    done = run_cli("tune", job_path, "--truth", "expected", "--target-kept", "0.5", *common)
    assert done.returncode == 2 and "already exists; pass --force" in done.stderr
    assert tuned.read_text() == "# mine\n"  # nothing written is lost


def test_budget_caps_what_tuning_spends(tmp_path: Path, fresh_sim: SimulatorHandle) -> None:
    job_path = _job(tmp_path, fresh_sim)
    done = run_cli(
        "tune", job_path, "--truth", "expected", "--sample", "300", "--target-kept", "0.9",
        "--budget-usd", "0.001", "-o", tmp_path / "job.tuned.toml",
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "tuning stopped while t/" in done.stderr and "budget" in done.stderr
    assert fresh_sim.ledger()["total_charged_usd"] <= 0.001 + 1e-9
    assert not (tmp_path / "job.tuned.toml").exists()
