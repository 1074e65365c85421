"""CSV input: one schema for the whole file, decided before the first call, and its reader.

A CSV file carries no types. They are inferred once, by polars over every row of the file,
then each column's type is handed to pyarrow's streaming reader, which converts every batch
with it; a check pass reads the whole file with that same reader before any call, so a value
that does not fit its column stops the run before it pays for anything, naming the row.
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from batchroute.errors import DatasetError, one_line
from batchroute.job import ColumnType

ARROW_TYPES: dict[str, pa.DataType] = {
    "str": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),  # ISO dates, 2024-01-31
}
POLARS_TYPES: dict[str, pl.DataType] = {
    "str": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
}
# A value like `007` or `-01` reads as a number but is a code: an integer loses its zeros.
_LEADING_ZERO = r"^\s*[+-]?0\d"
_UTF8_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class CsvLayout:
    """The column types of a CSV file, in file order, and how to stream it with them."""

    types: dict[str, ColumnType]

    def polars_schema(self) -> dict[str, pl.DataType]:
        return {name: POLARS_TYPES[kind] for name, kind in self.types.items()}

    @contextmanager
    def reader(
        self, path: Path, *, block_bytes: int, as_text: bool = False
    ) -> Iterator[pacsv.CSVStreamingReader]:
        """pyarrow's streaming reader with these types (every column as text: `as_text`)."""
        read = pacsv.ReadOptions(block_size=block_bytes)
        with pacsv.open_csv(
            path,
            read_options=read,
            parse_options=self.parse_options(),
            convert_options=self.convert_options(as_text=as_text),
        ) as stream:
            yield stream

    def convert_options(self, *, as_text: bool = False) -> pacsv.ConvertOptions:
        """How each field converts: these types (the Ray engine's reader uses them too)."""
        column_types = {
            name: pa.string() if as_text else ARROW_TYPES[kind] for name, kind in self.types.items()
        }
        return pacsv.ConvertOptions(
            column_types=column_types,
            # What polars reads as null: an empty field, in a column of numbers, booleans or
            # dates; text keeps its empty strings (the prompt names an empty column).
            null_values=[""],
            quoted_strings_can_be_null=True,
            true_values=_every_case("true"),
            false_values=_every_case("false"),
        )

    @staticmethod
    def parse_options() -> pacsv.ParseOptions:
        # Quoted fields may span lines (prompts often do); polars reads them so, and so must
        # this reader, or the two would count different rows.
        return pacsv.ParseOptions(newlines_in_values=True)


def _every_case(word: str) -> list[str]:
    """polars reads `true` in any case (`tRuE`); pyarrow takes a list of spellings."""
    return ["".join(s) for s in itertools.product(*((c.lower(), c.upper()) for c in word))]


def require_utf8(path: Path, *, where: str) -> None:
    """Name the first line that is not UTF-8; pyarrow and polars would only say "invalid"."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 1
    with path.open("rb") as handle:
        while chunk := handle.read(_UTF8_CHUNK):
            pending = decoder.getstate()[0]
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                seen = (pending + chunk)[: exc.start]
                line = lines + seen.count(b"\n")
                column = len(seen) - (seen.rfind(b"\n") + 1) + 1
                raise DatasetError(
                    f"{where}: line {line}, byte {column}: not valid UTF-8"
                    f" ({exc.object[exc.start : exc.start + 1]!r}); save the file as UTF-8"
                ) from None
            lines += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DatasetError(
                f"{where}: line {lines}: ends inside a UTF-8 character; save the file as UTF-8"
            ) from None


def infer_layout(path: Path, *, overrides: Mapping[str, ColumnType], where: str) -> CsvLayout:
    """Every column's type: the job's `input.schema` first, else inferred over the whole file.

    A full scan (`infer_schema_length=None`), because a sample guesses: a text value after
    100,000 numbers made a run fail after 88,306 paid calls. It costs about a second per
    100 MB (3 million rows, 245 MB: 2.4 s; with the UTF-8 scan, the leading-zero scan and
    the check pass, the whole opening takes about 8 s on 2 cores), a fraction of what that
    file's calls take, and nothing is paid before it ends.
    """
    try:
        inferred = pl.scan_csv(path, infer_schema_length=None).collect_schema()
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise DatasetError(f"{where}: cannot read the input: {one_line(exc)}") from None
    for column in overrides:
        if column not in inferred:
            raise DatasetError(
                f"{where}: input.schema names column {column!r}, which is not in the file"
                f" (columns: {', '.join(inferred)})"
            )
    types: dict[str, ColumnType] = {}
    for name, dtype in inferred.items():
        types[name] = overrides.get(name) or _kind(dtype)
    guessed_ints = [n for n, kind in types.items() if kind == "int" and n not in overrides]
    for name in _with_leading_zeros(path, guessed_ints, where=where):
        types[name] = "str"
    return CsvLayout(types)


_FITS_INT64 = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)


def _kind(dtype: pl.DataType) -> ColumnType:
    if dtype.is_integer():
        # Digits past int64 (polars guesses Int128) are kept exactly, as text.
        return "int" if dtype in _FITS_INT64 else "str"
    if dtype.is_float():
        return "float"
    if dtype == pl.Boolean:
        return "bool"
    return "str"  # text, an empty column, anything polars might guess beyond these


def _with_leading_zeros(path: Path, columns: list[str], *, where: str) -> list[str]:
    if not columns:
        return []
    text = pl.scan_csv(path, infer_schema=False)
    query = text.select(pl.col(c).str.contains(_LEADING_ZERO).any() for c in columns)
    try:
        found = query.collect().row(0)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise DatasetError(f"{where}: cannot read the input: {one_line(exc)}") from None
    return [c for c, zeros in zip(columns, found, strict=True) if zeros]


def bad_value(path: Path, layout: CsvLayout, *, block_bytes: int) -> str | None:
    """Where the first value that does not fit its column's type is ("row N: ..."), if found.

    Read again as text and cast batch by batch: only when a read with the types has failed.
    """
    typed = {n: ARROW_TYPES[k] for n, k in layout.types.items() if k != "str"}
    row = 0
    with layout.reader(path, block_bytes=block_bytes, as_text=True) as stream:
        for batch in stream:
            for name, target in typed.items():
                values = batch.column(name)
                blank = pc.equal(values, "")
                values = pc.if_else(blank, pa.scalar(None, pa.string()), values)
                if _casts(values, target):
                    continue
                for offset, value in enumerate(values.to_pylist()):
                    if not _casts(pa.array([value], pa.string()), target):
                        kind = layout.types[name]
                        return f"row {row + offset}: column {name!r}: {value!r} is not {kind}"
            row += batch.num_rows
    return None


def _casts(values: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True
