"""Readers for a run's outputs, for notebooks and scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from batchroute.sink import read_metadata as _read_metadata


def read_results(path: Path | str) -> pl.DataFrame:
    """The results table of a run: one row per input row, input columns kept."""
    return pl.read_parquet(path)


def read_calls(results_path: Path | str) -> pl.DataFrame:
    """The calls table that belongs to a results file (found through its metadata)."""
    path = Path(results_path)
    calls_file = _read_metadata(path).get("calls_file") or path.stem + ".calls.parquet"
    return pl.read_parquet(path.parent / calls_file)


def read_metadata(path: Path | str) -> dict[str, Any]:
    """Run id, batchroute version, the job's settings (no secrets) and the run summary."""
    return _read_metadata(path)
