"""Every strategy's job in jobs/ on the demo tickets: blended cost, escalation and accuracy.

Run: .venv/bin/python bench/strategies.py [--jobs demo fixed ...]

Each job runs through the real CLI on the embedded simulator. Accuracy compares the label in
each answer (`answer` of the JSON reply) with `expected`, the simulator's right answer for
the demo prompt, which every job in jobs/ sends unchanged. An answer with no readable label
(prose instead of JSON) counts as wrong; "accuracy of readable" leaves those rows out, as a
polars mean over a null comparison does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import polars as pl

from batchroute import read_metadata, read_results
from batchroute.job import load_job

ROOT = Path(__file__).resolve().parent.parent
JOBS = ["fixed", "demo", "rules", "classifier", "composed", "shadow"]


def _label(answer: str | None) -> str | None:
    try:
        value = json.loads(answer) if answer else None
    except json.JSONDecodeError:
        return None
    return value.get("answer") if isinstance(value, dict) else None


def measure(name: str) -> dict[str, object]:
    job_path = ROOT / "jobs" / f"{name}.toml"
    done = subprocess.run(
        [sys.executable, "-m", "batchroute", "run", str(job_path), "--overwrite", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}: {done.stderr.strip()}")
    results_path = load_job(job_path).output.path
    results = read_results(results_path)
    summary = read_metadata(results_path)["summary"]
    labels = pl.Series([_label(a) for a in results["answer"]], dtype=pl.String)
    return {
        "job": f"jobs/{name}.toml",
        "strategy": read_metadata(results_path)["strategy"],
        "rows": results.height,
        "cost per row (USD)": results["cost_usd"].sum() / results.height,
        "escalation rate": results["escalated"].mean(),
        # An answer without a readable label is wrong; the second figure leaves those out.
        "accuracy": (labels == results["expected"]).fill_null(False).mean(),
        "accuracy of readable": (labels == results["expected"]).mean(),
        "check passed": results["check_passed"].fill_null(True).mean(),
        "shadow USD": summary.get("shadow_cost_usd", 0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="*", default=JOBS, help="job names in jobs/")
    args = parser.parse_args()
    rows = [measure(name) for name in args.jobs]
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = []
        for key in header:
            value = row[key]
            if key == "cost per row (USD)":
                cells.append(f"{value:.6f}")
            elif isinstance(value, float):
                cells.append(f"{value:.1%}" if key != "shadow USD" else f"{value:.4f}")
            else:
                cells.append(str(value))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
