"""Hand-made runs for compare tests: results and calls files written by the real sink.

Every figure of these runs is small and written out, so the tests can check `compare`
against numbers computed by hand (see test_compare.py's docstring for the arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from batchroute.records import CallRecord, RowResult, calls_frame, results_frame
from batchroute.sink import ParquetSink

PRICES = {"m/top": {"input": 10.0, "output": 30.0}, "m/cheap": {"input": 1.0, "output": 1.0}}
STARTED = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Row:
    """One input row's outcome: its final answer and its calls (model, charge, latency)."""

    row_id: str
    answer: str | None
    model: str | None
    calls: list[tuple[str, float | None, float]]  # (model, charge, latency); None: failed
    status: str = "ok"
    escalated: bool = False
    fallback: bool = False
    cached: set[int] = field(default_factory=set)  # indexes of calls taken from the store


def call(model: str, charge: float | None, latency: float) -> tuple[str, float | None, float]:
    return (model, charge, latency)


def write_run(
    directory: Path,
    name: str,
    rows: list[Row],
    *,
    strategy: str,
    plan: str,
    truth: dict[str, str],
    prices: dict[str, dict[str, float]] | None = None,
    input_path: str = "data/tasks.parquet",
) -> Path:
    """Write `<name>.parquet` and `<name>.calls.parquet` with batchroute metadata."""
    results: list[RowResult] = []
    records: list[CallRecord] = []
    for row in rows:
        calls = []
        for tier, (model, charge, latency) in enumerate(row.calls):
            failed = charge is None
            calls.append(
                CallRecord(
                    row_id=row.row_id,
                    tier=tier,
                    model=model,
                    attempt=1,
                    started_at=STARTED,
                    latency_s=latency,
                    status_code=500 if failed else 200,
                    error_kind="http_500" if failed else None,
                    prompt_tokens=100,
                    completion_tokens=None if failed else 10,
                    charge_usd=charge,
                    cost_source="header",
                    cached=tier in row.cached,
                )
            )
        records += calls
        results.append(
            RowResult(
                row_id=row.row_id,
                plan=plan,
                status=row.status,
                answer=row.answer,
                model=row.model,
                escalated=row.escalated,
                fallback_used=row.fallback,
                calls=calls,
            )
        )
    inputs = pl.DataFrame(
        {"task_id": [r.row_id for r in rows], "expected": [truth[r.row_id] for r in rows]}
    )
    frame = pl.concat([inputs, results_frame(results, id_dtype=pl.String())], how="horizontal")
    models = {m: {"usd_per_mtok": p} for m, p in (prices or {}).items()}
    metadata: dict[str, Any] = {
        "run_id": f"run-{name}",
        "input": input_path,
        "strategy": strategy,
        "job": {"models": models},
        "calls_file": f"{name}.calls.parquet",
        "started_at": STARTED.isoformat(),
        "batchroute_version": "test",
    }
    path = directory / f"{name}.parquet"
    for target, data, table in (
        (path, frame, "results"),
        (directory / f"{name}.calls.parquet", calls_frame(records, id_dtype=pl.String()), "calls"),
    ):
        sink = ParquetSink(
            target,
            schema=dict(data.schema),
            metadata={**metadata, "table": table},
            run_id=metadata["run_id"],
        )
        sink.open()
        sink.write(data)
        sink.finish({})
    return path


TRUTH = {"r1": "billing", "r2": "refund", "r3": "bug", "r4": "other"}


def cheap_run(directory: Path) -> Path:
    """Every row on m/cheap: r1, r2 right; $0.001 a row; latency 0.1 to 0.4 s."""
    rows = [
        Row("r1", "Billing.", "m/cheap", [call("m/cheap", 0.001, 0.1)]),
        Row("r2", " REFUND ", "m/cheap", [call("m/cheap", 0.001, 0.2)]),
        Row("r3", "billing", "m/cheap", [call("m/cheap", 0.001, 0.3)]),
        Row("r4", "bug", "m/cheap", [call("m/cheap", 0.001, 0.4)]),
    ]
    return write_run(directory, "cheap", rows, strategy="fixed", plan="fixed:m/cheap", truth=TRUTH)


def top_run(directory: Path) -> Path:
    """Every row on m/top: r1-r3 right; $0.010, 0.012, 0.014, 0.016; latency 1 to 4 s."""
    rows = [
        Row("r1", "billing", "m/top", [call("m/top", 0.010, 1.0)]),
        Row("r2", "refund", "m/top", [call("m/top", 0.012, 2.0)]),
        Row("r3", "bug", "m/top", [call("m/top", 0.014, 3.0)]),
        Row("r4", "billing", "m/top", [call("m/top", 0.016, 4.0)]),
    ]
    return write_run(directory, "top", rows, strategy="fixed", plan="fixed:m/top", truth=TRUTH)


def cascade_run(directory: Path, *, prices: bool = True) -> Path:
    """m/cheap then m/top (fallback m/mid): r1 cached, r3 escalated, r4 escalated and fell back."""
    rows = [
        Row("r1", "billing", "m/cheap", [call("m/cheap", 0.001, 0.1)], cached={0}),
        Row("r2", "refund", "m/cheap", [call("m/cheap", 0.001, 0.2)]),
        Row(
            "r3",
            "bug",
            "m/top",
            [call("m/cheap", 0.001, 0.3), call("m/top", 0.014, 3.0)],
            escalated=True,
        ),
        Row(
            "r4",
            "bug",
            "m/mid",
            [call("m/cheap", 0.001, 0.4), call("m/top", None, 0.5), call("m/mid", 0.005, 1.0)],
            escalated=True,
            fallback=True,
        ),
    ]
    return write_run(
        directory,
        "cascade",
        rows,
        strategy="cascade",
        plan="cascade:m/cheap>m/top",
        truth=TRUTH,
        prices=PRICES if prices else None,
    )
