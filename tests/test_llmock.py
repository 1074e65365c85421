"""batchroute against llmock (PyPI `llmock`), a mock provider that someone else wrote.

llmock enforces requests per minute per API key with a bucket that refills continuously,
answers 429 with `retry-after` and `retry-after-ms`, takes scripted failures over HTTP
(`POST /_llmock/scenario`) and logs every request it served (`GET /_llmock/requests`).
Every test checks that log against batchroute's calls table, one request to one row.

Buckets are per API key, so each test uses its own key: one server serves the module.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import job_text, make_tasks, run_cli, write_job, write_tasks
from peers import (
    Server,
    ServerUnavailable,
    free_port,
    peer_program,
    running_server,
    unavailable,
)

from batchroute import read_calls, read_results

pytestmark = pytest.mark.timeout(240)

RPM = 900  # llmock's enforced limit: 15 requests a second per key
MINI, FULL = "gpt-4o-mini", "gpt-4o"  # two of the models llmock lists at /v1/models
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def llmock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    program = peer_program("llmock", "llmock", installed_by="make peers")
    port = free_port()
    command = [str(program), "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--rpm", str(RPM), "--log-level", "warning"]
    try:
        with running_server(
            "llmock",
            command,
            ready_path="/health",
            port=port,
            log_dir=tmp_path_factory.mktemp("llmock"),
        ) as server:
            yield server
    except ServerUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture
def mock(llmock: Server) -> Server:
    """The module's llmock with no queued behaviours and an empty request log."""
    status, _, _ = llmock.request("POST", "/_llmock/reset")
    assert status == 200
    return llmock


# --- helpers ----------------------------------------------------------------------------------


def _job(mock: Server, tmp_path: Path, *, route: str, concurrency: int = 16, **kwargs: Any) -> Path:
    body = job_text(base_url=mock.base_url, route=route, **kwargs)
    body = body.replace("timeout_s = 5", 'timeout_s = 5\napi_key_env = "LLMOCK_TEST_KEY"')
    body = body.replace("concurrency = 16", f"concurrency = {concurrency}")
    return write_job(tmp_path, body)


def _run(job: Path, key: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    done = run_cli("run", job, env={"LLMOCK_TEST_KEY": key}, timeout=180)
    assert done.returncode == 0, done.stderr
    out = job.parent / "out/results.parquet"
    return read_results(out), read_calls(out)


def _script(mock: Server, *behaviors: dict[str, Any]) -> None:
    """Queue behaviours for chat requests (not the model list batchroute reads first)."""
    for behavior in behaviors:
        behavior["match"] = {"path": CHAT, **behavior.get("match", {})}
    status, _, body = mock.request("POST", "/_llmock/scenario", body={"behaviors": behaviors})
    assert status == 201, body


def _logged(mock: Server) -> list[dict[str, Any]]:
    """The chat requests llmock served since its last reset, oldest first."""
    status, _, body = mock.request("GET", "/_llmock/requests")
    assert status == 200
    return [r for r in body["requests"] if r["path"] == CHAT]


def _row_of_prompt(n: int) -> dict[str, str]:
    tasks = make_tasks(n)
    pairs = zip(tasks["task_id"], tasks["text"], strict=True)
    return {f"Label: {text}": task_id for task_id, text in pairs}


def assert_log_matches_calls(mock: Server, calls: pl.DataFrame, n: int) -> list[dict[str, Any]]:
    """Every request llmock logged is one row of the calls table and the other way round:
    per row, the same models and statuses in the same order; and the wait batchroute recorded
    for a call it would retry is the one llmock sent."""
    logged = _logged(mock)
    rows = _row_of_prompt(n)
    served: dict[str, list[dict[str, Any]]] = {}
    for request in logged:
        prompt = request["body"]["messages"][-1]["content"]
        served.setdefault(rows[prompt], []).append(request)
    made: dict[str, list[dict[str, Any]]] = {}
    for call in calls.sort("started_at").iter_rows(named=True):
        made.setdefault(call["row_id"], []).append(call)
    assert len(logged) == calls.height
    assert served.keys() == made.keys()
    for row, requests in served.items():
        assert [(r["model"], r["status"]) for r in requests] == [
            (c["model"], c["status_code"]) for c in made[row]
        ], row
        for request, call in zip(requests, made[row], strict=True):
            if call["retry_after_s"] is not None:
                assert call["retry_after_s"] == pytest.approx(request["retry_after"])
    return logged


def assert_waits_honoured(logged: list[dict[str, Any]]) -> int:
    """Each retry of a call llmock answered with a Retry-After arrived no sooner than asked,
    by llmock's own clock. Returns how many such waits there were."""
    by_call: dict[str, list[dict[str, Any]]] = {}
    for request in logged:
        by_call.setdefault(request["fingerprint"], []).append(request)
    waits = 0
    for attempts in by_call.values():
        for before, after in itertools.pairwise(sorted(attempts, key=lambda r: r["seq"])):
            if before["retry_after"] is not None:
                waits += 1
                assert after["started_at"] - before["ended_at"] >= before["retry_after"]
    return waits


def spend_quota(mock: Server, key: str) -> int:
    """Use up the key's requests-per-minute bucket, as another client on the key would:
    send requests until llmock refuses one. Returns how many it took."""
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": MINI, "messages": [{"role": "user", "content": "drain"}], "max_tokens": 1}

    def one(_: int) -> int:
        return mock.request("POST", CHAT, body=body, headers=headers)[0]

    sent = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        while sent < 3 * RPM:
            statuses = list(pool.map(one, range(64)))
            sent += len(statuses)
            if 429 in statuses:
                return sent
    raise AssertionError(f"llmock never refused: {sent} requests on one key")


# --- the enforced rate limit ------------------------------------------------------------------


def test_a_run_at_the_enforced_rpm_gets_almost_no_429s(tmp_path: Path, mock: Server) -> None:
    # With the key's bucket nearly spent, llmock admits 15 requests a second; so does
    # batchroute at `rpm = RPM`, after a first burst of one second's worth. Without the limit
    # (the next test) most requests would be refused.
    n = 150
    write_tasks(tmp_path, n)
    job = _job(
        mock,
        tmp_path,
        route=f'strategy = "fixed"\nmodel = "{MINI}"',
        models=f'[models."{MINI}"]\nrpm = {RPM}\n',
        run_extra="max_attempts = 10",
    )
    key = "key-at-the-limit"
    assert spend_quota(mock, key) >= RPM
    # The other client stops; a second later the bucket holds one second's worth again, what
    # batchroute's limiter lets out in its first burst. (Right after the 429 it held none and
    # that burst met five 429s, all in the first 5 ms, none later.)
    time.sleep(1.0)
    mock.request("DELETE", "/_llmock/requests")
    results, calls = _run(job, key)

    assert set(results["status"]) == {"ok"}
    throttled = calls.filter(pl.col("status_code") == 429)
    assert throttled.height <= 2, throttled  # measured: 0
    logged = assert_log_matches_calls(mock, calls, n)
    assert_waits_honoured(logged)
    # The run took as long as the limit says: 150 requests at 15 a second.
    span = (calls["started_at"].max() - calls["started_at"].min()).total_seconds()
    assert span >= (n - RPM / 60) / (RPM / 60) * 0.9


def test_without_a_limit_429s_are_honoured_and_every_row_settles(
    tmp_path: Path, mock: Server
) -> None:
    n = 80
    write_tasks(tmp_path, n)
    job = _job(
        mock,
        tmp_path,
        route=f'strategy = "fixed"\nmodel = "{MINI}"',
        concurrency=4,
        run_extra="max_attempts = 40",
        # Not learned from llmock's headers either (test_llmock_limits.py learns them).
        models=f'[models."{MINI}"]\nlimits = "job"\n',
    )
    key = "key-without-a-limit"
    spend_quota(mock, key)
    mock.request("DELETE", "/_llmock/requests")
    results, calls = _run(job, key)

    assert set(results["status"]) == {"ok"}
    throttled = calls.filter(pl.col("status_code") == 429)
    assert throttled.height > 10
    assert set(throttled["error_kind"]) == {"http_429"}
    # llmock's wait is the time until its bucket holds one request again: under a second.
    assert throttled["retry_after_s"].is_not_null().all()
    assert 0 < throttled["retry_after_s"].max() <= 60 / RPM + 1e-3
    logged = assert_log_matches_calls(mock, calls, n)
    assert assert_waits_honoured(logged) == throttled.height


# --- scripted failures --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["aiohttp", "openai"])
def test_scripted_5xx_are_retried_with_the_servers_wait(
    transport: str, tmp_path: Path, mock: Server
) -> None:
    n = 12
    write_tasks(tmp_path, n)
    _script(
        mock,
        {"type": "fail", "status": 500, "times": 3},
        {"type": "fail", "status": 503, "retry_after": 0.3, "times": 2},
    )
    job = _job(mock, tmp_path, route=f'strategy = "fixed"\nmodel = "{MINI}"', transport=transport)
    results, calls = _run(job, f"key-5xx-{transport}")

    assert set(results["status"]) == {"ok"} and not results["fallback_used"].any()
    assert calls.filter(pl.col("status_code") == 500).height == 3
    unavailable_ = calls.filter(pl.col("status_code") == 503)
    assert unavailable_.height == 2 and unavailable_["retry_after_s"].to_list() == [0.3, 0.3]
    assert calls.filter(pl.col("status_code") == 200).height == n
    logged = assert_log_matches_calls(mock, calls, n)
    assert assert_waits_honoured(logged) == 2
    # The openai SDK never retried behind batchroute's back: it would say so in a header.
    if transport == "openai":
        assert {r["sdk_retry_count"] for r in logged} == {0}


def test_a_model_that_keeps_failing_falls_back_and_a_404_falls_back_at_once(
    tmp_path: Path, mock: Server
) -> None:
    n = 6
    write_tasks(tmp_path, n)
    _script(
        mock,
        # Rows of type classify and extract ask for gpt-4o-mini and get 500s for ever; the
        # summaries ask for gpt-4o, which llmock now says does not exist.
        {"type": "fail", "status": 500, "times": None, "match": {"model": MINI}},
        {
            "type": "fail",
            "status": 404,
            "code": "model_not_found",
            "times": None,
            "match": {"model": FULL},
        },
    )
    models = f"""
    [models."{MINI}"]
    fallbacks = ["gpt-3.5-turbo"]
    [models."{FULL}"]
    fallbacks = ["gpt-3.5-turbo"]
    [models."gpt-3.5-turbo"]
    """
    route = (
        f'strategy = "rules"\ndefault = "{FULL}"\n[[route.rules]]\n'
        f"when = \"task_type = 'classify' OR task_type = 'extract'\"\ntarget = \"{MINI}\"\n"
    )
    job = _job(mock, tmp_path, route=route, models=models, run_extra="max_attempts = 3")
    results, calls = _run(job, "key-fallback")

    assert set(results["status"]) == {"ok"} and results["fallback_used"].all()
    assert set(results["model"]) == {"gpt-3.5-turbo"}
    per_row = calls.group_by("row_id").agg(pl.col("status_code"), pl.col("model"))
    for row in per_row.iter_rows(named=True):
        if row["model"][0] == MINI:  # retried, then the fallback
            assert row["status_code"] == [500, 500, 500, 200]
        else:  # a missing model is not retried
            assert row["model"][0] == FULL and row["status_code"] == [404, 200]
    assert_log_matches_calls(mock, calls, n)


def test_a_bad_request_fails_only_its_row(tmp_path: Path, mock: Server) -> None:
    n = 5
    write_tasks(tmp_path, n)
    _script(mock, {"type": "fail", "status": 400, "message": "Invalid 'messages'", "times": 1})
    job = _job(mock, tmp_path, route=f'strategy = "fixed"\nmodel = "{MINI}"')
    results, calls = _run(job, "key-400")
    failed = results.filter(pl.col("status") == "failed")
    assert failed.height == 1 and failed["error"][0].startswith("http_400")
    assert "Invalid 'messages'" in failed["error"][0]
    assert results.filter(pl.col("status") == "ok").height == n - 1
    assert_log_matches_calls(mock, calls, n)


@pytest.mark.parametrize(
    ("behavior", "exit_code", "says"),
    [
        ({"type": "fail", "status": 401, "times": None}, 4, "rejected the credentials (401)"),
        (
            # OpenAI's "you are out of credit": a 429 that no wait will cure.
            {"type": "fail", "status": 429, "code": "insufficient_quota", "times": None},
            3,
            "out of credit",
        ),
    ],
)
def test_errors_that_doom_every_call_stop_the_run(
    behavior: dict[str, Any], exit_code: int, says: str, tmp_path: Path, mock: Server
) -> None:
    n = 40
    write_tasks(tmp_path, n)
    _script(mock, behavior)
    job = _job(mock, tmp_path, route=f'strategy = "fixed"\nmodel = "{MINI}"')
    done = run_cli("run", job, env={"LLMOCK_TEST_KEY": "key-stop"})
    assert done.returncode == exit_code, done.stderr
    assert says in done.stderr
    results = read_results(tmp_path / "out/results.parquet")
    calls = read_calls(tmp_path / "out/results.parquet")
    assert results.height == n and "skipped" in set(results["status"])
    # Once doomed, batchroute stops calling: at most the calls already in flight were made.
    assert calls.height <= 16
    assert_log_matches_calls(mock, calls, n)


def test_llmock_logs_what_batchroute_sent(tmp_path: Path, mock: Server) -> None:
    # The request body on the wire: the job's parameters, nothing the server would reject.
    write_tasks(tmp_path, 2)
    job = _job(
        mock,
        tmp_path,
        route=f'strategy = "fixed"\nmodel = "{MINI}"',
        extra=(
            "[params]\nmax_tokens = 30\ntemperature = 0\n"
            'response_format = { type = "json_object" }\n'
        ),
    )
    results, calls = _run(job, "key-body")
    bodies = [r["body"] for r in assert_log_matches_calls(mock, calls, 2)]
    assert bodies[0]["max_tokens"] == 30 and bodies[0]["temperature"] == 0
    assert bodies[0]["response_format"] == {"type": "json_object"}
    assert json.loads(results["answer"][0])  # llmock answers JSON when JSON is asked for
