"""Repair before escalation, on the demo: cost and accuracy with 0 and 1 repair attempt.

Run: .venv/bin/python bench/repair.py [--rows 3000]

jobs/demo.toml as it is (gpt-4o-mini, then opus when the JSON-schema check fails; embedded
simulator, seed 0), once with `run.repair_attempts = 0` and once with 1, each with a fresh
store. Accuracy as `batchroute compare --truth expected --answer-path answer` computes it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import polars as pl
from common import write_section

from batchroute import RunOptions, compare, load_job, read_run, run
from batchroute.checks import normalize_label
from batchroute.sim import load_sim_config

ROOT = Path(__file__).resolve().parent.parent
# The packaged table's format_fix for the demo's first tier, quoted in the section.
_FORMAT_FIX = load_sim_config(None).models["openai/gpt-4o-mini"].format_fix


def _run(directory: Path, *, repairs: int, rows: int) -> Path:
    job = load_job(ROOT / "jobs/demo.toml")
    name = f"demo.repair{repairs}"
    job = job.model_copy(
        update={
            "output": job.output.model_copy(update={"path": directory / f"{name}.parquet"}),
            "store": job.store.model_copy(update={"path": directory / f"{name}.sqlite"}),
            "run": job.run.model_copy(update={"repair_attempts": repairs}),
        }
    )
    return run(job, RunOptions(limit_rows=rows)).results_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        paths = [_run(directory, repairs=n, rows=args.rows) for n in (0, 1)]
        table = compare(paths, truth="expected", answer_path="answer")
        repair_costs = [read_run(p).metadata["summary"]["repair_cost_usd"] for p in paths]
        results = read_run(paths[1]).results
    repaired = results.filter(pl.col("repaired"))
    asked = results.filter(pl.col("repairs") > 0)
    unrepaired = asked.filter(~pl.col("repaired"))
    # Why a repair turn did not pass: the format is still broken, or it is fixed and the
    # confidence is under the schema's minimum (content, which escalates without a turn).
    bound = unrepaired.filter(
        pl.col("check_reasons").list.first().str.contains("less than the minimum")
    ).height
    labels = repaired.select("expected", "parsed").unnest("parsed")
    right = sum(
        normalize_label(a or "") == normalize_label(e)
        for a, e in zip(labels["answer"], labels["expected"], strict=True)
    )
    distinct = repaired["answer"].n_unique()
    totals = [row["total_usd"] for row in table.iter_rows(named=True)]
    spared = totals[0] - (totals[1] - repair_costs[1])
    lines = [
        "| repair_attempts | $/1k rows | total $ | of it repair $ | escalated | repaired"
        " | accuracy |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for attempts, row, repair_usd in zip(
        (0, 1), table.iter_rows(named=True), repair_costs, strict=True
    ):
        lines.append(
            f"| {attempts} | {row['cost_per_row_usd'] * 1000:.4f} | {row['total_usd']:.4f}"
            f" | {repair_usd:.4f} | {row['escalation_rate']:.1%} | {row['repair_rate']:.1%}"
            f" | {row['accuracy']:.1%} |"
        )
    accuracy = [row["accuracy"] for row in table.iter_rows(named=True)]
    body = f"""
jobs/demo.toml on its embedded simulator, the first {args.rows} rows, a fresh store each:
`run.repair_attempts = 0`, then `1`. Run: `.venv/bin/python bench/repair.py`. Accuracy as
`compare --truth expected --answer-path answer` computes it. The simulator answers a repair
turn about its ticket (batchroute/sim/followups.py): the same label and confidence as the
answer that broke the format, the format fixed with gpt-4o-mini's `format_fix` of
{_FORMAT_FIX:.0%} (an assumption of the packaged model table, not a measurement).

{chr(10).join(lines)}

With one attempt, {asked.height} rows got a repair turn (their answer was in prose or missed a
field; a confidence under the schema's `minimum` is content, not form, and escalates at once).
{repaired.height} passed the check after it and stayed on gpt-4o-mini; {right} of those
{repaired.height} repaired answers are right ({right / max(repaired.height, 1):.0%}), in
{distinct} distinct answer texts. Of the {unrepaired.height} that escalated after their repair
turn, {bound} had the format fixed and a confidence under 0.7, {unrepaired.height - bound} had
it broken again. The repair turns cost ${repair_costs[1]:.4f}; the escalations they spared
would have cost ${spared:.4f} (the total without repairs minus the total with them, repairs
left out), so repairs {"saved" if spared > repair_costs[1] else "cost"}
${abs(spared - repair_costs[1]):.4f} on these rows.

What this says: on the demo a repair turn fixes the form but not the answer. The simulator
breaks the schema only on wrong answers, and a repair keeps the label, so a repaired answer is
the cheap model's wrong label, and its confidence (drawn low for wrong answers) mostly sends
the row to the top model anyway, after a repair turn it paid for. The rows a repair keeps on
its tier are the wrong answers claimed with a confidence of 0.7 or more, which without repairs
would have escalated and been put right: accuracy {accuracy[0]:.1%} without repairs,
{accuracy[1]:.1%} with one. On real models a broken format is not tied to a wrong answer as
it is here; before trusting repairs, compare a sample both ways (`compare --truth`).

The figures before this simulator change (the same command at 10dbb47, the commit before it,
with one attempt: repaired 23.3%, escalated 27.4%, $/1k rows 0.1641 against 0.2567 without
repairs, accuracy 75.6% against 91.4%, 81 of 698 repaired answers right, in 4 distinct texts)
were an artefact of that simulator: it answered a conversation's last user message, which in
a repair turn is the repair request ("Your answer did not match the schema: ... Reply with
JSON only."), so every repair was a new task drawn from that text: one answer per repair
wording, right about one time in eight, with a confidence drawn anew for that text that
passed the check. That made repairs look like a large saving at a large loss of accuracy;
neither was about repairs.
"""
    write_section("repair", "Repair before escalation, on the demo", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
