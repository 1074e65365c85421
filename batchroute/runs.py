"""A run read back from its files: the results, the calls beside them and their metadata."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from batchroute.errors import DatasetError
from batchroute.results import read_calls
from batchroute.sink import read_metadata

__all__ = ["Run", "read_run", "read_runs"]


@dataclass(frozen=True)
class Run:
    """One run read back: its results, its calls and its metadata."""

    path: Path
    results: pl.DataFrame
    calls: pl.DataFrame
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".parquet")

    @property
    def strategy(self) -> str:
        return str(self.metadata.get("strategy", "?"))

    def results_with_calls(self) -> pl.DataFrame:
        """The results, each row with its calls as a list of structs in `call_records`."""
        nested = self.calls.group_by("row_id", maintain_order=True).agg(
            pl.struct(pl.exclude("row_id")).alias("call_records")
        )
        return self.results.join(nested, on="row_id", how="left", nulls_equal=True)


def read_run(path: Path | str) -> Run:
    """Read a results file, the calls file beside it and their metadata; DatasetError if not."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such results file")
    try:
        metadata = read_metadata(path)
    except Exception as exc:  # pyarrow raises several types for "not Parquet"
        raise DatasetError(f"{path}: not a Parquet file ({type(exc).__name__})") from None
    if not metadata:
        raise DatasetError(f"{path}: not a batchroute results file (no batchroute metadata)")
    if metadata.get("table") == "calls":
        raise DatasetError(f"{path}: this is a calls file; pass the results file beside it")
    try:
        calls = read_calls(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: its calls file is missing (metadata: calls_file)") from None
    if "deduped" in calls.columns:
        # A row answered by another row's identical call made no call of its own: its record
        # says so, and its charge was paid (and is counted) once, by the row that made it.
        calls = calls.filter(~pl.col("deduped").fill_null(False))
    return Run(path=path, results=pl.read_parquet(path), calls=calls, metadata=metadata)


def read_runs(paths: Sequence[Path | str]) -> list[Run]:
    """`read_run` of each path, skipping calls files whose results file is also given, so
    that a glob like `out/*.parquet` works."""
    files = [Path(p) for p in paths]
    given = {p.resolve() for p in files}
    runs = []
    for path in files:
        if path.name.endswith(".calls.parquet") and path.is_file():
            results = path.with_name(path.name.removesuffix(".calls.parquet") + ".parquet")
            if results.resolve() in given and read_metadata(path).get("table") == "calls":
                continue
        runs.append(read_run(path))
    return runs
