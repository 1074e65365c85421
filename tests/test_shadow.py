"""Shadow sampling: the estimate of what the cheapest tier would have handled, against the truth.

The test simulator's cheap model has skill 0.3: on tasks of uniform difficulty it answers
about 30% right. With a check that passes exactly the right answers, the shadow estimate per
rule must bracket both that skill and the true share among the rows (which the deterministic
simulator lets us compute for every row, sampled or not). The run answers on the in-process
simulator: the estimate is the subject here, not HTTP.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import polars as pl
import pytest
from helpers import SKILLS, job_text, make_tasks, sim_draw, write_job
from inprocess import InProcessSim

from batchroute import read_calls, read_metadata, read_results
from batchroute.shadow import is_sampled, shadow_lines, wilson
from batchroute.sim import expected_answer

pytestmark = pytest.mark.timeout(120)

ROUTE = """
strategy = "rules"
default = "t/strong"
shadow_rate = 0.5
shadow_model = "t/cheap"
seed = 7

[[route.rules]]
name = "classify"
when = "task_type = 'classify'"
target = "t/strong"

[[route.rules]]
name = "ladder"
when = "task_type = 'extract'"
target = "ladder"
"""
EXTRA = """
[check]
type = "python"
function = "oracle:is_expected"

[plans.ladder]
tiers = ["t/cheap", "t/strong"]
"""
ORACLE = """
def is_expected(row, answer):
    return answer == row["expected"]
"""


def test_wilson_interval_matches_known_values() -> None:
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_sampling_is_deterministic_for_a_seed() -> None:
    ids = [f"task-{i:04d}" for i in range(2000)]
    picked = [is_sampled(i, rate=0.25, seed=3) for i in ids]
    assert picked == [is_sampled(i, rate=0.25, seed=3) for i in ids]
    assert picked != [is_sampled(i, rate=0.25, seed=4) for i in ids]
    assert 0.22 < sum(picked) / len(ids) < 0.28


def test_shadow_estimates_bracket_the_cheap_models_known_skill(
    tmp_path: Path, inproc_sim: InProcessSim
) -> None:
    frame = make_tasks(450)
    prompts = [f"Label: {t}" for t in frame["text"]]
    frame = frame.with_columns(expected=pl.Series([expected_answer(p) for p in prompts]))
    frame.write_parquet(tmp_path / "tasks.parquet")
    (tmp_path / "oracle.py").write_text(textwrap.dedent(ORACLE), encoding="utf-8")
    job = write_job(tmp_path, job_text(base_url=inproc_sim.base_url, route=ROUTE, extra=EXTRA))
    report = inproc_sim.run(job)
    assert report.stop_error is None
    results = read_results(tmp_path / "out/results.parquet")
    calls = read_calls(tmp_path / "out/results.parquet")
    routes = read_metadata(tmp_path / "out/results.parquet")["summary"]["routes"]

    cheap_right = pl.Series([sim_draw(p, "t/cheap").correct for p in prompts])
    results = results.with_columns(cheap_right=cheap_right)
    past = results.filter(pl.col("model") == "t/strong")
    sampled = [is_sampled(r, rate=0.5, seed=7) for r in past["row_id"]]
    assert past["shadow_passed"].is_not_null().to_list() == sampled
    assert results.filter(pl.col("model") == "t/cheap")["shadow_passed"].is_null().all()

    for key in ("classify", "default"):
        rows = past.filter(pl.col("rule") == key)
        shadowed = rows.filter(pl.col("shadow_passed").is_not_null())
        # A sampled row's shadow verdict is exactly whether the cheap model gets it right.
        assert shadowed["shadow_passed"].to_list() == shadowed["cheap_right"].to_list()
        d = routes[key]
        assert d["past_cheapest"] == rows.height and d["sampled"] == shadowed.height
        assert d["share"] == pytest.approx(shadowed["shadow_passed"].mean())
        truth = rows["cheap_right"].mean()
        assert isinstance(truth, float)
        assert d["share_low"] <= truth <= d["share_high"]
        assert d["share_low"] <= SKILLS["t/cheap"] <= d["share_high"]
        saving = (shadowed["cost_usd"] - shadowed["shadow_cost_usd"]).mean()
        assert isinstance(saving, float) and saving > 0
        assert d["saving_usd"] == pytest.approx(rows.height * d["share"] * saving)

    # In the cascade the cheap model already answered every escalated row and failed the
    # check: its shadow verdict is known without another call.
    ladder = past.filter((pl.col("rule") == "ladder") & pl.col("shadow_passed").is_not_null())
    assert ladder.height > 0 and not ladder["shadow_passed"].any()
    assert (ladder["shadow_cost_usd"] == 0).all()
    assert routes["ladder"]["share"] == 0.0

    # Shadow calls are marked, cost nothing to the rows, and are all the cheap model's.
    shadow_calls = calls.filter(pl.col("shadow"))
    assert set(shadow_calls["model"]) == {"t/cheap"}
    assert (
        shadow_calls.height
        == past.filter((pl.col("rule") != "ladder") & pl.col("shadow_passed").is_not_null()).height
    )
    total = results["cost_usd"].sum() + results["shadow_cost_usd"].fill_null(0).sum()
    assert total == pytest.approx(inproc_sim.ledger()["total_charged_usd"], abs=1e-9)
    # The lines the CLI prints after the summary.
    printed = "\n".join(shadow_lines(report.summary.get("routes", {})))
    assert "shadow classify: the cheapest tier would have handled ~" in printed
