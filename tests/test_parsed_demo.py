"""The demo's parsed answers, read with polars, pandas and duckdb: typed columns in each."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from helpers import run_cli

from batchroute import RunOptions, load_job, read_run, run
from batchroute.errors import DatasetError
from batchroute.job import Params

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
ROWS = 300


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first rows of jobs/demo.toml, on its embedded simulator, written to a temp dir."""
    out = tmp_path_factory.mktemp("demo")
    job = load_job(ROOT / "jobs/demo.toml")
    job = job.model_copy(
        update={
            "output": job.output.model_copy(update={"path": out / "demo.parquet"}),
            "store": job.store.model_copy(update={"path": out / "store.sqlite"}),
        }
    )
    report = run(job, RunOptions(limit_rows=ROWS))
    assert report.summary["rows"] == ROWS
    return report.results_path


def _expected(answer: str | None) -> tuple[str | None, float | None]:
    """What a plain reading of the answer gives for (answer, confidence)."""
    try:
        value = json.loads(answer or "")
    except json.JSONDecodeError:
        return None, None
    if not isinstance(value, dict):
        return None, None
    label, confidence = value.get("answer"), value.get("confidence")
    number = isinstance(confidence, int | float) and not isinstance(confidence, bool)
    return (
        label if isinstance(label, str) else None,
        float(confidence) if number else None,
    )


def test_polars_reads_a_typed_struct_that_unnests_into_typed_columns(demo: Path) -> None:
    results = pl.read_parquet(demo)
    assert results.schema["parsed"] == pl.Struct(
        {"answer": pl.String(), "confidence": pl.Float64()}
    )
    # The demo's schema has a field `answer`, as the results have a column: a separator
    # keeps both.
    both = results.unnest("parsed", separator=".")
    assert both.schema["parsed.answer"] == pl.String() and both.schema["answer"] == pl.String()
    flat = results.select("parsed").unnest("parsed")
    assert flat.schema["answer"] == pl.String() and flat.schema["confidence"] == pl.Float64()
    # The demo's cheap model sometimes answers in prose: those rows parse to nulls.
    raw = results["answer"].to_list()
    assert [_expected(a) for a in raw] == list(
        zip(flat["answer"].to_list(), flat["confidence"].to_list(), strict=True)
    )
    assert flat["answer"].null_count() < ROWS and flat["confidence"].drop_nulls().len() > 0
    # The calls Parquet is as it was: no parsed column there.
    assert "parsed" not in pl.read_parquet(demo.with_name("demo.calls.parquet")).columns


def test_read_run_parsed_is_row_id_and_the_fields(demo: Path) -> None:
    run_ = read_run(demo)
    frame = run_.parsed()
    assert frame.columns == ["row_id", "answer", "confidence"]
    assert frame.schema["confidence"] == pl.Float64()
    assert frame["row_id"].to_list() == run_.results["row_id"].to_list()


def test_a_run_written_without_the_column_parses_the_same_from_its_answers(
    demo: Path, tmp_path: Path
) -> None:
    # A results file from before `parsed` existed: the same file with the column dropped.
    table = pq.read_table(demo)
    older = tmp_path / "demo.parquet"
    pq.write_table(table.drop_columns(["parsed"]), older)
    (tmp_path / "demo.calls.parquet").write_bytes(demo.with_name("demo.calls.parquet").read_bytes())
    assert read_run(older).parsed().equals(read_run(demo).parsed())


def test_a_job_without_a_json_schema_has_no_parsed_column(tmp_path: Path) -> None:
    job = load_job(ROOT / "jobs/fixed.toml")
    job = job.model_copy(  # the same job with plain-text answers and no check
        update={
            "params": Params(max_tokens=16),
            "check": None,
            "output": job.output.model_copy(update={"path": tmp_path / "fixed.parquet"}),
            "store": job.store.model_copy(update={"path": tmp_path / "store.sqlite"}),
        }
    )
    report = run(job, RunOptions(limit_rows=20))
    assert "parsed" not in pl.read_parquet(report.results_path).columns
    with pytest.raises(DatasetError, match="no JSON schema"):
        read_run(report.results_path).parsed()


def test_pandas_reads_the_fields_with_their_dtypes(demo: Path) -> None:
    pd = pytest.importorskip("pandas")
    frame = pl.read_parquet(demo).select("parsed").unnest("parsed").to_pandas()
    assert pd.api.types.is_float_dtype(frame["confidence"].dtype)
    assert frame["answer"].dropna().map(type).eq(str).all()
    # pyarrow's own reading: the struct arrives as dicts with typed values.
    table = pq.read_table(demo).to_pandas()
    first = next(v for v in table["parsed"] if v is not None and v["confidence"] is not None)
    assert isinstance(first["confidence"], float) and isinstance(first["answer"], str)


def test_duckdb_reads_a_struct_with_typed_fields(demo: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    described = con.execute(f"DESCRIBE SELECT parsed.* FROM '{demo}'").fetchall()
    types = {row[0]: row[1] for row in described}
    assert types == {"answer": "VARCHAR", "confidence": "DOUBLE"}
    mean = con.execute(
        f"SELECT avg(parsed.confidence) FROM '{demo}' WHERE parsed.answer IS NOT NULL"
    ).fetchone()
    expected = (
        pl.read_parquet(demo)
        .select("parsed")
        .unnest("parsed")
        .filter(pl.col("answer").is_not_null())
    )
    assert mean is not None and mean[0] == pytest.approx(expected["confidence"].mean())


def test_an_input_column_named_parsed_is_refused_when_the_job_parses(tmp_path: Path) -> None:
    # The results would hold two `parsed` columns: refused before any call, naming the file.
    frame = pl.read_parquet(ROOT / "data/demo_tickets.parquet").head(5)
    data = tmp_path / "tickets.parquet"
    frame.with_columns(parsed=pl.lit("mine")).write_parquet(data)
    text = (ROOT / "jobs/demo.toml").read_text(encoding="utf-8")
    text = text.replace('"../data/demo_tickets.parquet"', f'"{data}"')
    text = text.replace('"../out/demo.cascade.parquet"', '"out/demo.parquet"')
    job = tmp_path / "demo.toml"
    job.write_text(text, encoding="utf-8")

    done = run_cli("run", job)

    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert f"{data}: input column 'parsed' has the name of an output column" in done.stderr
    # Without a JSON schema the name is free.
    no_schema = "\n".join(
        line
        for line in text.splitlines()
        if not line.startswith(("response_format", "[check]", 'type = "json_schema"', "schema ="))
    )
    job.write_text(no_schema, encoding="utf-8")
    done = run_cli("run", job, "-q")
    assert done.returncode == 0, done.stderr
    assert pl.read_parquet(tmp_path / "out/demo.parquet")["parsed"].to_list() == ["mine"] * 5
