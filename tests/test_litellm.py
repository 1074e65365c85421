"""batchroute against the LiteLLM proxy (PyPI `litellm[proxy]`), the gateway many teams run.

The proxy serves mock-response models (no upstream provider is called), prices every call
itself and says so in `x-litellm-response-cost`; a job reads that header as its charge. Its
router enforces a deployment's `rpm` with a 429 that carries no standard Retry-After (only
`llm_provider-retry-after: 60`), so batchroute backs off on its own.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import job_text, make_tasks, run_cli, write_job, write_tasks
from peers import Server, ServerUnavailable, free_port, peer_program, running_server, unavailable

from batchroute import read_calls, read_results

pytestmark = pytest.mark.timeout(240)

MASTER_KEY = "sk-batchroute-test-master"  # the proxy refuses to start with its default key
LIMITED_RPM = 4
# The proxy's own prices, per token; the jobs' price tables say otherwise on purpose, so a
# charge that equals these came from the header.
PRICES = {
    "cheap": (0.15e-6, 0.60e-6),
    "strong": (5.0e-6, 25.0e-6),
    "limited": (1.0e-6, 2.0e-6),
    "spare": (2.0e-6, 4.0e-6),
}
ANSWERS = {
    "cheap": '{"answer": "refund", "confidence": 0.2}',  # fails the check: confidence < 0.6
    "strong": '{"answer": "shipping", "confidence": 0.9}',
    "limited": '{"answer": "account", "confidence": 0.8}',
    "spare": '{"answer": "account", "confidence": 0.7}',
}


def _config() -> dict[str, Any]:
    models = []
    for name, (input_price, output_price) in PRICES.items():
        params: dict[str, Any] = {
            "model": f"openai/{name}",
            "api_key": "unused",  # mock_response: no upstream call is made
            "mock_response": ANSWERS[name],
            "input_cost_per_token": input_price,
            "output_cost_per_token": output_price,
        }
        if name == "limited":
            params["rpm"] = LIMITED_RPM
        models.append({"model_name": name, "litellm_params": params})
    return {
        "model_list": models,
        "general_settings": {"master_key": MASTER_KEY},
        # The router enforces deployments' rpm under this strategy; with no retries of its own
        # the 429 reaches the client instead of the proxy sleeping 60 s on it.
        "router_settings": {"routing_strategy": "usage-based-routing-v2", "num_retries": 0},
    }


@pytest.fixture(scope="module")
def litellm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    program = peer_program("litellm", "litellm", installed_by="make peers")
    directory = tmp_path_factory.mktemp("litellm")
    config = directory / "config.json"  # YAML is a superset of JSON
    config.write_text(json.dumps(_config()), encoding="utf-8")
    port = free_port()
    command = [str(program), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    try:
        with running_server(
            "litellm",
            command,
            ready_path="/health/liveliness",
            port=port,
            log_dir=directory,
            # Its model price map from the package, not fetched from the internet at start.
            env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
            startup_timeout=120,
        ) as server:
            yield server
    except ServerUnavailable as exc:
        unavailable(str(exc))


def _job(proxy: Server, tmp_path: Path, *, route: str, **kwargs: Any) -> Path:
    body = job_text(base_url=proxy.base_url, route=route, **kwargs)
    body = body.replace(
        "timeout_s = 5",
        'timeout_s = 30\napi_key_env = "LITELLM_TEST_KEY"\n'
        'charge_header = "x-litellm-response-cost"',
    )
    return write_job(tmp_path, body)


def _run(job: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    done = run_cli("run", job, env={"LITELLM_TEST_KEY": MASTER_KEY}, timeout=180)
    assert done.returncode == 0, done.stderr
    out = job.parent / "out/results.parquet"
    return read_results(out), read_calls(out)


CHECK = """
[params]
max_tokens = 40

[check]
type = "json_schema"
schema = { type = "object", required = ["answer", "confidence"], \
  properties = { confidence = { type = "number", minimum = 0.6 } } }
"""


@pytest.mark.parametrize("transport", ["aiohttp", "openai"])
def test_each_calls_charge_is_the_proxys_cost_header(
    transport: str, tmp_path: Path, litellm: Server
) -> None:
    n = 10
    write_tasks(tmp_path, n)
    models = """
    [models.cheap]
    usd_per_mtok = { input = 100.0, output = 100.0 }
    [models.strong]
    usd_per_mtok = { input = 100.0, output = 100.0 }
    """
    job = _job(
        litellm,
        tmp_path,
        route='strategy = "cascade"\ntiers = ["cheap", "strong"]',
        models=models,
        extra=CHECK,
        transport=transport,
    )
    results, calls = _run(job)

    # cheap's mock answer fails the check, so every row escalates to strong.
    assert set(results["status"]) == {"ok"} and results["escalated"].all()
    assert set(results["model"]) == {"strong"} and results["check_passed"].all()
    assert calls.height == 2 * n and set(calls["cost_source"]) == {"header"}
    assert set(results["cost_source"]) == {"header"}
    # The header is the proxy's price times its own token count, not the job's price table.
    for call in calls.iter_rows(named=True):
        input_price, output_price = PRICES[call["model"]]
        priced = call["prompt_tokens"] * input_price + call["completion_tokens"] * output_price
        assert call["charge_usd"] == pytest.approx(priced, rel=1e-9)
    # The same request sent again is charged the same by the proxy: compare with its header.
    tasks = make_tasks(n)
    for row in (0, n - 1):
        task_id, text = tasks["task_id"][row], tasks["text"][row]
        for model in ("cheap", "strong"):
            status, headers, _ = litellm.request(
                "POST",
                "/v1/chat/completions",
                body={
                    "model": model,
                    "messages": [{"role": "user", "content": f"Label: {text}"}],
                    "max_tokens": 40,
                },
                headers={"Authorization": f"Bearer {MASTER_KEY}"},
            )
            assert status == 200
            charged = calls.filter((pl.col("row_id") == task_id) & (pl.col("model") == model))
            assert charged["charge_usd"][0] == float(headers["x-litellm-response-cost"])
    # A row's cost is the sum of its calls' charges: both tiers.
    per_row = calls.group_by("row_id").agg(pl.col("charge_usd").sum().alias("charged"))
    joined = results.join(per_row, on="row_id")
    assert (joined["cost_usd"] - joined["charged"]).abs().max() < 1e-15
    # The proxy's call id is the request id (it sends no x-request-id).
    assert calls["request_id"].is_not_null().all() and calls["request_id"].n_unique() == 2 * n


def test_an_enforced_429_without_retry_after_backs_off_and_every_row_settles(
    tmp_path: Path, litellm: Server
) -> None:
    n = 12
    write_tasks(tmp_path, n)
    # limits = "job": the test is of a 429 with nothing standard to honour; learning the
    # proxy's x-ratelimit-* headers would pace the run to its 4 rpm instead.
    models = """
    [models.limited]
    fallbacks = ["spare"]
    limits = "job"
    [models.spare]
    """
    job = _job(
        litellm,
        tmp_path,
        route='strategy = "fixed"\nmodel = "limited"',
        models=models,
        run_extra="max_attempts = 3\nbackoff_base_s = 0.2",
    )
    text = (
        job.read_text()
        .replace("backoff_base_s = 0.05\n", "")
        .replace("concurrency = 16", "concurrency = 4")
    )
    job.write_text(text)
    results, calls = _run(job)

    # Every row settles: on `limited` within its quota, else on the fallback.
    assert set(results["status"]) == {"ok"}
    throttled = calls.filter(pl.col("status_code") == 429)
    assert throttled.height >= n - 2 * LIMITED_RPM  # a run may span two of its minutes
    assert set(throttled["error_kind"]) == {"http_429"}
    assert throttled["retry_after_s"].is_null().all()  # nothing standard to honour
    assert "No deployments available" in throttled["error"][0]
    fell_back = results.filter(pl.col("fallback_used"))
    assert fell_back.height >= 1 and set(fell_back["model"]) == {"spare"}
    # Backoff without a Retry-After: exponential with "equal jitter", so the wait after
    # attempt k lies in [c/2, c] with c = 0.2 s * 2^(k-1), plus slack for a busy machine (far
    # below the 60 s the proxy's own header names).
    waits = 0
    for _, attempts in calls.filter(pl.col("model") == "limited").group_by("row_id"):
        for before, after in itertools.pairwise(attempts.sort("attempt").iter_rows(named=True)):
            ceiling = 0.2 * 2 ** (before["attempt"] - 1)
            ended = before["started_at"].timestamp() + before["latency_s"]
            waited = after["started_at"].timestamp() - ended
            assert ceiling / 2 <= waited <= ceiling + 2.0, (before, after)
            waits += 1
    assert waits >= 1
