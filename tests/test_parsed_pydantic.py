"""Pydantic models in the Python API: a job answering in a model's schema, runs read into it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import polars as pl
import pytest
from helpers import job_text, write_job, write_tasks
from pydantic import BaseModel

import batchroute
from batchroute.parsed import AnswerParser
from batchroute.sim import SimulatorHandle

pytestmark = pytest.mark.timeout(180)


class Ticket(BaseModel):
    answer: Literal["billing", "refund", "shipping", "bug", "account", "cancel", "feature", "other"]
    confidence: float
    urgent: bool | None = None
    tags: list[str] = []


class Evidence(BaseModel):
    quote: str
    position: int


class Finding(BaseModel):
    ticket: Ticket
    evidence: list[Evidence]
    severity: int | None = None
    extra: dict[str, int] = {}


def test_a_nested_model_maps_through_its_refs() -> None:
    parser = AnswerParser(Finding.model_json_schema())
    ticket = pl.Struct(
        {
            "answer": pl.String(),
            "confidence": pl.Float64(),
            "urgent": pl.Boolean(),
            "tags": pl.List(pl.String()),
        }
    )
    evidence = pl.List(pl.Struct({"quote": pl.String(), "position": pl.Int64()}))
    assert parser.dtype == pl.Struct(
        {"ticket": ticket, "evidence": evidence, "severity": pl.Int64(), "extra": pl.String()}
    )
    finding = Finding(
        ticket=Ticket(answer="bug", confidence=0.9, tags=["app"]),
        evidence=[Evidence(quote="it crashes", position=3)],
        extra={"a": 1},
    )
    assert parser.read(finding.model_dump_json()) == {
        "ticket": {"answer": "bug", "confidence": 0.9, "urgent": None, "tags": ["app"]},
        "evidence": [{"quote": "it crashes", "position": 3}],
        "severity": None,
        "extra": '{"a":1}',  # a map: JSON text
    }


def _job(tmp_path: Path, sim: SimulatorHandle, *, check: str = "") -> Path:
    write_tasks(tmp_path, 40)
    return write_job(
        tmp_path,
        job_text(
            base_url=sim.base_url,
            route='strategy = "cascade"\ntiers = ["t/cheap", "t/strong"]',
            extra="[params]\nmax_tokens = 120\n" + check,
        ),
    )


def test_a_response_model_sets_the_format_the_check_and_the_parsed_column(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    job = batchroute.load_job(_job(tmp_path, fresh_sim), response_model=Ticket)

    response = job.params.response_format
    assert response is not None and response.type == "json_schema" and response.name == "Ticket"
    assert response.schema_ == Ticket.model_json_schema()
    assert [c.type for c in job.check or ()] == ["json_schema"]
    report = batchroute.run(job)

    results = pl.read_parquet(report.results_path)
    assert results.schema["parsed"] == pl.Struct(
        {
            "answer": pl.String(),
            "confidence": pl.Float64(),
            "urgent": pl.Boolean(),
            "tags": pl.List(pl.String()),
        }
    )
    # The cheap model's schema-breaking answers escalated; every final answer validates.
    assert results["escalated"].any() and results["check_passed"].all()
    run = batchroute.read_run(report.results_path)
    tickets = run.parsed(Ticket)
    assert len(tickets) == 40 and all(isinstance(t, Ticket) for t in tickets)
    frame = run.parsed()
    assert frame["answer"].to_list() == [t.answer for t in tickets if t is not None]
    assert frame["confidence"].to_list() == [t.confidence for t in tickets if t is not None]


def test_a_response_model_replaces_a_check_schema_and_keeps_other_checks(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    checks = (
        '[[check]]\ntype = "json_schema"\nschema = { type = "object", required = ["x"] }\n'
        '[[check]]\ntype = "confidence"\npath = "confidence"\nthreshold = 0.5\n'
    )
    job = batchroute.load_job(_job(tmp_path, fresh_sim, check=checks)).with_response_model(Ticket)
    assert [(c.type, c.schema_) for c in job.check or ()] == [
        ("json_schema", None),  # the response format's schema, Ticket's
        ("confidence", None),
    ]
    report = batchroute.run(job)
    results = pl.read_parquet(report.results_path)
    # Had the old schema (requiring "x") been kept, no answer would have passed.
    assert results["check_passed"].any()


def test_parsed_with_a_model_is_none_where_an_answer_does_not_validate(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    # A one-tier plan on the weak model: some final answers break the schema.
    write_tasks(tmp_path, 40)
    body = job_text(
        base_url=fresh_sim.base_url,
        route='strategy = "fixed"\nmodel = "t/cheap"',
        extra="[params]\nmax_tokens = 120\n",
    )
    job = batchroute.load_job(write_job(tmp_path, body), response_model=Ticket)
    report = batchroute.run(job)
    run = batchroute.read_run(report.results_path)
    tickets = run.parsed(Ticket)
    passed = run.results["check_passed"].to_list()
    assert False in passed and True in passed
    for ticket, ok, answer in zip(tickets, passed, run.results["answer"], strict=True):
        assert (ticket is not None) == ok, answer
        if ticket is not None:
            assert ticket == Ticket.model_validate(json.loads(answer))


ROOT = Path(__file__).resolve().parent.parent
_MARK = "<!-- tested: tests/test_parsed_pydantic.py runs this block -->\n```python\n"


def test_the_readme_pydantic_example_runs_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index(_MARK) + len(_MARK)
    code = readme[start : readme.index("```", start)]
    # A copy of the repository's layout, so the example writes nothing into the repository.
    (tmp_path / "jobs").mkdir()
    shutil.copy(ROOT / "jobs/demo.toml", tmp_path / "jobs/demo.toml")
    (tmp_path / "data").symlink_to(ROOT / "data", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {"__name__": "readme_example"}

    # dont_inherit: run as a reader would, without this module's `from __future__` import.
    exec(compile(code, "README.md", "exec", dont_inherit=True), scope)

    tickets, sure = scope["tickets"], scope["sure"]
    assert isinstance(tickets, list) and len(tickets) == 3000
    assert isinstance(sure, list) and 0 < len(sure) < len(tickets)
    assert (tmp_path / "out/demo.ticket.parquet").is_file()
    results = pl.read_parquet(tmp_path / "out/demo.ticket.parquet")
    assert results.schema["parsed"] == pl.Struct(
        {"answer": pl.String(), "confidence": pl.Float64()}
    )
