"""What the benchmarks share: datasets, simulator tables, job files, measured runs, RESULTS.md.

Every benchmark runs the simulator in its own process and batchroute as the real CLI in
another, so client and server never share an event loop; peak RSS and CPU are those of the
batchroute process alone (`os.wait4` on its pid).
"""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
MODEL = "openai/gpt-4o-mini"
STRONG = "anthropic/claude-opus-4-8"
PROMPT = "Classify ticket {id}: {text}"
MAX_TOKENS = 16


def command_line() -> str:
    """How this benchmark was started, for RESULTS.md; paths relative to the repository."""
    script = os.path.relpath(sys.argv[0], ROOT)
    return shlex.join([".venv/bin/python", script, *sys.argv[1:]])


def write_tasks(path: Path, rows: int) -> Path:
    """`rows` tickets with an id and a short text; built in polars so a million is quick."""
    index = pl.int_range(0, rows, eager=True)
    frame = pl.DataFrame({"i": index}).select(
        id=pl.format("t{}", pl.col("i")),
        text=pl.format("my parcel {} is late and the box was open", pl.col("i")),
    )
    frame.write_parquet(path)
    return path


def prompts(path: Path) -> list[str]:
    """The user messages batchroute renders from `PROMPT` for each row of `path`."""
    frame = pl.read_parquet(path)
    return [PROMPT.format(id=i, text=t) for i, t in frame.iter_rows()]


def sim_table(
    directory: Path,
    *,
    latency_ms: float = 0,
    rpm: int = 0,
    tpm: int = 0,
    name: str = "sim_models.toml",
) -> Path:
    """A simulator table of two models (a cheap and a strong one), equal in everything the
    benchmarks vary: latency and limits."""
    lines = ["balance_usd = 1000000.0"]
    for model, prices, skill in ((MODEL, (0.15, 0.60), 0.55), (STRONG, (5.0, 25.0), 0.93)):
        lines += [
            f'[models."{model}"]',
            f"usd_per_mtok = {{ input = {prices[0]}, output = {prices[1]} }}",
            f"latency_ms = {{ mean = {latency_ms}, jitter = 0 }}",
            f"skill = {skill}",
            f"rpm = {rpm}",
            f"tpm = {tpm}",
        ]
    path = directory / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def job_file(
    directory: Path,
    *,
    data: Path,
    base_url: str,
    route: str = f'strategy = "fixed"\nmodel = "{MODEL}"',
    concurrency: int = 64,
    models: str = "",
    extra: str = "",
    transport: str = "aiohttp",
    params: str = f"max_tokens = {MAX_TOKENS}",
    name: str = "job.toml",
) -> Path:
    """A job over `data` against `base_url`; outputs and the store go under `directory`."""
    stem = name.removesuffix(".toml")
    text = f"""
[input]
path = "{data}"
id = "id"
prompt = "{PROMPT}"
[output]
path = "{directory}/out/{stem}.parquet"
[endpoint]
base_url = "{base_url}"
transport = "{transport}"
[store]
path = "{directory}/{stem}.sqlite"
[route]
{route}
[params]
{params}
[run]
concurrency = {concurrency}
{models}
{extra}
"""
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


@dataclass(frozen=True, slots=True)
class Measured:
    """One finished process: wall and CPU seconds, peak RSS, what it printed."""

    wall_s: float
    cpu_s: float
    max_rss_mb: float
    stdout: str
    stderr: str


def measure(cmd: Sequence[str], *, env: dict[str, str] | None = None) -> Measured:
    """Run `cmd` to the end; its own rusage (not its siblings'), read with wait4."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(cmd), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, text=True
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {process.returncode}:\n{stderr}")
    return Measured(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_rss_mb=usage.ru_maxrss / 1024,  # kilobytes on Linux
        stdout=stdout,
        stderr=stderr,
    )


def batchroute(job: Path, *args: str) -> Measured:
    """`batchroute run JOB --force -q ...` as a separate process."""
    cmd = [sys.executable, "-m", "batchroute", "run", str(job), "--force", "-q", *args]
    return measure(cmd)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def write_section(key: str, title: str, body: str) -> None:
    """Replace this benchmark's section of RESULTS.md (or append it), leaving the rest."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n## {title} ({date.today().isoformat()})\n\n{body.strip()}\n{end}"
    text = RESULTS.read_text(encoding="utf-8")
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text, encoding="utf-8")
    print(block)


def verdict(ok: bool) -> str:
    return "holds" if ok else "**does not hold**"
