"""The simulator end to end: real HTTP against `python -m batchroute.sim` on 127.0.0.1."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from batchroute.sim import (
    SimulatorHandle,
    SimulatorStartError,
    expected_answer,
    load_sim_config,
    running_simulator,
)
from batchroute.sim.answers import VOCABULARY, difficulty

# One table serves most tests; each model exercises one behaviour, with no latency.
TABLE = """
balance_usd = 1000.0
[models.oracle]
usd_per_mtok = { input = 2.0, output = 8.0 }
latency_ms = { mean = 0 }
skill = 1.0
[models.dunce]
usd_per_mtok = { input = 0.1, output = 0.4 }
latency_ms = { mean = 0 }
skill = 0.0
[models.limited]
usd_per_mtok = { input = 1.0, output = 1.0 }
latency_ms = { mean = 0 }
rpm = 3
[models.fail500]
usd_per_mtok = { input = 1.0, output = 1.0 }
errors = { "500" = 1.0 }
[models.fail503]
usd_per_mtok = { input = 1.0, output = 1.0 }
errors = { "503" = 1.0 }
[models.throttled]
usd_per_mtok = { input = 1.0, output = 1.0 }
errors = { "429" = 1.0 }
[models.flaky]
usd_per_mtok = { input = 1.0, output = 1.0 }
latency_ms = { mean = 0 }
errors = { "500" = 0.5 }
[models.hangs]
usd_per_mtok = { input = 1.0, output = 1.0 }
errors = { hang = 1.0 }
hang_s = 600
"""

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
    "required": ["label", "score"],
}


def write(tmp: Path, text: str, name: str = "models.toml") -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    table = write(tmp_path_factory.mktemp("sim"), TABLE)
    with running_simulator(models=table, seed=7) as handle:
        yield handle


@pytest.fixture
def fresh(sim: SimulatorHandle) -> SimulatorHandle:
    sim.reset()
    return sim


def client(sim: SimulatorHandle, *, key: str = "x", timeout: float = 5.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key=key, max_retries=0, timeout=timeout)


def sdk_ask(sim: SimulatorHandle, model: str, *, key: str = "x", timeout: float = 5.0) -> Any:
    messages: Any = [{"role": "user", "content": "a"}]
    return client(sim, key=key, timeout=timeout).chat.completions.create(
        model=model, messages=messages
    )


def post(sim: SimulatorHandle, body: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST raw JSON (or raw bytes) and return status, headers and the parsed body."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        sim.base_url + "/chat/completions", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.load(exc)


def ask(sim: SimulatorHandle, model: str, prompt: str, **extra: Any) -> tuple[int, dict, dict]:
    return post(sim, {"model": model, "messages": [{"role": "user", "content": prompt}], **extra})


def prompts(n: int) -> list[str]:
    return [f"Classify ticket {i}: something about my order" for i in range(n)]


def test_default_table_serves_its_models() -> None:
    with running_simulator() as sim:
        ids = {m.id for m in client(sim).models.list()}
    assert ids == set(load_sim_config(None).models)
    assert "anthropic/claude-opus-4-8" in ids and "openai/gpt-4o-mini" in ids


def test_completion_reports_usage_and_charges_the_price(fresh: SimulatorHandle) -> None:
    raw = client(fresh).chat.completions.with_raw_response.create(
        model="oracle",
        messages=[
            {"role": "system", "content": "Reply with a label."},
            {"role": "user", "content": "My card was charged twice."},
        ],
    )
    completion = raw.parse()
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens == (5 + 4) + (7 + 4)
    assert completion.id.startswith("chatcmpl-") and raw.headers["x-request-id"]
    assert completion.choices[0].finish_reason == "stop"
    charge = (usage.prompt_tokens * 2.0 + usage.completion_tokens * 8.0) / 1e6
    assert raw.headers["X-MDB-Charged-USD"] == f"{charge:.10f}"
    assert float(raw.headers["X-MDB-Balance-USD"]) == pytest.approx(1000.0 - charge, abs=1e-9)


def test_answers_are_deterministic_and_follow_skill(fresh: SimulatorHandle) -> None:
    for prompt in prompts(15):
        right = ask(fresh, "oracle", prompt)[2]["choices"][0]["message"]["content"]
        wrong = ask(fresh, "dunce", prompt)[2]["choices"][0]["message"]["content"]
        again = ask(fresh, "dunce", prompt)[2]["choices"][0]["message"]["content"]
        assert right == expected_answer(prompt)
        assert wrong != right and wrong in VOCABULARY and again == wrong


def test_difficulty_and_labels_spread_over_their_range() -> None:
    texts = [f"task {i}" for i in range(4000)]
    values = [difficulty(t) for t in texts]
    assert all(0.0 <= v < 1.0 for v in values)
    assert sum(v < 0.25 for v in values) == pytest.approx(1000, rel=0.12)
    assert {expected_answer(t) for t in texts} == set(VOCABULARY)


def schema_answer(sim: SimulatorHandle, model: str, prompt: str) -> str:
    response_format = {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}
    status, _, body = ask(sim, model, prompt, response_format=response_format)
    assert status == 200
    content: str = body["choices"][0]["message"]["content"]
    return content


def conforms(content: str) -> bool:
    try:
        value = json.loads(content)
    except ValueError:
        return False
    return isinstance(value, dict) and isinstance(value.get("score"), float) and "label" in value


def test_json_schema_answers_break_the_schema_only_when_wrong(fresh: SimulatorHandle) -> None:
    for prompt in prompts(15):
        value = json.loads(schema_answer(fresh, "oracle", prompt))
        assert conforms(json.dumps(value)) and value["label"] == expected_answer(prompt)
        assert value["confidence"] >= 0.65
    weak = [schema_answer(fresh, "dunce", p) for p in prompts(40)]
    valid = [json.loads(c) for c in weak if conforms(c)]
    assert 5 < len(valid) < 35, "about half of a wrong model's answers break the schema"
    assert all(v["confidence"] <= 0.75 for v in valid)
    assert any(c.startswith("I think it is") for c in weak)


def test_max_tokens_truncates_with_finish_reason_length(fresh: SimulatorHandle) -> None:
    status, _, body = ask(
        fresh, "oracle", "x", max_tokens=2, response_format={"type": "json_object"}
    )
    assert status == 200 and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_logprobs_are_higher_for_right_answers(fresh: SimulatorHandle) -> None:
    def mean_logprob(model: str) -> float:
        entries = ask(fresh, model, "refund me", logprobs=True)[2]["choices"][0]["logprobs"]
        return sum(e["logprob"] for e in entries["content"]) / len(entries["content"])

    assert mean_logprob("oracle") > -0.1 > -0.3 > mean_logprob("dunce")


def test_rpm_limit_answers_429_with_retry_after(fresh: SimulatorHandle) -> None:
    statuses = [ask(fresh, "limited", f"q{i}")[0] for i in range(3)]
    status, headers, body = ask(fresh, "limited", "q3")
    assert statuses == [200, 200, 200] and status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert int(headers["Retry-After"]) >= 1 and 0 < int(headers["retry-after-ms"]) <= 60_000
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    book = fresh.ledger()["models"]["limited"]
    assert book["ok"] == 3 and book["errors"]["429"] == 1 and book["requests"] == 4


def test_injected_errors(fresh: SimulatorHandle) -> None:
    with pytest.raises(openai.InternalServerError) as failed:
        sdk_ask(fresh, "fail500")
    assert failed.value.status_code == 500
    assert ask(fresh, "fail503", "a")[0] == 503
    status, headers, body = ask(fresh, "throttled", "a")
    assert status == 429 and headers["Retry-After"] == "1" and "retry-after-ms" in headers
    assert body["error"]["type"] == "rate_limit_error"
    books = fresh.ledger()["models"]
    assert books["fail500"]["errors"]["500"] == 1 and books["fail500"]["ok"] == 0
    assert books["fail500"]["charged_usd"] == 0.0


def test_injected_errors_replay_identically(fresh: SimulatorHandle) -> None:
    def statuses() -> list[int]:
        return [ask(fresh, "flaky", p)[0] for p in prompts(6) for _ in range(4)]

    first = statuses()
    fresh.reset()
    assert statuses() == first
    assert 0 < first.count(500) < len(first), "a retry of the same prompt draws again"


def test_hung_request_times_out_and_the_server_survives(fresh: SimulatorHandle) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        sdk_ask(fresh, "hangs", timeout=0.5)
    assert time.monotonic() - started < 3
    assert ask(fresh, "oracle", "still there?")[0] == 200
    assert fresh.ledger()["models"]["hangs"]["errors"]["hang"] == 1


def test_client_errors(fresh: SimulatorHandle) -> None:
    status, _, body = ask(fresh, "no/such-model", "a")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert ask(fresh, "oracle", "a", stream=True)[0] == 400
    assert post(fresh, b"{not json")[0] == 400
    assert post(fresh, {"model": "oracle", "messages": []})[0] == 400
    assert fresh.ledger()["rejected"]["400"] == 3


def test_ledger_totals_equal_the_sum_of_charge_headers(fresh: SimulatorHandle) -> None:
    total, balance = 0.0, ""
    for i, prompt in enumerate(prompts(30)):
        status, headers, _ = ask(fresh, ("oracle", "dunce", "flaky")[i % 3], prompt)
        if status == 200:
            total += float(headers["X-MDB-Charged-USD"])
            balance = headers["X-MDB-Balance-USD"]
    ledger = fresh.ledger()
    assert ledger["total_charged_usd"] == pytest.approx(total, abs=1e-9)
    assert sum(m["charged_usd"] for m in ledger["models"].values()) == pytest.approx(
        total, abs=1e-9
    )
    assert f"{ledger['balance_usd']:.10f}" == balance


def test_exhausted_balance_answers_402(tmp_path: Path) -> None:
    with running_simulator(models=write(tmp_path, TABLE), balance=0.00003) as sim:
        statuses = [ask(sim, "oracle", f"question {i}")[0] for i in range(4)]
        status, _, body = ask(sim, "oracle", "one more")
        ledger = sim.ledger()
    assert statuses[0] == 200 and status == 402
    assert body["error"]["code"] == "insufficient_quota"
    assert ledger["balance_usd"] <= 0 and ledger["models"]["oracle"]["errors"]["402"] >= 1


def test_api_key_is_enforced_when_given(tmp_path: Path) -> None:
    with running_simulator(models=write(tmp_path, TABLE), api_key="sekret") as sim:
        with pytest.raises(openai.AuthenticationError):
            sdk_ask(sim, "oracle", key="wrong")
        with pytest.raises(openai.AuthenticationError):
            client(sim, key="wrong").models.list()
        done = sdk_ask(sim, "oracle", key="sekret")
    assert done.choices[0].message.content == expected_answer("a")


def test_bad_models_file_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path, TABLE.replace("skill = 1.0", "skil = 1.0"), name="bad.toml")
    done = subprocess.run(
        [sys.executable, "-m", "batchroute.sim", "--models", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.toml" in lines[0] and "models.oracle.skil" in lines[0]
    with pytest.raises(SimulatorStartError, match="models.oracle.skil"):
        with running_simulator(models=bad):
            pass


def test_retry_after_ms_counts_down_to_a_free_slot() -> None:
    # The window arithmetic without a server: a slot frees 60 s after the oldest request.
    from batchroute.sim.window import RateWindow

    window = RateWindow(rpm=2, tpm=100)
    window.admit(10, now=0.0)
    window.admit(10, now=5.0)
    assert window.wait_s(10, now=30.0) == pytest.approx(30.0)
    assert window.wait_s(10, now=60.5) == 0.0
    assert math.isclose(RateWindow(rpm=0, tpm=50).wait_s(60, now=0.0), 60.0)
    tokens = RateWindow(rpm=0, tpm=100)
    tokens.admit(60, now=0.0)
    tokens.admit(30, now=10.0)
    assert tokens.wait_s(10, now=20.0) == 0.0
    assert tokens.wait_s(20, now=20.0) == pytest.approx(40.0)  # waits for the first 60 to expire
    assert tokens.headers()["x-ratelimit-remaining-tokens"] == "10"
