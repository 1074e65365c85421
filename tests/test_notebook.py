"""Notebooks: rich HTML for a RunReport, a Run and a Comparison; examples/explore.ipynb runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import batchroute
from batchroute import RunOptions, RunReport, load_job, read_run

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
ROWS = 200


class _Page(HTMLParser):
    """What a fragment holds: its text, the cells of each table row, tags seen, unclosed."""

    VOID = frozenset({"br", "hr", "img", "meta", "input", "link"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.rows: list[list[str]] = []
        self.tags: list[str] = []
        self.open: list[str] = []
        self._cell: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in self.VOID and not tag.startswith(("circle", "rect", "line", "path")):
            self.open.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.open and self.open[-1] == tag:
            self.open.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def _demo_job(name: str, out: Path) -> batchroute.Job:
    job = load_job(ROOT / f"jobs/{name}.toml")
    return job.model_copy(
        update={
            "output": job.output.model_copy(update={"path": out / f"demo.{name}.parquet"}),
            "store": job.store.model_copy(update={"path": out / "store.sqlite"}),
        }
    )


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[RunReport]:
    out = tmp_path_factory.mktemp("runs")
    return [
        batchroute.run(_demo_job(name, out), RunOptions(limit_rows=ROWS))
        for name in ("demo", "top")
    ]


def test_a_run_report_shows_its_summary_figures_and_paths(reports: list[RunReport]) -> None:
    report = reports[0]
    page = _Page(report._repr_html_())
    assert not page.open and "script" not in page.tags
    assert report.run_id in page.all_text and report.summary_line in page.all_text
    figures = {row[0]: row[1] for row in page.rows[1:]}
    assert figures["rows"] == str(ROWS) and figures["ok"] == str(report.summary["ok"])
    assert figures["escalation_rate"] == f"{report.summary['escalation_rate']:.1%}"
    assert figures["cost_usd"] == f"${report.summary['cost_usd']:.4f}"
    assert str(report.results_path) in page.all_text and str(report.calls_path) in page.all_text


def test_a_run_shows_its_first_rows_with_the_parsed_fields(reports: list[RunReport]) -> None:
    run = read_run(reports[0].results_path)
    page = _Page(run._repr_html_())
    assert not page.open and "script" not in page.tags
    assert run.name in page.all_text and run.metadata["run_id"] in page.all_text
    header = next(row for row in page.rows if row and row[0].startswith("row_id"))
    assert "parsed.answer (String)" in header and "parsed.confidence (Float64)" in header
    preview = page.rows[page.rows.index(header) + 1 :]
    assert len(preview) == 5
    flat = run.results.head(5).select("row_id", "parsed").unnest("parsed")
    column = header.index("parsed.answer (String)")
    assert [r[column] for r in preview] == [
        "null" if v is None else v for v in flat["answer"].to_list()
    ]
    assert [r[0] for r in preview] == [str(v) for v in flat["row_id"]]


def test_a_comparison_shows_the_table_notes_and_both_charts(reports: list[RunReport]) -> None:
    table = batchroute.compare_table(
        [r.results_path for r in reports], truth="expected", answer_path="answer"
    )
    page = _Page(table._repr_html_())
    assert not page.open and "script" not in page.tags
    header = page.rows[0]
    assert header[:2] == ["run", "strategy"] and "accuracy" in header and "kept" in header
    by_run = {row[0]: row for row in page.rows[1:3]}
    assert set(by_run) == {"demo.demo", "demo.top"}
    accuracy = header.index("accuracy")
    for record in table.frame.iter_rows(named=True):
        assert by_run[record["run"]][accuracy] == f"{record['accuracy']:.1%}"
    for note in table.notes:
        assert " ".join(note.split()) in page.all_text
    assert page.tags.count("svg") == 2 and page.all_text.count("demo.top") >= 2
    # The same table `compare` returns as a frame.
    assert table.frame.equals(
        batchroute.compare(
            [r.results_path for r in reports], truth="expected", answer_path="answer"
        )
    )


def test_html_escapes_what_the_data_holds(tmp_path: Path) -> None:
    import polars as pl

    from batchroute.notebook_html import _frame

    html = _frame(pl.DataFrame({"answer": ["<script>alert(1)</script>"]}))
    page = _Page(html)
    assert "script" not in page.tags and "<script>alert(1)</script>" in page.all_text


# Loaded by every Python process of the notebook's kernel (and the simulator it starts): any
# connection to another address than loopback fails, which fails the cell that made it.
_LOOPBACK_ONLY = """
import socket

_connect = socket.socket.connect


def _loopback_only(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
        "127.0.0.1", "::1", "localhost"
    ):
        raise OSError(f"test_notebook: a connection to {address[0]}; only loopback is allowed")
    return _connect(self, address)


socket.socket.connect = _loopback_only
"""


def test_the_example_notebook_runs_in_a_kernel_talking_only_to_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    # A copy of the repository's layout, so the notebook writes nothing into the repository.
    for name in ("examples", "jobs"):
        (tmp_path / name).mkdir()
    shutil.copy(ROOT / "examples/explore.ipynb", tmp_path / "examples")
    for job in ("demo", "fixed", "top"):
        shutil.copy(ROOT / f"jobs/{job}.toml", tmp_path / "jobs")
    (tmp_path / "data").symlink_to(ROOT / "data", target_is_directory=True)
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(_LOOPBACK_ONLY, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(guard))
    probe = subprocess.run(
        [sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 9), 1)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "only loopback is allowed" in probe.stderr  # the guard is in force

    notebook = nbformat.read(tmp_path / "examples/explore.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells)  # stored without outputs
    client = nbclient.NotebookClient(
        notebook,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path / "examples")}},
    )
    client.execute()  # raises CellExecutionError on any cell's error

    outputs = [cell.get("outputs", []) for cell in notebook.cells if cell.cell_type == "code"]
    html = [
        "".join(o.get("data", {}).get("text/html", "") for o in cell_outputs)
        for cell_outputs in outputs
    ]
    assert "batchroute run" in html[1]  # the RunReport
    assert "parsed.answer (String)" in html[2]  # the Run, with its parsed fields
    assert "accuracy" in html[5] and "mean_confidence" in html[5]  # per model
    assert "<svg" in html[6] and "Cost versus quality" in html[6]  # the comparison
    svg = "".join(o.get("data", {}).get("image/svg+xml", "") for o in outputs[7])
    assert 'id="cost-quality"' in svg
    for name in ("cascade", "fixed", "top"):
        assert (tmp_path / f"out/demo.{name}.parquet").is_file()
