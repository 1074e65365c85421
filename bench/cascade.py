"""Benchmark 4, cascade cost: does a cascade's per-row work slow it beyond its extra calls?

Run: .venv/bin/python bench/cascade.py [--rows 10000] [--repeat 3]

A cascade (gpt-4o-mini, then opus when a JSON-schema check fails) over N rows makes K calls
(N plus the escalations). A fixed job over K rows, with the same parameters and no check,
makes the same K calls. Both run through the CLI against the simulator (its own process,
normal mode, zero latency, so the client's work is what is measured). Ratio: the cascade's
calls per second over the fixed job's; target at least 0.9.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import (
    MODEL,
    STRONG,
    batchroute,
    command_line,
    job_file,
    median,
    sim_table,
    verdict,
    write_section,
    write_tasks,
)

from batchroute import read_metadata
from batchroute.sim import running_simulator

PARAMS = 'max_tokens = 64\nresponse_format = { type = "json_object" }'
CHECK = (
    '[check]\ntype = "json_schema"\n'
    'schema = { type = "object", required = ["answer", "confidence"],'
    ' properties = { confidence = { type = "number", minimum = 0.7 } } }\n'
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        data = write_tasks(directory / "tasks.parquet", args.rows)
        with running_simulator(models=sim_table(directory)) as sim:

            def run(name: str, data: Path, route: str, extra: str = "") -> tuple[float, int]:
                for path in directory.glob(f"{name}.sqlite*"):  # a fresh store each time
                    path.unlink()
                job = job_file(
                    directory,
                    data=data,
                    base_url=sim.base_url,
                    route=route,
                    params=PARAMS,
                    extra=extra,
                    name=f"{name}.toml",
                )
                wall = batchroute(job).wall_s
                summary = read_metadata(directory / "out" / f"{name}.parquet")["summary"]
                return wall, summary["calls"]

            cascade_route = f'strategy = "cascade"\ntiers = ["{MODEL}", "{STRONG}"]'
            fixed_route = f'strategy = "fixed"\nmodel = "{MODEL}"'
            _, calls = run("cascade", data, cascade_route, CHECK)  # how many calls it makes
            same_calls = write_tasks(directory / "tasks_fixed.parquet", calls)
            cascade, fixed = [], []
            for _ in range(args.repeat):
                wall, made = run("cascade", data, cascade_route, CHECK)
                assert made == calls, (made, calls)  # the simulator's answers are deterministic
                cascade.append(calls / wall)
                wall, made = run("fixed", same_calls, fixed_route)
                assert made == calls, (made, calls)
                fixed.append(calls / wall)
    ratio = median(cascade) / median(fixed)
    body = f"""
`{command_line()}`

Cascade gpt-4o-mini -> claude-opus-4-8 with a JSON-schema check over {args.rows:,} rows:
{calls:,} calls ({calls / args.rows - 1:.1%} of rows escalated). Fixed job over {calls:,} rows:
the same number of calls. Simulator in normal mode, zero latency; concurrency 64; median of
{args.repeat}, whole CLI runs.

| job | rows | calls | calls/s |
|---|---:|---:|---:|
| cascade | {args.rows:,} | {calls:,} | {median(cascade):,.0f} |
| fixed | {calls:,} | {calls:,} | {median(fixed):,.0f} |

Cascade / fixed at equal calls: {ratio:.2f} (target at least 0.9): {verdict(ratio >= 0.9)}.
"""
    write_section("cascade", "4. Cascade cost", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
