"""The HTML report opened in a real headless Chromium: it renders its table and both charts,
logs no console error, and fetches nothing but itself."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from browser import chromium, open_page
from helpers import run_cli
from run_fixtures import cascade_run, cheap_run, top_run

from batchroute.comparison import compare_runs
from batchroute.report import render_report
from batchroute.runs import read_run

needs_chromium = pytest.mark.skipif(
    chromium() is None,
    reason="chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)",
)

# Evaluated in the page: what a reader would see, measured by the browser's own layout.
PROBE = """(() => {
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  const texts = (sel) => [...document.querySelectorAll(sel)].map((e) => e.textContent.trim());
  return {
    title: document.title,
    headers: texts("#comparison thead th"),
    rows: texts("#comparison tbody tr td:first-child"),
    table: box(document.querySelector("#comparison")),
    plans: texts("#plans tbody tr td:last-child"),
    charts: [...document.querySelectorAll("svg.chart")].map((s) => [s.id, ...box(s)]),
    runs: document.querySelectorAll("#cost-quality circle.run").length,
    onFront: texts("#cost-quality circle.on-front title"),
    front: box(document.querySelector("#cost-quality path.front")),
    labels: texts("#cost-quality text.label"),
    segments: document.querySelectorAll("#model-mix rect.segment").length,
    overflow: document.documentElement.scrollWidth > window.innerWidth,
  };
})()"""


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [cheap_run(tmp_path), top_run(tmp_path), cascade_run(tmp_path)]


def test_report_is_one_self_contained_page(runs: list[Path]) -> None:
    page = render_report(compare_runs([read_run(p) for p in runs]))
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "default-src 'none'" in page  # the browser may fetch nothing at all
    for outside in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert outside not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


@needs_chromium
def test_report_renders_in_chromium(tmp_path: Path, runs: list[Path]) -> None:
    report = tmp_path / "report.html"
    result = run_cli("report", *runs, "--truth", "expected", "-o", report, "--title", "Tickets")
    assert result.returncode == 0, result.stderr

    visit = open_page(report, probe=PROBE)
    shot = tmp_path / "report.png"
    shot.write_bytes(visit.screenshot)
    if os.environ.get("BATCHROUTE_SCREENSHOTS"):  # to look at it: keep a copy
        shutil.copy(shot, Path(os.environ["BATCHROUTE_SCREENSHOTS"]) / "report.png")

    assert visit.errors == [], visit.console
    assert visit.requests == [report.resolve().as_uri()]
    seen = visit.probe
    assert seen["title"] == "Tickets"
    assert seen["rows"] == ["cheap", "top", "cascade"]
    assert {"$/1k rows", "saving", "accuracy", "kept", "p95 s"} <= set(seen["headers"])
    assert seen["table"][0] > 600 and not seen["overflow"]
    assert seen["plans"][2] == "m/cheap 50.0%, m/mid 25.0%, m/top 25.0%"
    charts = {name: (width, height) for name, width, height in seen["charts"]}
    assert set(charts) == {"cost-quality", "model-mix"}
    assert all(width >= 400 and height >= 150 for width, height in charts.values())
    # cheap ($1.00 per 1k, 50%) and cascade ($5.75, 75%) are on the front; top is dominated.
    assert seen["runs"] == 3
    assert sorted(t.split(":")[0] for t in seen["onFront"]) == ["cascade", "cheap"]
    assert seen["front"][0] > 50 and seen["front"][1] > 20
    assert sorted(seen["labels"]) == ["cascade", "cheap", "top"]
    assert seen["segments"] == 5
    assert len(visit.screenshot) > 30_000 and visit.screenshot[:4] == b"\x89PNG"


@needs_chromium
def test_report_without_truth_says_what_is_missing(tmp_path: Path, runs: list[Path]) -> None:
    report = tmp_path / "report.html"
    assert run_cli("report", *runs, "-o", report).returncode == 0
    probe = "document.querySelector('#cost-quality').textContent"
    visit = open_page(report, probe=probe)
    assert visit.errors == []
    assert "pass --truth COLUMN" in visit.probe
