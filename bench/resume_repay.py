"""What a kill -9 costs: money re-paid after resuming, against one uninterrupted run.

Run: .venv/bin/python bench/resume_repay.py [--rows 2000] [--concurrency 32]

A cascade job (gpt-4o-mini -> claude-opus-4-8 on the simulator, 40 ms latency) is run once
uninterrupted, then for each kill point started, killed with SIGKILL once the store holds that
many calls, and started again with the same command. The simulator's ledger says what was
paid in all; the difference with the uninterrupted run is the re-pay.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from batchroute.sim import SimulatorHandle, running_simulator

JOB = """
[input]
path = "tasks.parquet"
id = "id"
prompt = "Label: {text}"
[output]
path = "out/results.parquet"
[endpoint]
base_url = "{base_url}"
[route]
strategy = "cascade"
tiers = ["openai/gpt-4o-mini", "anthropic/claude-opus-4-8"]
[params]
max_tokens = 40
response_format = { type = "json_object" }
[check]
type = "json_schema"
schema = { type = "object", properties = { confidence = { type = "number", minimum = 0.7 } } }
[run]
concurrency = {concurrency}
"""
MODELS = """
[models."openai/gpt-4o-mini"]
usd_per_mtok = { input = 0.15, output = 0.60 }
latency_ms = { mean = 40, jitter = 20 }
skill = 0.55
[models."anthropic/claude-opus-4-8"]
usd_per_mtok = { input = 5.0, output = 25.0 }
latency_ms = { mean = 40, jitter = 20 }
skill = 0.93
"""


def _stored(store: Path) -> int:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT count(*) FROM calls").fetchone()[0])
    except sqlite3.Error:
        return 0


def _paid(sim: SimulatorHandle) -> tuple[float, int]:
    ledger = sim.ledger()
    return ledger["total_charged_usd"], sum(m["requests"] for m in ledger["models"].values())


def _job(directory: Path, sim: SimulatorHandle, *, rows: int, concurrency: int) -> Path:
    directory.mkdir(parents=True)
    pl.DataFrame(
        {"id": [f"t{i}" for i in range(rows)], "text": [f"parcel {i} is late" for i in range(rows)]}
    ).write_parquet(directory / "tasks.parquet")
    job = directory / "job.toml"
    text = JOB.replace("{base_url}", sim.base_url).replace("{concurrency}", str(concurrency))
    job.write_text(text, encoding="utf-8")
    return job


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    run = [sys.executable, "-m", "batchroute", "run"]
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models.toml"
        models.write_text(MODELS, encoding="utf-8")
        with running_simulator(models=models, seed=5) as sim:
            job = _job(Path(tmp) / "reference", sim, rows=args.rows, concurrency=args.concurrency)
            subprocess.run([*run, str(job), "-q"], check=True, capture_output=True)
            reference_usd, reference_calls = _paid(sim)
            print(f"uninterrupted: ${reference_usd:.6f} for {reference_calls} calls")
            print("kill after | calls re-sent | re-paid USD | re-paid share")
            for fraction in (0.1, 0.3, 0.5, 0.7, 0.9):
                kill_at = int(reference_calls * fraction)
                sim.reset()
                directory = Path(tmp) / f"kill{kill_at}"
                job = _job(directory, sim, rows=args.rows, concurrency=args.concurrency)
                process = subprocess.Popen(
                    [*run, str(job), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                store = directory / ".batchroute/store.sqlite"
                while _stored(store) < kill_at and process.poll() is None:
                    time.sleep(0.005)
                process.send_signal(signal.SIGKILL)
                process.wait()
                subprocess.run([*run, str(job), "-q"], check=True, capture_output=True)
                usd, calls = _paid(sim)
                print(
                    f"{kill_at:>10} | {calls - reference_calls:>13} |"
                    f" {usd - reference_usd:11.6f} | {(usd - reference_usd) / reference_usd:.2%}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
