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

ROOT = Path(__file__).resolve().parent.parent


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
        repaired = read_run(paths[1]).results.filter(pl.col("repaired"))
        turns = int(read_run(paths[1]).results["repairs"].sum())
        labels = repaired.select("expected", "parsed").unnest("parsed")
        right = sum(
            normalize_label(a or "") == normalize_label(e)
            for a, e in zip(labels["answer"], labels["expected"], strict=True)
        )
        distinct = repaired["answer"].n_unique()
    lines = [
        "| repair_attempts | $/1k rows | total $ | escalated | repaired | accuracy |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for attempts, row in zip((0, 1), table.iter_rows(named=True), strict=True):
        lines.append(
            f"| {attempts} | {row['cost_per_row_usd'] * 1000:.4f} | {row['total_usd']:.4f}"
            f" | {row['escalation_rate']:.1%} | {row['repair_rate']:.1%}"
            f" | {row['accuracy']:.1%} |"
        )
    body = f"""
jobs/demo.toml on its embedded simulator, the first {args.rows} rows, a fresh store each:
`run.repair_attempts = 0`, then `1`. Run: `.venv/bin/python bench/repair.py`. Accuracy as
`compare --truth expected --answer-path answer` computes it.

{chr(10).join(lines)}

With one attempt, {turns} rows got a repair turn (the answers in prose or missing a field;
a confidence under the schema's `minimum` is content, not form, and escalates at once) and
{repaired.height} passed the check after it; {right} of those {repaired.height} repaired
answers are right ({right / max(repaired.height, 1):.0%}), and they hold {distinct} distinct
answer texts.

**Read the accuracy with care: on the simulator a repair turn is a new task.** The simulator
decides an answer from a hash of the conversation's last user message, which in a repair turn
is the repair request ("Your answer did not match the schema: ...; reply with JSON only"), not
the ticket. Its label is drawn for that text, so it is unrelated to the ticket's right answer
(hence about one in eight right), and every row that failed for the same reason gets the same
repaired answer (hence so few distinct texts). The cost figures are real: every repair call is
charged, in the ledger and in the row's cost. The accuracy with repairs measures the
simulator, not a model: a real model told its JSON was malformed re-answers the same ticket.
And on the demo the simulator breaks the schema only on answers that are wrong, so every
repair there saves the escalation of a row that needed it. Before trusting repairs on real
data, compare a sample both ways (`compare --truth`); a simulator that answers a repair turn
about its task (the first user message of a conversation holding the model's own earlier
answer) would make this benchmark say something about repairs.
"""
    write_section("repair", "Repair before escalation, on the demo", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
