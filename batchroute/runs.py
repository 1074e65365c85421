"""A run read back from its files: the results, the calls beside them and their metadata."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

import polars as pl
from pydantic import BaseModel, ValidationError

from batchroute.errors import DatasetError
from batchroute.parsed import PARSED, parser_for
from batchroute.results import read_calls
from batchroute.sink import read_metadata

__all__ = ["Run", "read_run", "read_runs"]

M = TypeVar("M", bound=BaseModel)


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

    def parsed_column(self) -> pl.Series | None:
        """The typed `parsed` column: the one written, else the answers read now with the
        schema of the job in the metadata (a run from before the column existed); None when
        the job had no JSON schema."""
        if PARSED in self.results.columns:
            return self.results[PARSED]
        parser = parser_for(self.metadata.get("job") or {})
        if parser is None or "answer" not in self.results.columns:
            return None
        return parser.parse(self.results["answer"].to_list())

    @overload
    def parsed(self) -> pl.DataFrame: ...

    @overload
    def parsed(self, model: type[M]) -> list[M | None]: ...

    def parsed(self, model: type[M] | None = None) -> pl.DataFrame | list[M | None]:
        """`row_id` and one typed column per field of the answer's schema (`parsed` unnested);
        DatasetError when the job had no JSON schema.

        With a pydantic `model`: each row's answer validated into an instance, in row order;
        None for a row without an answer or whose answer does not validate."""
        if model is not None:
            return [_validated(model, a) for a in self.results["answer"].to_list()]
        column = self.parsed_column()
        if column is None:
            raise DatasetError(f"{self.path}: the job has no JSON schema, so no parsed answer")
        frame = pl.DataFrame([self.results["row_id"], column])
        if isinstance(column.dtype, pl.Struct):
            names = [f.name for f in column.dtype.fields]
            if "row_id" in names:  # a field of that name: the field is kept under `parsed.`
                frame = frame.with_columns(
                    column.struct.rename_fields(
                        [f"{PARSED}.{n}" if n == "row_id" else n for n in names]
                    )
                )
            frame = frame.unnest(PARSED)
        return frame

    def _repr_html_(self) -> str:
        """Its identity, figures and first rows (with the parsed fields), in a notebook."""
        from batchroute.notebook_html import run_html

        return run_html(self)

    def results_with_calls(self) -> pl.DataFrame:
        """The results, each row with its calls as a list of structs in `call_records`."""
        nested = self.calls.group_by("row_id", maintain_order=True).agg(
            pl.struct(pl.exclude("row_id")).alias("call_records")
        )
        return self.results.join(nested, on="row_id", how="left", nulls_equal=True)


def _validated(model: type[M], answer: str | None) -> M | None:
    if answer is None:
        return None
    try:
        return model.model_validate_json(answer)
    except ValidationError:
        return None


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
