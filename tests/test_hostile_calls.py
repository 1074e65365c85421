"""The call path against a hostile server: whatever it sends, the run finishes and tells the
truth. Every test runs a real job over real HTTP on 127.0.0.1 (tests/hostile_server.py)."""

from __future__ import annotations

import gzip
import json
import logging
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from helpers import run_cli
from hostile_fixtures import hostile, hostile_job, run_job, transport
from hostile_server import Answer, HostileServer, Request, completion

from batchroute.errors import AuthRejected
from batchroute.results import read_calls, read_results

__all__ = ["hostile", "transport"]  # fixtures, imported for pytest to find

pytestmark = pytest.mark.timeout(120)


def test_a_rejected_key_names_the_failing_models_endpoint(
    tmp_path: Path, hostile: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTHER_KEY", "sk-other")
    hostile.script = lambda request: Answer(401, json={"error": {"message": "bad key"}})
    job = hostile_job(
        tmp_path,
        hostile,
        base_url="http://127.0.0.1:9/v1",
        models=f"""
            [endpoints.other]
            base_url = "{hostile.url}"
            api_key_env = "OTHER_KEY"

            [models."h/model"]
            endpoint = "other"
            """,
    )
    ran = run_job(job)
    stop = ran.report.stop_error
    assert isinstance(stop, AuthRejected)
    assert hostile.url in str(stop) and "OTHER_KEY" in str(stop)
    assert "127.0.0.1:9/" not in str(stop)


# ---- B1: charge and balance headers that lie ------------------------------------------------

# usage 10 prompt + 5 completion tokens: $0.2 + $0.1 = $0.3 a call at these prices.
PRICED = """
    [models."h/model"]
    usd_per_mtok = { input = 20000.0, output = 20000.0 }
    """


def _charged(value: str, balance: str | None = None) -> Answer:
    headers = {"X-MDB-Charged-USD": value}
    if balance is not None:
        headers["X-MDB-Balance-USD"] = balance
    return Answer(json=completion(), headers=headers)


@pytest.mark.parametrize("lie", ["NaN", "nan", "inf", "-Infinity"])
def test_a_budget_holds_when_every_charge_header_is_not_a_number(
    tmp_path: Path, hostile: HostileServer, lie: str
) -> None:
    hostile.script = lambda request: _charged(lie)
    job = hostile_job(
        tmp_path,
        hostile,
        rows=10,
        models=PRICED,
        run="budget_usd = 1.0\ndefault_max_tokens = 5",
        concurrency=1,
    )
    ran = run_job(job)
    assert ran.report.stop_error is not None and "budget" in str(ran.report.stop_error)
    ok = ran.results.filter(pl.col("status") == "ok")
    assert 1 <= ok.height <= 3  # $0.3 a call: the fourth could pass $1
    calls = ran.calls.filter(pl.col("status_code") == 200)
    assert set(calls["cost_source"]) == {"invalid_header"}
    assert calls["charge_usd"].to_list() == pytest.approx([0.3] * calls.height)
    assert ran.results["cost_usd"].drop_nulls().sum() <= 1.0


def test_a_lying_charge_counts_as_the_dearest_call_seen(
    tmp_path: Path, hostile: HostileServer
) -> None:
    # No price table: the honest calls say $0.4; a NaN between them must not count as free.
    answers = iter(["0.4", "NaN"] * 20)
    hostile.script = lambda request: _charged(next(answers))
    job = hostile_job(tmp_path, hostile, rows=10, run="budget_usd = 1.0", concurrency=1)
    ran = run_job(job)
    assert ran.report.stop_error is not None and "budget" in str(ran.report.stop_error)
    assert ran.results.filter(pl.col("status") == "ok").height <= 3
    invalid = ran.calls.filter(pl.col("cost_source") == "invalid_header")
    assert invalid.height >= 1 and invalid["charge_usd"].is_null().all()


def test_a_negative_charge_never_makes_totals_negative(
    tmp_path: Path, hostile: HostileServer, caplog: pytest.LogCaptureFixture
) -> None:
    hostile.script = lambda request: _charged("-1000")
    job = hostile_job(tmp_path, hostile, rows=6, models=PRICED)
    with caplog.at_level(logging.WARNING):
        ran = run_job(job)
    assert set(ran.results["status"]) == {"ok"}
    assert ran.results["cost_usd"].to_list() == pytest.approx([0.3] * 6)
    assert ran.report.summary["cost_usd"] == pytest.approx(1.8)
    assert set(ran.calls["cost_source"]) == {"invalid_header"}
    warnings = [r for r in caplog.records if "X-MDB-Charged-USD" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()


@pytest.mark.parametrize("lie", ["NaN", "-inf", "-5"])
def test_a_lying_balance_is_ignored_and_never_stops_the_run(
    tmp_path: Path, hostile: HostileServer, lie: str
) -> None:
    hostile.script = lambda request: _charged("0.001", balance=lie)
    job = hostile_job(tmp_path, hostile, rows=5, run="min_balance_usd = 1.0")
    ran = run_job(job)
    assert ran.report.stop_error is None
    assert set(ran.results["status"]) == {"ok"}
    assert ran.calls["balance_usd"].is_null().all()


# ---- B2: bodies that are not what they claim ------------------------------------------------


def _usage(**fields: object) -> dict[str, object]:
    return {"prompt_tokens": 10, "completion_tokens": 5, **fields}


MALFORMED = {
    "prompt_tokens a string": Answer(json=completion(usage=_usage(prompt_tokens="12"))),
    "prompt_tokens a fraction": Answer(json=completion(usage=_usage(prompt_tokens=12.5))),
    "prompt_tokens 1.5e30": Answer(json=completion(usage=_usage(prompt_tokens=1.5e30))),
    "prompt_tokens negative": Answer(json=completion(usage=_usage(prompt_tokens=-3))),
    "prompt_tokens a bool": Answer(json=completion(usage=_usage(prompt_tokens=True))),
    "completion_tokens NaN": Answer(
        body=b'{"choices":[{"message":{"content":"x"}}],"usage":{"completion_tokens":NaN}}'
    ),
    "usage a list": Answer(json=completion(usage=[1, 2])),
    "content an int": Answer(json=completion(5)),
    "content a dict": Answer(json=completion({"text": "a"})),
    "a part without text": Answer(json=completion([{"type": "text", "text": 3}])),
    "choices empty": Answer(json=completion(choices=[])),
    "choices not a list": Answer(json=completion(choices={"0": {"message": {}}})),
    "message not an object": Answer(json=completion(choices=[{"message": "hi"}])),
    "body not JSON": Answer(body=b"<html>200 OK, honest</html>"),
    "body a JSON list": Answer(json=[completion()]),
}


def _stored_calls(job: Path) -> int:
    with sqlite3.connect(job.parent / ".batchroute" / "store.sqlite") as db:
        return int(db.execute("SELECT count(*) FROM calls").fetchone()[0])


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_body_fails_its_call_as_bad_response_and_is_never_stored(
    tmp_path: Path, hostile: HostileServer, case: str
) -> None:
    hostile.script = lambda request: MALFORMED[case]
    job = hostile_job(tmp_path, hostile, rows=2)
    ran = run_job(job)
    assert ran.report.stop_error is None
    assert set(ran.results["status"]) == {"failed"}
    assert all(e.startswith("bad_response: ") for e in ran.results["error"])
    # Retried like a 5xx: every attempt was made and recorded, none with made-up usage.
    assert ran.calls.height == 2 * 2 and set(ran.calls["error_kind"]) == {"bad_response"}
    assert ran.calls["prompt_tokens"].is_null().all()
    assert ran.results["answer"].is_null().all()
    assert _stored_calls(job) == 0


@pytest.mark.parametrize("transport_name", ["aiohttp", "openai"])
def test_content_parts_are_joined_as_openai_joins_text_parts(
    tmp_path: Path, hostile: HostileServer, transport_name: str
) -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    hostile.script = lambda request: Answer(json=completion(parts))
    ran = run_job(hostile_job(tmp_path, hostile, rows=2, transport=transport_name))
    assert ran.results["answer"].to_list() == ["ab", "ab"]
    assert set(ran.results["status"]) == {"ok"}


def test_a_whole_float_count_reads_as_an_int(tmp_path: Path, hostile: HostileServer) -> None:
    hostile.script = lambda request: Answer(json=completion(usage=_usage(prompt_tokens=12.0)))
    ran = run_job(hostile_job(tmp_path, hostile, rows=1))
    assert ran.results["status"].to_list() == ["ok"]
    assert ran.calls["prompt_tokens"].to_list() == [12]


def _row(request: Request) -> int:
    text = str(request.payload["messages"][-1]["content"])
    match = re.search(r"Ticket number (\d+):", text)
    assert match is not None
    return int(match.group(1))


def test_a_rerun_from_the_store_after_a_hostile_run_works(
    tmp_path: Path, hostile: HostileServer
) -> None:
    def script(request: Request) -> Answer:
        i = _row(request)
        hostile_answers = [
            Answer(json=completion(f"good {i}")),
            Answer(json=completion(7)),
            Answer(json=completion(usage=_usage(prompt_tokens="9"))),
        ]
        return hostile_answers[i % 3]

    hostile.script = script
    job = hostile_job(tmp_path, hostile, rows=9)
    first = run_job(job)
    good = [f"good {i}" if i % 3 == 0 else None for i in range(9)]
    assert first.results["answer"].to_list() == good
    assert _stored_calls(job) == 3

    hostile.requests.clear()
    again = run_job(job)
    assert again.results["answer"].to_list() == good
    assert again.results["status"].to_list() == first.results["status"].to_list()
    # The good rows came from the store; only the failed ones asked the server again.
    assert sorted({_row(r) for r in hostile.requests}) == [1, 2, 4, 5, 7, 8]
    cached = again.calls.filter(pl.col("cached"))
    assert cached.height == 3 and set(cached["cost_source"]) <= {"header", "unknown"}


# ---- B3: a body too large to keep ------------------------------------------------------------

HUGE = 50 * 1024 * 1024


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
def test_a_50mb_body_fails_its_call_without_being_read(
    tmp_path: Path, hostile: HostileServer, announced: bool
) -> None:
    hostile.script = lambda request: Answer(
        size=HUGE, content_length=announced, headers={"Content-Type": "application/json"}
    )
    ran = run_job(hostile_job(tmp_path, hostile, rows=3))
    assert ran.report.stop_error is None
    assert set(ran.results["status"]) == {"failed"}
    assert all(e.startswith("response_too_large: ") for e in ran.results["error"])
    # Not retried (max_attempts = 2): one call per row, then the (absent) fallbacks.
    assert ran.calls.height == 3 and set(ran.calls["error_kind"]) == {"response_too_large"}
    # Memory: the client stopped taking bytes near the 4 MiB cap (plus what the sockets'
    # buffers held), so it never held the 50 MB.
    assert len(hostile.streamed) == 3
    assert max(hostile.streamed) < 20 * 1024 * 1024


def test_a_small_gzip_body_that_inflates_past_the_cap_fails_its_call(
    tmp_path: Path, hostile: HostileServer
) -> None:
    # 50 MB of spaces inside a valid JSON answer gzip to about 50 kB: the announced length is
    # small, so the cap must count what the body inflates to, not what it announces.
    inflated = json.dumps(completion("ok")).encode().replace(b'"ok"', b'"ok"' + b" " * HUGE)
    packed = gzip.compress(inflated)
    assert len(packed) < 1024 * 1024
    hostile.script = lambda request: Answer(
        body=packed, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    ran = run_job(hostile_job(tmp_path, hostile, rows=2))
    assert set(ran.calls["error_kind"]) == {"response_too_large"}
    assert set(ran.results["status"]) == {"failed"}
    # A compressed answer within the cap is read as any other.
    small = tmp_path / "small"
    small.mkdir()
    hostile.script = lambda request: Answer(
        body=gzip.compress(json.dumps(completion("fine")).encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    ran = run_job(hostile_job(small, hostile, rows=2))
    assert ran.results["answer"].to_list() == ["fine", "fine"]


def test_max_response_bytes_is_the_endpoints_key_on_both_transports(
    tmp_path: Path, hostile: HostileServer, transport: str
) -> None:
    # A 2000-byte answer passes the default cap and fails a cap of 1000.
    hostile.script = lambda request: Answer(json=completion("x" * 2000))
    ran = run_job(hostile_job(tmp_path, hostile, rows=2, transport=transport))
    assert set(ran.results["status"]) == {"ok"}
    capped = tmp_path / "capped"
    capped.mkdir()
    job = hostile_job(
        capped, hostile, rows=2, transport=transport, endpoint="max_response_bytes = 1000"
    )
    ran = run_job(job)
    assert set(ran.calls["error_kind"]) == {"response_too_large"}
    assert set(ran.results["status"]) == {"failed"}


def test_a_too_large_answer_moves_to_the_fallback(tmp_path: Path, hostile: HostileServer) -> None:
    def script(request: Request) -> Answer:
        if request.model == "h/model":
            return Answer(size=HUGE)
        return Answer(json=completion("from the fallback"))

    hostile.script = script
    models = '[models."h/model"]\nfallbacks = ["h/fallback"]\n[models."h/fallback"]\n'
    ran = run_job(hostile_job(tmp_path, hostile, rows=2, models=models))
    assert ran.results["answer"].to_list() == ["from the fallback"] * 2
    assert ran.results["fallback_used"].all()


# ---- B4: secrets echoed back ----------------------------------------------------------------

SECRET = "sk-hostile-secret-0123456789"


def _echo(request: Request) -> Answer:
    auth = request.headers.get("authorization", "")
    key = auth.removeprefix("Bearer ")
    row = _row(request)
    if row == 0:  # the whole header, as a careless proxy logs it
        return Answer(400, json={"error": {"message": f"bad request; you sent {auth}"}})
    if row == 1:  # the bare key, late in a long message (where it would be cut to one line)
        return Answer(500, body=("x" * 270 + f" key={key} was refused").encode())
    if row == 3:  # out of credit: this message becomes the run's stop message on stderr
        return Answer(402, json={"error": {"message": f"no credit left for {key} ({auth})"}})
    return Answer(json=completion())


def test_the_api_key_never_reaches_outputs_or_the_terminal(
    tmp_path: Path, hostile: HostileServer
) -> None:
    hostile.script = _echo
    job = hostile_job(
        tmp_path, hostile, rows=6, endpoint='api_key_env = "HOSTILE_KEY"', concurrency=1
    )
    done = run_cli("run", job, env={"HOSTILE_KEY": SECRET})
    assert done.returncode == 3, done.stderr  # the 402 stopped the run
    assert "402" in done.stderr and "[redacted]" in done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert SECRET[:12] not in done.stdout + done.stderr  # not even a cut-off part of it
    results = read_results(tmp_path / "out" / "results.parquet")
    calls = read_calls(tmp_path / "out" / "results.parquet")
    assert results["status"].to_list()[:3] == ["failed", "failed", "ok"]
    assert "Bearer [redacted]" in results["error"][0]
    assert "key=[redacted]" in results["error"][1]
    for path in (tmp_path / "out").iterdir():
        assert SECRET[:12].encode() not in path.read_bytes()
    assert not any(SECRET[:12] in (e or "") for e in calls["error"])


# ---- B5: unknown cost stays unknown ---------------------------------------------------------


def test_a_cost_nobody_sent_is_unknown_in_results_summary_and_compare(
    tmp_path: Path, hostile: HostileServer
) -> None:
    # No charge header, no price table: nothing says what the answers cost.
    job = hostile_job(tmp_path, hostile, rows=4)
    ran = run_job(job)
    assert set(ran.results["status"]) == {"ok"}
    assert ran.results["cost_usd"].is_null().all()  # null, not 0.0
    assert set(ran.results["cost_source"]) == {"unknown"}
    assert "total unknown" in ran.report.summary_line
    assert "$0.0000" not in ran.report.summary_line
    assert ran.report.summary["cost_usd"] is None

    shown = run_cli("compare", tmp_path / "out" / "results.parquet")
    assert shown.returncode == 0, shown.stderr
    row = shown.stdout.splitlines()[2]  # headers, rule, the run
    # $/1k rows, total $ and new $ are unknown; cached $ is a true zero (nothing cached).
    assert row.split().count("unknown") == 3
    assert "store held when the run started" in shown.stdout


def test_a_partly_known_cost_says_so(tmp_path: Path, hostile: HostileServer) -> None:
    def script(request: Request) -> Answer:
        if _row(request) % 2 == 0:
            return Answer(json=completion(), headers={"X-MDB-Charged-USD": "0.25"})
        return Answer(json=completion())

    hostile.script = script
    ran = run_job(hostile_job(tmp_path, hostile, rows=4))
    assert ran.results["cost_usd"].to_list() == [0.25, None, 0.25, None]
    assert "total $0.5000 + unknown" in ran.report.summary_line
    shown = run_cli("compare", tmp_path / "out" / "results.parquet")
    assert "0.5000 + unknown" in shown.stdout.splitlines()[2]


# ---- B6: every failed check's reason --------------------------------------------------------

YES = '[check]\ntype = "regex"\npattern = "^yes"\n'


def test_a_one_tier_plan_records_its_failed_checks_reason(
    tmp_path: Path, hostile: HostileServer
) -> None:
    hostile.script = lambda request: Answer(json=completion("yes" if _row(request) else "no"))
    ran = run_job(hostile_job(tmp_path, hostile, rows=2, extra=YES))
    assert ran.results["check_passed"].to_list() == [False, True]
    reasons = ran.results["check_reasons"].to_list()
    assert len(reasons[0]) == 1 and reasons[0][0].startswith("regex failed on h/model")
    assert reasons[1] == []
    assert ran.results["escalation_reason"].to_list() == [None, None]


def test_a_cascade_keeps_every_tiers_reason_in_order(
    tmp_path: Path, hostile: HostileServer
) -> None:
    hostile.script = lambda request: Answer(json=completion(f"no from {request.model}"))
    route = 'strategy = "cascade"\ntiers = ["h/model", "h/fallback"]'
    ran = run_job(hostile_job(tmp_path, hostile, rows=1, route=route, extra=YES))
    (reasons,) = ran.results["check_reasons"].to_list()
    assert [r.split(":")[0] for r in reasons] == [
        "regex failed on h/model",
        "regex failed on h/fallback",
    ]
    assert ran.results["escalation_reason"][0] == reasons[0]


# ---- B7: the budget's stop message counts calls in flight -----------------------------------


def test_a_budget_stop_names_what_is_in_flight(tmp_path: Path, hostile: HostileServer) -> None:
    # Slow answers at concurrency 4: when the budget stops the run, calls are still out.
    hostile.script = lambda request: Answer(json=completion(), delay_s=0.3)
    job = hostile_job(
        tmp_path,
        hostile,
        rows=12,
        models=PRICED,
        run="budget_usd = 1.0\ndefault_max_tokens = 5",
        concurrency=4,
    )
    ran = run_job(job)
    message = str(ran.report.stop_error)
    found = re.fullmatch(
        r"budget \$1 reached: \$([\d.]+) spent, \$([\d.]+) in flight,"
        r" the next call could cost \$([\d.]+)",
        message,
    )
    assert found is not None, message
    spent, in_flight, estimate = map(float, found.groups())
    assert in_flight > 0 and spent + in_flight + estimate > 1.0


# ---- B8: Retry-After's cap is a key, and Ctrl-C ends a backoff wait -------------------------


def _slow_down(request: Request) -> Answer:
    return Answer(429, json={"error": {"message": "slow down"}}, headers={"Retry-After": "3600"})


def test_run_max_retry_after_s_caps_what_a_server_may_ask(
    tmp_path: Path, hostile: HostileServer
) -> None:
    hostile.script = _slow_down
    ran = run_job(hostile_job(tmp_path, hostile, rows=2, run="max_retry_after_s = 0.01"))
    assert set(ran.results["status"]) == {"failed"}
    assert ran.calls.height == 2 * 2  # both attempts made, the wait between them capped
    assert set(ran.calls["retry_after_s"]) == {3600.0}  # what the server asked is recorded


def test_ctrl_c_ends_a_backoff_wait_at_once(tmp_path: Path, hostile: HostileServer) -> None:
    # The server asks for an hour, and the job allows it, with an hour's grace for calls in
    # flight: only a wait that the interrupt ends lets the run finish before the timeout.
    hostile.script = _slow_down
    job = hostile_job(tmp_path, hostile, rows=1, run="max_retry_after_s = 3600\ngrace_s = 3600")
    process = subprocess.Popen(
        [sys.executable, "-m", "batchroute", "run", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(600):  # up to a minute for the first 429 to be answered
            if hostile.requests:
                break
            time.sleep(0.1)
        assert hostile.requests, "the run never called the server"
        time.sleep(0.5)  # now in the hour's wait
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    results = read_results(tmp_path / "out" / "results.parquet")
    assert results["status"].to_list() == ["skipped"]
    assert len(hostile.requests) == 1
