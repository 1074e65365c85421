"""The input dataset: Parquet or CSV streamed in batches, each row with a stable row id."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchroute.errors import DatasetError

ROW_ID = "row_id"


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive rows of the input: `start` is the index of the first row in the file."""

    start: int
    frame: pl.DataFrame  # the input columns, as read
    row_ids: list[object]


class Dataset:
    """An input file opened for streaming; nothing but the schema and row count is read here."""

    def __init__(
        self, path: Path, *, id_column: str | None, batch_rows: int, limit_rows: int | None = None
    ) -> None:
        self.path = path
        self.limit_rows = limit_rows
        self.id_column = id_column
        self.batch_rows = batch_rows
        suffix = path.suffix.lower()
        if suffix not in (".parquet", ".csv"):
            raise DatasetError(f"{path}: input must be a .parquet or .csv file")
        if not path.is_file():
            raise DatasetError(f"{path}: no such input file")
        self.format = suffix[1:]
        try:
            if self.format == "parquet":
                self.schema = pl.read_parquet_schema(path)
                self.num_rows = pq.ParquetFile(path).metadata.num_rows
            else:
                self.schema = dict(pl.scan_csv(path).collect_schema())
                self.num_rows = pl.scan_csv(path).select(pl.len()).collect().item()
        except (OSError, pl.exceptions.PolarsError, pa.ArrowException) as exc:
            raise DatasetError(f"{path}: cannot read the input: {_one_line(exc)}") from None
        if limit_rows is not None:
            self.num_rows = min(self.num_rows, limit_rows)
        if id_column is not None:
            if id_column not in self.schema:
                raise DatasetError(f"{path}: id column {id_column!r} is not in the dataset")
            self._check_ids(id_column)

    def _check_ids(self, column: str) -> None:
        """Ids must be unique and present, and that is known before the first call: reading
        the one column costs little next to finding a duplicate after paying for rows."""
        scan = pl.scan_parquet(self.path) if self.format == "parquet" else pl.scan_csv(self.path)
        if self.limit_rows is not None:
            scan = scan.head(self.limit_rows)
        try:
            ids = scan.select(pl.col(column)).with_row_index("row").collect()
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise DatasetError(f"{self.path}: cannot read the input: {_one_line(exc)}") from None
        nulls = ids.filter(pl.col(column).is_null())
        if nulls.height:
            row = nulls["row"][0]
            raise DatasetError(f"{self.path}: row {row}: id column {column!r} is null")
        repeats = ids.filter(~pl.col(column).is_first_distinct())
        if repeats.height:
            row, value = repeats["row"][0], repeats[column][0]
            raise DatasetError(
                f"{self.path}: row {row}: duplicate id {value!r} in column {column!r}"
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
            if self.format == "csv":
                _require_utf8(record_batch, path=self.path, start=start)
            frame = pl.from_arrow(record_batch)
            assert isinstance(frame, pl.DataFrame)
            if self.id_column is None:
                row_ids: list[object] = list(range(start, start + frame.height))
            else:
                row_ids = frame.get_column(self.id_column).to_list()
            yield Batch(start=start, frame=frame, row_ids=row_ids)
            start += frame.height

    def _record_batches(self) -> Iterator[pa.RecordBatch]:
        try:
            if self.format == "parquet":
                yield from pq.ParquetFile(self.path).iter_batches(batch_size=self.batch_rows)
            else:
                options = pacsv.ReadOptions(block_size=max(1 << 20, self.batch_rows * 256))
                with pacsv.open_csv(self.path, read_options=options) as reader:
                    for record_batch in reader:
                        # CSV blocks are sized in bytes; re-cut them to the batch size in rows
                        for offset in range(0, record_batch.num_rows, self.batch_rows):
                            yield record_batch.slice(offset, self.batch_rows)
        except (OSError, pa.ArrowException) as exc:
            raise DatasetError(f"{self.path}: cannot read the input: {_one_line(exc)}") from None


def _require_utf8(batch: pa.RecordBatch, *, path: Path, start: int) -> None:
    """pyarrow reads text that is not UTF-8 as bytes; name the first bad cell instead."""
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if not (pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)):
            continue
        for offset, value in enumerate(column.to_pylist()):
            try:
                if value is not None:
                    value.decode("utf-8")
            except UnicodeDecodeError:
                raise DatasetError(
                    f"{path}: row {start + offset}: column {field.name!r} is not valid UTF-8;"
                    " save the file as UTF-8"
                ) from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
