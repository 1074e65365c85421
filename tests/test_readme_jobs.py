"""Every job in README.md runs as shown, on the embedded simulator, and prints what it says.

A ```toml block is a whole job unless the line before it says otherwise: `<!-- not a full job:
part of jobs/NAME.toml -->` (every key it sets has that value in the job, which is run), or
another `<!-- not a full job: ... -->` (checked for what it is, not run).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli

from batchroute.job import Job
from batchroute.sim import load_sim_config

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
_BLOCK = re.compile(r"(?:<!-- (?P<note>[^\n]*?) -->\n)?```toml\n(?P<body>.*?)```", re.DOTALL)
_PART_OF = re.compile(r"not a full job: part of (?P<job>jobs/\S+\.toml)")

BLOCKS = [(m.group("note") or "", m.group("body")) for m in _BLOCK.finditer(README)]
JOBS = [body for note, body in BLOCKS if not note]
PARTS = [(note, body) for note, body in BLOCKS if note]


def _stated(after: str, *, fence: str = "```") -> str:
    """The first plain ``` block after the text `after`: a summary the README quotes."""
    start = README.index(after)
    block = README.index(fence + "\n", start) + len(fence) + 1
    return README[block : README.index(fence, block)]


def _sandbox(tmp_path: Path) -> Path:
    """A copy of the repository's layout: jobs/ to write into, data/ as it is."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "data").symlink_to(ROOT / "data", target_is_directory=True)
    return tmp_path / "jobs"


def _run(job: Path) -> str:
    done = run_cli("run", job, "-q", timeout=240)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_the_readme_has_jobs_and_marks_every_partial_block() -> None:
    assert len(JOBS) >= 1 and len(BLOCKS) == README.count("```toml")
    for note, _ in PARTS:
        assert note.startswith("not a full job"), note


def test_the_first_job_runs_verbatim_and_ends_as_the_readme_says(tmp_path: Path) -> None:
    # "Run it with `batchroute run jobs/demo.toml`": it is that job, comments aside.
    assert tomllib.loads(JOBS[0]) == tomllib.loads((ROOT / "jobs/demo.toml").read_text())
    job = _sandbox(tmp_path) / "readme_job.toml"
    job.write_text(JOBS[0], encoding="utf-8")
    first = _one_line(_run(job))
    # "The demo ... ends with:" and the line it quotes, all but the time taken.
    stated = _one_line(_stated("ends with:"))
    stated_figures = stated[: stated.index("; balance")]
    assert stated_figures.startswith("3000 rows: 3000 ok (336 failed the check on every tier)")
    assert first.startswith(stated_figures), first
    # "Run it again and every call comes from the call store: the summary then says ..."
    again = _run(job)
    assert "new spend $0.0000, cached $0.7701" in again


@pytest.mark.parametrize("index", range(1, len(JOBS)), ids=lambda i: f"job{i + 1}")
def test_every_other_readme_job_runs(tmp_path: Path, index: int) -> None:
    job = _sandbox(tmp_path) / "readme_job.toml"
    job.write_text(JOBS[index], encoding="utf-8")
    _run(job)


def _subset(part: Any, whole: Any, *, where: str = "") -> None:
    """Every key `part` sets has the same value in `whole`; a list is compared by position."""
    if isinstance(part, dict):
        assert isinstance(whole, dict), where
        for key, value in part.items():
            assert key in whole, f"{where}.{key} is not in the job"
            _subset(value, whole[key], where=f"{where}.{key}")
    elif isinstance(part, list) and part and isinstance(part[0], dict):
        assert isinstance(whole, list) and len(part) <= len(whole), where
        for number, (mine, theirs) in enumerate(zip(part, whole, strict=False)):
            _subset(mine, theirs, where=f"{where}[{number}]")
    else:
        assert part == whole, where


PART_JOBS = sorted({m.group("job") for note, _ in PARTS if (m := _PART_OF.search(note))})


@pytest.mark.parametrize("job_name", PART_JOBS)
def test_a_readme_fragment_is_what_its_job_file_holds_and_that_job_runs(
    tmp_path: Path, job_name: str
) -> None:
    source = ROOT / job_name
    whole = tomllib.loads(source.read_text(encoding="utf-8"))
    for note, body in PARTS:
        if job_name in note:
            _subset(tomllib.loads(body), whole)
    job = _sandbox(tmp_path) / source.name
    job.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    for extra in source.parent.glob("*.py"):  # a job's python checks sit beside it
        (job.parent / extra.name).write_text(extra.read_text(encoding="utf-8"))
    stdout = _run(job)
    if job_name == "jobs/shadow.toml":
        # "From `jobs/shadow.toml`:" and the two summary lines the README quotes.
        for line in _stated("`jobs/shadow.toml`:\n").strip().splitlines():
            assert line in stdout, line


def test_the_other_fragments_are_what_they_say(tmp_path: Path) -> None:
    base = tomllib.loads(JOBS[0])
    for note, body in PARTS:
        if _PART_OF.search(note):
            continue
        fragment = tomllib.loads(body)
        if note == "not a full job: the checks of a job":
            Job.model_validate({**base, **fragment})
        elif note == "not a full job: a batch tier's settings":
            models = {**base["models"], **fragment["models"]}
            Job.model_validate({**base, "models": models, "run": fragment["run"]})
        elif note == "not a full job: the table `tune` adds to a tuned job":
            assert Job.model_validate({**base, **fragment}).tune is not None
        elif note == "not a full job: a simulator model table":
            table = tmp_path / "models.toml"
            table.write_text(body, encoding="utf-8")
            assert load_sim_config(table).models
        else:
            raise AssertionError(f"no test knows the README block marked {note!r}")
