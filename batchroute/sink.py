"""Parquet outputs written incrementally under a temporary name, renamed into place at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from batchroute.errors import OutputError, one_line

METADATA_KEY = "batchroute"


class ParquetSink:
    """One output file. Writes are blocking: call them from a worker thread, one at a time.

    Until `finish`, rows go to a hidden temporary file beside the target, so a crash or a bad
    run never replaces a good earlier output with a partial one.
    """

    def __init__(
        self,
        path: Path,
        *,
        schema: dict[str, pl.DataType],
        metadata: dict[str, Any],
        run_id: str,
    ) -> None:
        self.path = path
        self._tmp = path.with_name(f".{path.name}.{run_id}.partial")
        self._schema = pl.DataFrame(schema=schema).to_arrow().schema
        self._metadata = metadata
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(
                self._tmp,
                self._schema.with_metadata({METADATA_KEY: json.dumps(self._metadata, default=str)}),
                compression="zstd",
            )
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write the output: {one_line(exc)}") from None

    def write(self, frame: pl.DataFrame) -> None:
        assert self._writer is not None, "open() first"
        if frame.height == 0:
            return
        table = frame.to_arrow().cast(self._schema)
        self._writer.write_table(table)
        self.rows += frame.height

    def finish(self, extra_metadata: dict[str, Any]) -> None:
        """Close with the final metadata (summary included) and move into place atomically."""
        assert self._writer is not None, "open() first"
        self._metadata.update(extra_metadata)
        self._writer.add_key_value_metadata({METADATA_KEY: json.dumps(self._metadata, default=str)})
        writer, self._writer = self._writer, None
        try:
            writer.close()
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            raise OutputError(f"{self.path}: cannot write the output: {one_line(exc)}") from None

    def abort(self) -> None:
        """Drop the temporary file, if `open` made one and `finish` did not move it into
        place; whatever sat at `path` before stays untouched."""
        if self._writer is None:
            return  # never opened (its error is the one to report), or finished
        self._writer.close()
        self._writer = None
        self._tmp.unlink(missing_ok=True)


def read_metadata(path: Path | str) -> dict[str, Any]:
    """The batchroute metadata of an output file: run id, version, job settings, summary."""
    raw = pq.read_metadata(path).metadata or {}
    value = raw.get(METADATA_KEY.encode())
    return json.loads(value) if value else {}
