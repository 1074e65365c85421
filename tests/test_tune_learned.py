"""The learned router: `tune` trains it where no check or signal exists, writes it as plain
JSON, and `route.strategy = "learned"` routes by it before any call (replayed outcomes)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from helpers import run_cli, write_easy_hard_table, write_job

from batchroute import read_results
from batchroute.learned import FORMAT, RouterModel

ROWS = 600


JOB = """
[input]
path = "table.parquet"
id = "item"
prompt = "{prompt}"

[output]
path = "out/learned.parquet"

[endpoint]
base_url = "embedded"

[simulator]
replay = "table.parquet"

[models.a]
usd_per_mtok = { input = 1.0, output = 1.0 }

[models.b]
usd_per_mtok = { input = 40.0, output = 40.0 }

[route]
strategy = "cascade"
tiers = ["a", "b"]
"""


def test_tune_learns_a_router_and_the_learned_strategy_routes_by_it(tmp_path: Path) -> None:
    frame = write_easy_hard_table(tmp_path / "table.parquet", rows=ROWS)
    job = write_job(tmp_path, JOB)
    done = run_cli(
        "tune", job, "--truth-scorer", "batchroute.sim.replay:recorded_correct",
        "--sample", "300", "--target-kept", "0.95", "-o", tmp_path / "job.tuned.toml",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "chosen: learned router: a when p >= " in done.stdout, done.stdout
    tuned = tomllib.loads((tmp_path / "job.tuned.toml").read_text())
    assert tuned["route"] == {
        "strategy": "learned",
        "tiers": ["a", "b"],
        "router": "job.tuned.router.json",
    }
    data = json.loads((tmp_path / "job.tuned.router.json").read_text())
    assert data["format"] == FORMAT and data["version"] == 1 and data["trained_on"] == 150
    assert data["features"]["text_columns"] == ["prompt"]

    ran = run_cli("run", "-q", tmp_path / "job.tuned.toml")
    assert ran.returncode == 0, ran.stderr
    results = read_results(tmp_path / "out/learned.parquet").join(
        frame.select("item", "prompt"), left_on="row_id", right_on="item"
    )
    easy = results["prompt"].str.contains("simple")
    cheap = results["model"] == "a"
    # The router sends the easy questions to the cheap model and the hard ones to the top.
    assert (easy & cheap).sum() > 0.8 * easy.sum()
    assert (~easy & cheap).sum() < 0.2 * (~easy).sum()
    assert results["calls"].to_list() == [1] * ROWS  # one call per row: picked before calling
    assert set(results["rule"].unique().to_list()) == {"learned: cheaper", "learned: top"}


def test_a_bad_router_file_is_a_one_line_error(tmp_path: Path) -> None:
    write_easy_hard_table(tmp_path / "table.parquet", rows=ROWS)
    route = '[route]\nstrategy = "learned"\ntiers = ["a", "b"]\nrouter = "r.json"\n'
    job = write_job(tmp_path, JOB.split("[route]")[0] + route)
    cases = [
        (None, "route.router: no such file"),
        ("{not json", "not a router file"),
        (json.dumps({"format": FORMAT, "version": 99}), "router version 99"),
    ]
    model = RouterModel("b", "a", 0.5, ("prompt",), (), 16, 0.0, {})
    cases.append((model.to_json(), "route.tiers: the router was trained for ['b', 'a']"))
    for text, message in cases:
        if text is not None:
            (tmp_path / "r.json").write_text(text)
        done = run_cli("run", job)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    bad = write_job(tmp_path, JOB.split("[route]")[0] + '[route]\nstrategy = "learned"\n')
    done = run_cli("run", bad, "--force")
    assert done.returncode == 2 and "route: 'router' goes with strategy 'learned'" in done.stderr
