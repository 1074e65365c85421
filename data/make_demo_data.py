"""Generate data/demo_tickets.parquet: support tickets with the answer the simulator deems right.

The `expected` column is what the simulated provider considers the correct label for the exact
user message a job sends, so the prompt is rendered with the demo job's own template.
Run: .venv/bin/python data/make_demo_data.py
"""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl

from batchroute.job import load_job
from batchroute.sim import expected_answer

HERE = Path(__file__).parent
ROWS = 3000

OPENINGS = ["Hi,", "Hello team,", "Urgent:", "Quick question:", "Dear support,", ""]
SUBJECTS = [
    "I was charged twice for order {n}",
    "my package {n} has not arrived after two weeks",
    "the app crashes when I open the settings page",
    "please close my account and delete my data",
    "can I get my money back for order {n}",
    "the invoice for {month} shows the wrong VAT number",
    "it would be great to export reports as CSV",
    "I cannot log in since the password reset",
    "how do I cancel my subscription before {month}",
    "the tracking page for {n} shows an error",
]
CLOSINGS = ["Thanks.", "Regards, {name}", "Please help!", "Best, {name}", ""]
NAMES = ["Ana", "Bram", "Chen", "Dana", "Eli", "Femi", "Goran", "Hana", "Ivo", "Jun"]
MONTHS = ["January", "March", "June", "September", "November"]
CHANNELS = ["email", "chat", "phone transcript"]


def main() -> None:
    job = load_job(HERE.parent / "jobs" / "demo.toml")
    template = job.input.template()
    assert template is not None
    rng = random.Random(7)
    rows = []
    for i in range(ROWS):
        fill = {
            "n": f"#{rng.randint(10_000, 99_999)}",
            "month": rng.choice(MONTHS),
            "name": rng.choice(NAMES),
        }
        text = " ".join(
            part
            for part in (
                rng.choice(OPENINGS),
                rng.choice(SUBJECTS).format(**fill) + ".",
                rng.choice(CLOSINGS).format(**fill),
            )
            if part
        )
        row = {"ticket_id": f"T{i:05d}", "channel": rng.choice(CHANNELS), "text": text}
        row["expected"] = expected_answer(template.render(row))
        rows.append(row)
    pl.DataFrame(rows).write_parquet(HERE / "demo_tickets.parquet")
    print(f"wrote {ROWS} tickets to {HERE / 'demo_tickets.parquet'}")


if __name__ == "__main__":
    main()
