"""The input dataset: Parquet or CSV streamed in batches, each row with a stable row id."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from batchroute.csv_input import (
    ARROW_TYPES,
    CsvLayout,
    bad_value,
    infer_layout,
    require_utf8,
)
from batchroute.errors import DatasetError, one_line

if TYPE_CHECKING:
    from batchroute.job import ColumnType, Job


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive rows of the input: `start` is the index of the first row in the file."""

    start: int
    frame: pl.DataFrame  # the input columns, as read
    row_ids: list[object]


class Dataset:
    """An input file opened for streaming; its schema, row count and ids are checked here.

    Errors name `where`: the job file and `input.path` when known, then the data file.
    """

    def __init__(
        self,
        path: Path,
        *,
        id_column: str | None,
        batch_rows: int,
        limit_rows: int | None = None,
        column_types: Mapping[str, ColumnType] | None = None,
        source: Path | None = None,
    ) -> None:
        self.path = path
        self.limit_rows = limit_rows
        self.id_column = id_column
        self.batch_rows = batch_rows
        self.where = f"{source}: input.path: {path}" if source is not None else str(path)
        self._block_bytes = max(1 << 20, batch_rows * 256)  # CSV blocks are sized in bytes
        suffix = path.suffix.lower()
        if suffix not in (".parquet", ".csv"):
            raise DatasetError(f"{self.where}: input must be a .parquet or .csv file")
        if not path.is_file():
            raise DatasetError(f"{self.where}: no such input file")
        self.format = suffix[1:]
        self.layout: CsvLayout | None = None
        self.schema: dict[str, pl.DataType] = {}
        self.num_rows = 0
        if self.format == "parquet":
            if column_types:
                raise DatasetError(
                    f"{source}: input.schema: applies to CSV input; the columns of {path}"
                    " (Parquet) carry their own types"
                )
            ids = self._open_parquet()
        else:
            require_utf8(path, where=self.where)
            self.layout = infer_layout(path, overrides=column_types or {}, where=self.where)
            self.schema = self.layout.polars_schema()
            ids = self._read_csv_once()
        if limit_rows is not None:
            self.num_rows = min(self.num_rows, limit_rows)
        self.ids = ids  # the id column, read once (MultiDataset checks them across files)
        if id_column is not None:
            assert ids is not None
            self._check_ids(ids)

    def _open_parquet(self) -> pl.Series | None:
        try:
            self.schema = dict(pl.read_parquet_schema(self.path))
            self.num_rows = pq.ParquetFile(self.path).metadata.num_rows
            if self.id_column is None:
                return None
            self._require_id_column()
            # Ids must be known good before the first call: reading the one column costs
            # little next to finding a duplicate after paying for rows.
            scan = pl.scan_parquet(self.path)
            if self.limit_rows is not None:
                scan = scan.head(self.limit_rows)
            return scan.select(pl.col(self.id_column)).collect().to_series()
        except (OSError, pl.exceptions.PolarsError, pa.ArrowException) as exc:
            raise DatasetError(f"{self.where}: cannot read the input: {one_line(exc)}") from None

    def _read_csv_once(self) -> pl.Series | None:
        """Read the whole file (up to `limit_rows`) with the reader and the types the run
        will use: a value that does not convert stops the run now, not after paid calls.
        Counts the rows and keeps the id column on the way."""
        if self.id_column is not None:
            self._require_id_column()
        self.num_rows = 0
        id_chunks: list[pa.Array] = []
        for batch in self._record_batches():
            if self.limit_rows is not None and self.num_rows >= self.limit_rows:
                break
            self.num_rows += batch.num_rows
            if self.id_column is not None:
                id_chunks.append(batch.column(self.id_column))
        if self.id_column is None:
            return None
        dtype = ARROW_TYPES[self.layout.types[self.id_column]] if self.layout else None
        series = pl.from_arrow(pa.chunked_array(id_chunks, type=dtype))
        assert isinstance(series, pl.Series)
        return series

    def _require_id_column(self) -> None:
        if self.id_column not in self.schema:
            raise DatasetError(
                f"{self.where}: id column {self.id_column!r} (input.id) is not in the dataset"
            )

    def _check_ids(self, ids: pl.Series) -> None:
        """Ids must be unique and present."""
        column = self.id_column
        frame = ids.head(self.num_rows).to_frame("id").with_row_index("row")
        nulls = frame.filter(pl.col("id").is_null())
        if nulls.height:
            row = nulls["row"][0]
            raise DatasetError(f"{self.where}: row {row}: id column {column!r} is null")
        repeats = frame.filter(~pl.col("id").is_first_distinct())
        if repeats.height:
            row, value = repeats["row"][0], repeats["id"][0]
            raise DatasetError(
                f"{self.where}: row {row}: duplicate id {value!r} in column {column!r}"
            )

    def require_columns(self, columns: list[str], *, what: str) -> None:
        """Fail before any call when the job names a column the dataset lacks."""
        for column in columns:
            if column not in self.schema:
                known = ", ".join(self.schema)
                raise DatasetError(
                    f"{self.path}: {what} names column {column!r}, which is not in the"
                    f" dataset (columns: {known})"
                )

    def id_dtype(self) -> pl.DataType:
        if self.id_column is None:
            return pl.Int64()
        dtype = self.schema[self.id_column]
        return dtype() if isinstance(dtype, type) else dtype

    def batches(self) -> Iterator[Batch]:
        """Yield batches in file order."""
        start = 0
        for record_batch in self._record_batches():
            if start >= self.num_rows:
                return
            if start + record_batch.num_rows > self.num_rows:  # only under limit_rows
                record_batch = record_batch.slice(0, self.num_rows - start)
            frame = pl.from_arrow(record_batch)
            assert isinstance(frame, pl.DataFrame)
            if self.id_column is None:
                row_ids: list[object] = list(range(start, start + frame.height))
            else:
                row_ids = frame.get_column(self.id_column).to_list()
            yield Batch(start=start, frame=frame, row_ids=row_ids)
            start += frame.height

    def _record_batches(self) -> Iterator[pa.RecordBatch]:
        if self.layout is None:
            try:
                yield from pq.ParquetFile(self.path).iter_batches(batch_size=self.batch_rows)
            except (OSError, pa.ArrowException) as exc:
                raise DatasetError(
                    f"{self.where}: cannot read the input: {one_line(exc)}"
                ) from None
            return
        rows = 0
        try:
            with self.layout.reader(self.path, block_bytes=self._block_bytes) as reader:
                for record_batch in reader:
                    # CSV blocks are sized in bytes; re-cut them to the batch size in rows
                    for offset in range(0, record_batch.num_rows, self.batch_rows):
                        yield record_batch.slice(offset, self.batch_rows)
                    rows += record_batch.num_rows
        except pa.ArrowInvalid as exc:
            # A value that does not fit its column. Found by the first read, before any
            # call; met here only if the file changed since. Rows before it are kept.
            found = bad_value(self.path, self.layout, block_bytes=self._block_bytes)
            where = found or f"after row {rows}: {one_line(exc)}"
            raise DatasetError(
                f"{self.where}: {where} (input.schema sets a column's type)"
            ) from None
        except (OSError, pa.ArrowException) as exc:
            raise DatasetError(f"{self.where}: cannot read the input: {one_line(exc)}") from None


class MultiDataset(Dataset):
    """Several files read as one dataset, in the order given (a directory's or a glob's files,
    sorted). Every file must have the same columns and types. Row ids: the id column, unique
    across all files, else the row's index counted across the files in order."""

    def __init__(self, path: Path, parts: list[Dataset], *, where: str) -> None:
        first = parts[0]
        self.path = path
        self.where = where
        self.parts = parts
        self.id_column = first.id_column
        self.batch_rows = first.batch_rows
        self.limit_rows = first.limit_rows
        self.format = first.format
        self.layout = first.layout
        self.schema = first.schema
        for part in parts[1:]:
            if part.schema != first.schema:
                raise DatasetError(
                    f"{where}: {part.path} has other columns or types than {first.path}"
                    f" ({_schema_text(part.schema)} vs {_schema_text(first.schema)});"
                    " for CSV, input.schema sets a column's type"
                )
        self.num_rows = sum(part.num_rows for part in parts)
        self.ids = None
        if self.id_column is not None:
            series = [part.ids for part in parts if part.ids is not None]
            self.ids = pl.concat([s.head(p.num_rows) for s, p in zip(series, parts, strict=True)])
            self._check_ids(self.ids)

    def batches(self) -> Iterator[Batch]:
        offset = 0
        for part in self.parts:
            for batch in part.batches():
                row_ids = batch.row_ids
                if self.id_column is None:
                    row_ids = [offset + int(i) for i in row_ids]  # type: ignore[call-overload]
                yield Batch(start=offset + batch.start, frame=batch.frame, row_ids=row_ids)
            offset += part.num_rows


def _schema_text(schema: Mapping[str, pl.DataType]) -> str:
    return ", ".join(f"{name}: {dtype}" for name, dtype in schema.items())


def open_dataset(job: Job, *, limit_rows: int | None = None) -> Dataset:
    """The dataset of `job`'s `[input]`: one file, or every file of a directory or glob."""
    from batchroute.engines.paths import local_files

    where = f"{job.source}: input.path: {job.input.path}"
    if job.input.url is not None:
        where = f"{job.source}: input.path: {job.input.url}"
    files = local_files(job.input.path, where=where)
    parts: list[Dataset] = []
    remaining = limit_rows
    for file in files:
        if remaining is not None and remaining <= 0 and parts:
            break
        parts.append(
            Dataset(
                file,
                id_column=job.input.id,
                batch_rows=job.input.batch_rows,
                limit_rows=remaining,
                column_types=job.input.schema_,
                source=job.source,
            )
        )
        if remaining is not None:
            remaining -= parts[-1].num_rows
    if len(files) == 1:
        return parts[0]
    return MultiDataset(job.input.path, parts, where=where)
