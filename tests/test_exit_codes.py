"""A user's mistake ends the real CLI with exit 2 and one line; a run with no row ok, exit 5."""

from __future__ import annotations

import asyncio
import contextlib
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from helpers import job_text, run_cli, write_job, write_tasks

from batchroute import read_metadata, read_results
from batchroute.sim import SimulatorHandle

pytestmark = pytest.mark.timeout(300)

FIXED = 'strategy = "fixed"\nmodel = "t/cheap"'
RULES = """strategy = "rules"
default = "t/cheap"
[[route.rules]]
when = "task_type = 'classify'"
target = "t/broken"
"""


def _one_error_line(stderr: str) -> str:
    """The whole of stderr: one `batchroute: error:` line, without a traceback or aiohttp's
    "Unclosed connector" warnings."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("batchroute: error: "), stderr
    return lines[0]


def test_an_output_folder_that_is_a_file_is_one_line(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 5)
    (tmp_path / "out").write_text("not a folder")
    job = write_job(tmp_path, job_text(base_url=fresh_sim.base_url, route=FIXED))
    done = run_cli("run", job)
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert str(job) in line and "output.path" in line and "is a file" in line
    assert (tmp_path / "out").read_text() == "not a folder"


def test_an_output_that_cannot_be_opened_closes_the_connections_and_says_why(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    """The outputs' temporary files are opened after the connections: a failure there must
    still close them, and reach the user as itself."""
    write_tasks(tmp_path, 5)
    job = write_job(tmp_path, job_text(base_url=fresh_sim.base_url, route=FIXED))
    results = tmp_path / "out/results.parquet"
    assert run_cli("run", job).returncode == 0
    # --retry-failed reopens the earlier run, so its temporary file's name is known: make it
    # a folder, which no Parquet writer can open.
    run_id = read_metadata(results)["run_id"]
    (tmp_path / f"out/.results.parquet.{run_id}.partial").mkdir()
    before = results.read_bytes()
    done = run_cli("run", job, "--retry-failed", results)
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert str(job) in line and "output.path" in line and str(results) in line
    assert results.read_bytes() == before


MISTAKES = {
    "timeout inf": ("timeout_s = 5", "timeout_s = inf", "endpoint.timeout_s"),
    "timeout nan": ("timeout_s = 5", "timeout_s = nan", "endpoint.timeout_s"),
    "timeout 0": ("timeout_s = 5", "timeout_s = 0", "endpoint.timeout_s"),
    "timeout negative": ("timeout_s = 5", "timeout_s = -1", "endpoint.timeout_s"),
    "not http": ("SIM_URL", "ftp://127.0.0.1/v1", "endpoint.base_url"),
    "no scheme": ("SIM_URL", "127.0.0.1:8000/v1", "endpoint.base_url"),
    "port too large": ("SIM_URL", "http://127.0.0.1:99999/v1", "endpoint.base_url"),
    "port not a number": ("SIM_URL", "http://127.0.0.1:http/v1", "endpoint.base_url"),
    "password in url": ("SIM_URL", "http://me:hunter2@127.0.0.1:8000/v1", "endpoint.base_url"),
    "csv output": ("out/results.parquet", "out/results.csv", "output.path"),
    "output is the input": ("out/results.parquet", "tasks.parquet", "output.path"),
    "calls are the input": (
        'path = "out/results.parquet"',
        'path = "out/results.parquet"\ncalls = "tasks.parquet"',
        "output.calls",
    ),
    "output is the store": (
        "[run]",
        '[store]\npath = "out/results.parquet"\n\n[run]',
        "output.path",
    ),
    "output under /proc": ("out/results.parquet", "/proc/no-such/results.parquet", "output.path"),
    # Root writes anywhere it has permission bits against it; /proc refuses even root.
    "read-only output folder": ("out/results.parquet", "/proc/results.parquet", "output.path"),
    "store under a file": (
        "[run]",
        '[store]\npath = "tasks.parquet/store.sqlite"\n\n[run]',
        "store.path",
    ),
}


@pytest.mark.parametrize("case", MISTAKES.values(), ids=MISTAKES.keys())
def test_a_mistake_in_the_job_is_one_line_naming_the_key(
    tmp_path: Path, fresh_sim: SimulatorHandle, case: tuple[str, str, str]
) -> None:
    old, new, key = case
    write_tasks(tmp_path, 5)
    before = (tmp_path / "tasks.parquet").read_bytes()
    body = job_text(base_url="SIM_URL", route=FIXED)
    assert old in body
    body = body.replace(old, new).replace("SIM_URL", fresh_sim.base_url)
    job = write_job(tmp_path, body)
    done = run_cli("run", job, "--force")
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert str(job) in line and key in line
    assert "hunter2" not in line
    assert (tmp_path / "tasks.parquet").read_bytes() == before  # the input is never replaced
    assert fresh_sim.ledger()["total_charged_usd"] == 0


# --- servers that are not what the job says ------------------------------------------------


class _NotHttp(socketserver.BaseRequestHandler):
    """Reads the request, then closes at once or answers bytes that are not HTTP."""

    garbage = b""

    def handle(self) -> None:
        self.request.recv(65536)
        if self.garbage:
            self.request.sendall(self.garbage)


@pytest.fixture(params=[b"", b"\x00\xffSSH-2.0-OpenSSH_9.6\r\n\r\n"], ids=["closes", "garbage"])
def not_http(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (_NotHttp,), {"garbage": request.param})
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
        server.shutdown()


@pytest.mark.parametrize("transport", ["aiohttp", "openai"])
def test_a_port_that_does_not_speak_http_is_one_line(
    tmp_path: Path, not_http: str, transport: str
) -> None:
    write_tasks(tmp_path, 5)
    job = write_job(tmp_path, job_text(base_url=not_http, route=FIXED, transport=transport))
    done = run_cli("run", job)
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert str(job) in line and "endpoint.base_url: cannot reach" in line


def test_a_run_in_which_every_row_failed_exits_5_and_suggests_v1(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 6)
    root = fresh_sim.base_url.removesuffix("/v1")  # the simulator serves only under /v1
    job = write_job(tmp_path, job_text(base_url=root, route=FIXED))
    done = run_cli("run", job)
    assert done.returncode == 5, done.stderr
    assert "Traceback" not in done.stderr
    assert "most common error (6 rows): http_404" in done.stdout  # the summary line
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"batchroute: error: {job}: no row ended ok")
    assert "http_404" in last and f'did you mean endpoint.base_url = "{root}/v1"?' in last
    results = read_results(tmp_path / "out/results.parquet")  # the outputs are written
    assert set(results["status"]) == {"failed"}


def test_a_run_with_some_rows_ok_exits_0(tmp_path: Path, fresh_sim: SimulatorHandle) -> None:
    write_tasks(tmp_path, 20)
    body = job_text(base_url=fresh_sim.base_url, route=RULES, run_extra="max_attempts = 1")
    done = run_cli("run", write_job(tmp_path, body))
    assert done.returncode == 0, done.stderr
    assert "most common error" in done.stdout
    statuses = set(read_results(tmp_path / "out/results.parquet")["status"])
    assert statuses == {"ok", "failed"}


# --- a provider that pages its model list ----------------------------------------------------

PAGES = [["p/one", "p/two"], ["p/three", "p/four"], ["p/five"]]


async def _paged_models(request: web.Request) -> web.Response:
    """OpenAI's list shape, two ids a page, the next page `after` the last id."""
    ids = [model for page in PAGES for model in page]
    after = request.query.get("after")
    start = ids.index(after) + 1 if after in ids else 0
    page = ids[start : start + 2]
    data = [{"id": model, "object": "model"} for model in page]
    return web.json_response({"object": "list", "data": data, "has_more": start + 2 < len(ids)})


async def _completion(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response(
        {
            "id": "c1",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )


@pytest.fixture
def paged_server() -> Iterator[str]:
    app = web.Application()
    app.router.add_get("/v1/models", _paged_models)
    app.router.add_post("/v1/chat/completions", _completion)
    with _serving(app) as url:
        yield url


@contextlib.contextmanager
def _serving(app: web.Application) -> Iterator[str]:
    """`app` on 127.0.0.1 in a thread of its own, for a CLI subprocess to call."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.mark.parametrize("transport", ["aiohttp", "openai"])
def test_the_run_and_models_read_every_page_of_the_model_list(
    tmp_path: Path, paged_server: str, transport: str
) -> None:
    write_tasks(tmp_path, 3)
    route = 'strategy = "fixed"\nmodel = "p/five"'  # on the last page only
    job = write_job(tmp_path, job_text(base_url=paged_server, route=route, transport=transport))
    done = run_cli("run", job)
    assert done.returncode == 0, done.stderr
    assert set(read_results(tmp_path / "out/results.parquet")["status"]) == {"ok"}
    listed = run_cli("models", job)
    assert listed.returncode == 0, listed.stderr
    assert "served, not used by the job: 4" in listed.stdout


# --- papercuts ---------------------------------------------------------------------------


@pytest.mark.parametrize("rows", ["0", "-3", "many"])
def test_estimate_refuses_a_sample_of_no_rows_before_printing_anything(
    tmp_path: Path, rows: str
) -> None:
    write_tasks(tmp_path, 5)
    job = write_job(tmp_path, job_text(base_url="embedded", route=FIXED))
    done = run_cli("estimate", job, "--sample", rows)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "--sample" in done.stderr and "Traceback" not in done.stderr


def test_report_creates_its_folder_as_run_does(tmp_path: Path, fresh_sim: SimulatorHandle) -> None:
    write_tasks(tmp_path, 5)
    assert (
        run_cli(
            "run", write_job(tmp_path, job_text(base_url=fresh_sim.base_url, route=FIXED))
        ).returncode
        == 0
    )
    page = tmp_path / "reports/new/page.html"
    done = run_cli("report", tmp_path / "out/results.parquet", "-o", page)
    assert done.returncode == 0, done.stderr
    assert "<table" in page.read_text(encoding="utf-8")
