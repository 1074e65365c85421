"""`tune --from-runs`: earlier runs' outcomes (a cascade's escalations, shadow sampling's
verdicts) train the learned router too, never count a row twice, and a run of another dataset
or job is a one-line refusal (replayed outcomes on the simulator)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import polars as pl
from helpers import run_cli, write_easy_hard_table, write_job

from batchroute import read_results

ROWS, SAMPLE = 600, 300
SCORER = "batchroute.sim.replay:recorded_correct"


def _job(*, data: str = "table.parquet", output: str, route: str, check: bool) -> str:
    # A replayed answer without text is JSON carrying its recorded label: the regex check
    # passes exactly the right answers, so an escalation says the cheap answer was wrong.
    check_table = '\n[check]\ntype = "regex"\npattern = "\\"correct\\": true"\n' if check else ""
    return f"""
[input]
path = "{data}"
id = "item"
prompt = "{{prompt}}"

[output]
path = "{output}"

[endpoint]
base_url = "embedded"

[simulator]
replay = "table.parquet"

[models.a]
usd_per_mtok = {{ input = 1.0, output = 1.0 }}

[models.b]
usd_per_mtok = {{ input = 40.0, output = 40.0 }}

[route]
{route}
{check_table}"""


CASCADE = 'strategy = "cascade"\ntiers = ["a", "b"]'
# The hard rows go straight to `b`; shadow sampling also asks `a` on every one of them.
SHADOWED = """strategy = "rules"
default = "a"
shadow_rate = 1.0
shadow_model = "a"

[[route.rules]]
when = "level = 'hard'"
target = "b"
"""


def _tune(tmp_path: Path, job: Path, *runs: str | Path) -> tuple[int, str, str]:
    args: list[str | Path] = []
    for run in runs:
        args += [run] if str(run).startswith("--") else ["--from-runs", run]
    done = run_cli(
        "tune", job, "--truth-scorer", SCORER, "--sample", str(SAMPLE),
        "--target-kept", "0.95", "-o", tmp_path / "job.tuned.toml", "--force", *args,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def test_earlier_runs_train_the_router_once_per_row_outside_the_sample(tmp_path: Path) -> None:
    frame = write_easy_hard_table(tmp_path / "table.parquet", rows=ROWS, with_level=True)
    cascade = write_job(
        tmp_path, _job(output="out/cascade.parquet", route=CASCADE, check=True), name="c.toml"
    )
    shadowed = write_job(
        tmp_path, _job(output="out/shadow.parquet", route=SHADOWED, check=True), name="s.toml"
    )
    for job in (cascade, shadowed):
        ran = run_cli("run", "-q", job)
        assert ran.returncode == 0, ran.stderr
    earlier = read_results(tmp_path / "out/cascade.parquet")
    assert earlier["escalated"].sum() > 100  # the cheap tier failed its check on hard rows
    shadow = read_results(tmp_path / "out/shadow.parquet")
    assert shadow["shadow_passed"].is_not_null().sum() == ROWS // 2

    # The tuned job has no check at all: only the learned router can save money.
    job = write_job(tmp_path, _job(output="out/tuned.parquet", route=CASCADE, check=False))
    code, out, err = _tune(
        tmp_path, job, tmp_path / "out/cascade.parquet", tmp_path / "out/shadow.parquet"
    )
    assert code == 0, err
    # Both runs cover all 600 rows: the 300 of the sample are left out, and the other 300
    # count once each although two runs speak of them.
    assert (
        f"tune: {ROWS - SAMPLE} examples from 2 earlier run(s) for the learned router's training"
        f" half only ({SAMPLE} rows of the sample left out; 0 verdicts by a check alone"
    ) in out, out
    assert "at most $" in out.splitlines()[0] and "earlier run(s)" in out.splitlines()[1]
    assert "chosen: learned router: a when p >= " in out, out
    router = json.loads((tmp_path / "job.tuned.router.json").read_text())
    assert router["from_runs"] == ROWS - SAMPLE
    assert router["trained_on"] == SAMPLE // 2 + ROWS - SAMPLE  # the learning half + the runs
    tuned = tomllib.loads((tmp_path / "job.tuned.toml").read_text())
    assert tuned["route"]["strategy"] == "learned"

    # The guarantee as test_tune_learned checks it: the full run of the tuned job keeps the
    # top model's accuracy (b is always right) and sends the easy rows to the cheap model.
    ran = run_cli("run", "-q", tmp_path / "job.tuned.toml")
    assert ran.returncode == 0, ran.stderr
    results = read_results(tmp_path / "out/tuned.parquet").join(
        frame.select("item", "level"), left_on="row_id", right_on="item"
    )
    right = [
        row["model"] == "b" or row["a__correct"]
        for row in results.join(frame.select("item", "a__correct"), left_on="row_id",
                                right_on="item").iter_rows(named=True)
    ]  # fmt: skip
    assert sum(right) / ROWS >= 0.95
    easy, cheap = results["level"] == "easy", results["model"] == "a"
    assert (easy & cheap).sum() > 0.8 * easy.sum()
    assert (~easy & cheap).sum() < 0.2 * (~easy).sum()


def test_a_run_whose_calls_are_not_in_the_store_teaches_by_its_check_verdicts(
    tmp_path: Path,
) -> None:
    """The earlier run kept its calls in another store: the escalated rows' cheap answers
    cannot be asked again offline, so their check verdicts stand in for the truth."""
    write_easy_hard_table(tmp_path / "table.parquet", rows=ROWS, with_level=True)
    elsewhere = _job(output="out/cascade.parquet", route=CASCADE, check=True)
    made = write_job(tmp_path, elsewhere + '\n[store]\npath = "elsewhere.sqlite"\n', name="c.toml")
    ran = run_cli("run", "-q", made)
    assert ran.returncode == 0, ran.stderr
    escalated = int(read_results(tmp_path / "out/cascade.parquet")["escalated"].sum())
    job = write_job(tmp_path, _job(output="out/tuned.parquet", route=CASCADE, check=False))
    code, out, err = _tune(tmp_path, job, tmp_path / "out/cascade.parquet")
    assert code == 0, err
    found = re.search(r"left out; (\d+) verdicts by a check alone", out)
    assert found is not None, out
    # Only the escalated rows outside the sample lack a verdict by the truth (every kept
    # answer is judged from the results file itself); about half of them are outside.
    assert 0.3 * escalated < int(found.group(1)) < 0.7 * escalated
    router = json.loads((tmp_path / "job.tuned.router.json").read_text())
    assert router["from_runs"] == ROWS - SAMPLE


def test_a_run_of_another_dataset_or_job_or_no_run_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    frame = write_easy_hard_table(tmp_path / "table.parquet", rows=ROWS, with_level=True)
    # Another dataset: the same prompts (so the replay answers them) under other row ids.
    frame.head(20).with_columns(pl.format("z{}", pl.col("item")).alias("item")).write_parquet(
        tmp_path / "other.parquet"
    )
    other = write_job(
        tmp_path,
        _job(data="other.parquet", output="out/other.parquet", route=CASCADE, check=True),
        name="other.toml",
    )
    # The same row ids over another version of the text (the replay still finds the prompt
    # that the new text contains).
    frame.head(20).with_columns(
        pl.when(pl.col("item") == "q7")
        .then(pl.col("prompt") + " (v2)")
        .otherwise(pl.col("prompt"))
        .alias("prompt")
    ).write_parquet(tmp_path / "changed.parquet")
    changed = write_job(
        tmp_path,
        _job(data="changed.parquet", output="out/changed.parquet", route=CASCADE, check=True),
        name="changed.toml",
    )
    # The same dataset asked another prompt: its answers are not this job's.
    reworded = _job(output="out/reworded.parquet", route=CASCADE, check=True).replace(
        'prompt = "{prompt}"', 'prompt = "Answer: {prompt}"'
    )
    reworded_job = write_job(tmp_path, reworded, name="reworded.toml")
    for made in (other, changed, reworded_job):
        ran = run_cli("run", "-q", made)
        assert ran.returncode == 0, ran.stderr
    job = write_job(tmp_path, _job(output="out/tuned.parquet", route=CASCADE, check=False))
    cases = [
        (tmp_path / "out/other.parquet", "a run of another dataset: 20 of its 20 row ids"),
        (tmp_path / "out/changed.parquet", "another dataset: 1 of its rows (first: row q7)"),
        (tmp_path / "out/reworded.parquet", "a run of another job: its input.prompt differs"),
        (tmp_path / "out/reworded.calls.parquet", "this is a calls file"),
        (tmp_path / "out/missing.parquet", "no such results file"),
    ]
    for path, message in cases:
        code, out, err = _tune(tmp_path, job, path)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1, err
        assert str(path) in err and message in err, err
        assert "answers cost" not in out  # refused before the sample was paid for
    code, out, err = _tune(tmp_path, job, tmp_path / "out/other.parquet", "--no-learned")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--from-runs trains the learned router: it does not go with --no-learned" in err
    assert not (tmp_path / "job.tuned.toml").exists()
