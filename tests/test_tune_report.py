"""`tune --plot` and `--report` draw the sample's frontier; the tuned job carries tune's
prediction into its run, and `compare` shows it against what the run really cost and kept.
Through the real CLI on the simulator."""

from __future__ import annotations

import json
import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest
from helpers import job_text, run_cli, write_job
from test_tune import CASCADE, EXTRA, MODELS, ROWS, _labelled

from batchroute import load_job
from batchroute.sim import SimulatorHandle
from batchroute.tune.writer import replace_tables

SVG = "{http://www.w3.org/2000/svg}"
TUNE = ["--truth", "expected", "--answer-path", "answer", "--sample", "150", "--seed", "3"]


def _job(tmp_path: Path, sim: SimulatorHandle) -> Path:
    _labelled(tmp_path)
    return write_job(
        tmp_path, job_text(base_url=sim.base_url, route=CASCADE, models=MODELS, extra=EXTRA)
    )


def _classes(element: ET.Element) -> set[str]:
    return set(element.get("class", "").split())


def _markers(svg: ET.Element) -> list[ET.Element]:
    return [c for c in svg.iter(f"{SVG}circle") if "policy" in _classes(c)]


def _said(stdout: str) -> tuple[int, str]:
    """(how many policies tune evaluated, the chosen policy's name), from what it printed."""
    count = re.search(r"Pareto front of (\d+) policies", stdout)
    chosen = re.search(r"^chosen: (.+?): keeps ", stdout, re.MULTILINE)
    assert count and chosen, stdout
    return int(count.group(1)), chosen.group(1)


def test_tune_draws_the_frontier_as_svg_and_in_an_html_report(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    job_path = _job(tmp_path, fresh_sim)
    plot, report = tmp_path / "charts/frontier.svg", tmp_path / "tune.html"
    done = run_cli(
        "tune", job_path, *TUNE, "--target-kept", "0.9", "-o", tmp_path / "job.tuned.toml",
        "--plot", plot, "--report", report,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    policies, chosen = _said(done.stdout)
    assert f"plot: {plot}" in done.stdout and f"report: {report}" in done.stdout

    svg = ET.parse(plot).getroot()  # well-formed XML, an SVG
    assert svg.tag == f"{SVG}svg" and svg.get("id") == "tune-frontier"
    markers = _markers(svg)
    assert len(markers) == policies > 10  # every policy evaluated, one marker each
    titles = [m.findtext(f"{SVG}title") or "" for m in markers]
    assert sum(t.startswith(f"{chosen}: ") for t in titles) == 1
    assert any("on-front" in _classes(m) for m in markers)
    labels = [t.text for t in svg.iter(f"{SVG}text") if "chosen-label" in _classes(t)]
    assert labels == [f"chosen: {chosen}"]
    ring = [c for c in svg.iter(f"{SVG}circle") if "chosen" in _classes(c)]
    assert len(ring) == 1
    target = [ln for ln in svg.iter(f"{SVG}line") if "target" in _classes(ln)]
    assert len(target) == 1 and target[0].get("y1") == target[0].get("y2")
    front = [p for p in svg.iter(f"{SVG}path") if "front" in _classes(p)]
    assert len(front) == 1 and front[0].get("d", "").count("L") >= 1  # the front is joined

    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in page
    inline = page[page.index('<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="tune-') :]
    inline = inline[: inline.index("</svg>") + len("</svg>")]
    assert len(_markers(ET.fromstring(inline))) == policies  # the same frontier
    assert f"<td>chosen</td><td>{chosen.replace('>', '&gt;')}</td>" in page  # the front's table
    assert "What tune printed" in page and "tuned job: " in page


def test_chart_paths_are_checked_before_anything_is_spent(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    job_path = _job(tmp_path, fresh_sim)
    tuned = tmp_path / "job.tuned.toml"
    mine = tmp_path / "mine.html"
    mine.write_text("mine", encoding="utf-8")
    cases = [
        (["--plot", tmp_path / "frontier.png"], "--plot"),
        (["--report", tmp_path / "tune.txt"], "--report"),
        (["--report", mine], "already exists; pass --force"),
    ]
    for extra, message in cases:
        done = run_cli("tune", job_path, *TUNE, "--target-kept", "0.9", "-o", tuned, *extra)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert fresh_sim.ledger()["total_charged_usd"] == 0  # nothing was spent
    assert mine.read_text(encoding="utf-8") == "mine" and not tuned.exists()


def _compare_json(*runs: Path) -> dict[str, object]:
    done = run_cli(
        "compare", *runs, "--truth", "expected", "--answer-path", "answer", "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert isinstance(document, dict)
    return document


def test_compare_shows_what_tune_predicted_against_what_the_run_did(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    job_path = _job(tmp_path, fresh_sim)
    tuned = tmp_path / "job.tuned.toml"
    done = run_cli("tune", job_path, *TUNE, "--target-kept", "0.9", "-o", tuned)
    assert done.returncode == 0, done.stderr
    _, chosen = _said(done.stdout)
    table = tomllib.loads(tuned.read_text(encoding="utf-8"))["tune"]
    assert table["policy"] == chosen and table["reference"] == "t/strong"
    assert table["sample_rows"] == 150 and table["total_rows"] == ROWS
    cost = table["usd_per_1k_rows"]
    assert cost["low"] <= cost["predicted"] <= cost["high"] and cost["level"] == 0.95
    stated = re.search(r"full run of \d+ rows: about \$([0-9.]+)", done.stdout)
    assert stated and float(stated.group(1)) == pytest.approx(
        cost["predicted"] * ROWS / 1000, abs=1e-3
    )
    assert load_job(tuned).tune is not None

    ran = run_cli("run", tuned)
    assert ran.returncode == 0, ran.stderr
    results = tmp_path / "out/results.parquet"
    # What the run really cost: every call's charge (the store's sample calls at their first
    # charge, as compare counts them), over its rows.
    calls = pl.read_parquet(tmp_path / "out/results.calls.parquet")
    actual = calls["charge_usd"].sum() / pl.read_parquet(results).height * 1000

    shown = run_cli("compare", results, "--truth", "expected", "--answer-path", "answer")
    assert shown.returncode == 0, shown.stderr
    assert f"predicted by tune for {chosen} from a 150-row sample" in shown.stdout
    line = next(ln for ln in shown.stdout.splitlines() if ln.strip().startswith("$/1k rows"))
    cells = line.split()
    assert cells[2] == f"{cost['predicted']:.4f}" and cells[5] == f"{actual:.4f}"
    assert cells[6] == ("yes" if cost["low"] <= actual <= cost["high"] else "NO")
    assert (
        "kept" in shown.stdout and "needs a compared run of every row on t/strong" in shown.stdout
    )

    # A run of every row on the reference model gives the kept accuracy its actual figure.
    fixed = job_text(
        base_url=fresh_sim.base_url, route='strategy = "fixed"\nmodel = "t/strong"', models=MODELS,
        extra=EXTRA,
    )  # fmt: skip
    top = write_job(
        tmp_path, fixed.replace("out/results.parquet", "out/top.parquet"), name="top.toml"
    )
    assert run_cli("run", top).returncode == 0
    document = _compare_json(results, tmp_path / "out/top.parquet")
    (item,) = document["predictions"]  # type: ignore[misc]
    assert item["run"] == "results" and item["tune"]["policy"] == chosen
    figures = {c["figure"]: c for c in item["checked"]}
    assert figures["$/1k rows"]["actual"] == pytest.approx(actual)
    row = next(r for r in document["runs"] if r["run"] == "results")  # type: ignore[attr-defined]
    assert figures["accuracy"]["actual"] == pytest.approx(row["accuracy"])
    assert figures["kept"]["actual"] == pytest.approx(row["accuracy_kept"])
    for figure in figures.values():
        inside = figure["low"] <= figure["actual"] <= figure["high"]
        assert figure["inside"] is inside

    page = tmp_path / "report.html"
    assert run_cli("report", results, "--truth", "expected", "-o", page).returncode == 0
    assert "Predicted by tune" in page.read_text(encoding="utf-8")


def test_a_dataset_with_repeated_prompts_is_predicted_at_what_the_shared_calls_cost(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    # 400 rows, 80 distinct tickets: the run makes one call per distinct prompt (dedupe), so
    # the sample's cost per row, row by row, would be five times too high.
    frame = pl.read_parquet(_labelled(tmp_path))
    frame.with_columns(
        pl.col("text").gather([i % 80 for i in range(ROWS)]),
        pl.col("expected").gather([i % 80 for i in range(ROWS)]),
    ).write_parquet(tmp_path / "tasks.parquet")
    job_path = write_job(
        tmp_path, job_text(base_url=fresh_sim.base_url, route=CASCADE, models=MODELS, extra=EXTRA)
    )
    tuned = tmp_path / "job.tuned.toml"
    done = run_cli("tune", job_path, *TUNE, "--target-kept", "0.9", "-o", tuned)
    assert done.returncode == 0, done.stderr
    assert "identical prompts counted once" in done.stdout
    assert run_cli("run", tuned).returncode == 0
    document = _compare_json(tmp_path / "out/results.parquet")
    (item,) = document["predictions"]  # type: ignore[misc]
    cost = next(c for c in item["checked"] if c["figure"] == "$/1k rows")
    assert cost["inside"] is True, cost
    assert cost["predicted"] == pytest.approx(cost["actual"], rel=0.25)


ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _block(after: str, *, fence: str = "```") -> str:
    """The first fenced block after the text `after` in the README."""
    start = README.index(fence + "\n", README.index(after)) + len(fence) + 1
    return README[start : README.index("```", start)]


@pytest.mark.timeout(400)
def test_the_readme_tune_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "data").symlink_to(ROOT / "data", target_is_directory=True)
    for name in ("demo.toml", "top.toml"):
        (tmp_path / "jobs" / name).write_text((ROOT / "jobs" / name).read_text())
    table = _block("#### Predicted against actual", fence="```toml")
    stated_table = tomllib.loads(table)["tune"]
    out = ""
    for line in _block("On the demo:").strip().splitlines():
        words = line.split()
        assert words[0] == "batchroute", line
        done = run_cli(*words[1:], cwd=tmp_path, timeout=240)
        assert done.returncode == 0, (line, done.stderr)
        out = done.stdout
    assert _block("`compare` prints:").strip() in out
    tuned = tomllib.loads((tmp_path / "jobs/demo.tuned.toml").read_text())
    assert tuned["tune"] == stated_table
    assert (tmp_path / "out/demo.frontier.svg").is_file()
    assert (tmp_path / "out/demo.tune.html").is_file()


def test_tuning_a_tuned_job_replaces_its_tune_table_and_the_tables_comment() -> None:
    tuned = (
        '[input]\npath = "t.parquet"\nprompt = "{text}"\n\n[output]\npath = "o.parquet"\n\n'
        '[route]\nstrategy = "fixed"\nmodel = "a"\n\n'
        "# What `batchroute tune` predicted for a full run of this job.\n"
        '[tune]\npolicy = "a"\n\n[run]\nconcurrency = 4\n'
    )
    text = replace_tables(tuned, new_tables='[route]\nstrategy = "fixed"\nmodel = "b"\n')
    assert "[tune]" not in text and "predicted for a full run" not in text
    assert tomllib.loads(text)["run"] == {"concurrency": 4}


def test_the_frontier_is_drawn_when_no_policy_holds_the_target(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    job_path = _job(tmp_path, fresh_sim)
    plot = tmp_path / "frontier.svg"
    done = run_cli(
        "tune", job_path, "--truth", "expected", "--answer-path", "answer", "--sample", "5",
        "--target-kept", "0.99", "-o", tmp_path / "job.tuned.toml", "--plot", plot,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "no policy keeps 99%" in done.stdout and not (tmp_path / "job.tuned.toml").exists()
    svg = ET.parse(plot).getroot()
    assert len(_markers(svg)) == _said_count(done.stdout)
    assert not [c for c in svg.iter(f"{SVG}circle") if "chosen" in _classes(c)]
    assert "no policy holds the target" in "".join(svg.itertext())


def _said_count(stdout: str) -> int:
    count = re.search(r"Pareto front of (\d+) policies", stdout)
    assert count, stdout
    return int(count.group(1))
