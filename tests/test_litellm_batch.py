"""A batch tier through the LiteLLM proxy's `/v1/files` and `/v1/batches`, with the simulator
behind it as the OpenAI provider (through a relay that fails polls when a test asks).

The proxy (1.108.7) sends a request of these APIs that names no model, as batchroute's do,
with the endpoint and key of the first OpenAI deployment of its model_list that the caller
may use; an upload also needs `files_settings` to name the openai provider. Its own fallback
(OPENAI_BASE_URL, OPENAI_API_KEY, else api.openai.com) points at a dead loopback port here,
so nothing leaves 127.0.0.1. The simulator accepts only its own key, so a batch on its ledger
is one the proxy made with the key of its config, never the client's. The README's "Batch
APIs" section tells users the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    SIM_MODELS,
    SIM_SEED,
    job_text,
    run_cli,
    wait_for_batch_id,
    write_job,
    write_sim_models,
    write_tasks,
)
from peers import (
    Server,
    ServerUnavailable,
    free_port,
    http,
    peer_program,
    running_server,
    unavailable,
)
from relay_server import Relay

from batchroute import load_job, read_calls, read_results
from batchroute.batch.admin import status_lines
from batchroute.options import RunOptions
from batchroute.runner import RunReport, run
from batchroute.sim import SimulatorHandle, running_simulator

pytestmark = pytest.mark.timeout(240)

MASTER_KEY = "sk-batchroute-test-master"  # what batchroute sends to the proxy
SIM_KEY = "sk-batchroute-test-sim"  # what the proxy sends to the simulator
MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}
SIMS = {"Authorization": f"Bearer {SIM_KEY}"}
FIXED = 'strategy = "fixed"\nmodel = "t/cheap"'
MODELS = """
[models."t/cheap"]
usd_per_mtok = { input = 0.2, output = 0.8 }
"""
COMPARED = ["row_id", "status", "answer", "model", "escalated", "tiers_tried"]


def proxy_config(upstream: str, *, files_settings: bool = True) -> dict[str, Any]:
    """The proxy's config for OpenAI's Batch API on `upstream` (a base URL): an OpenAI
    deployment in model_list, as for chat completions, and `files_settings` naming openai."""
    model = {"model": "openai/t/cheap", "api_base": upstream, "api_key": SIM_KEY}
    config: dict[str, Any] = {
        "model_list": [{"model_name": "t/cheap", "litellm_params": model}],
        "general_settings": {"master_key": MASTER_KEY},
    }
    if files_settings:
        # An upload needs it even when it adds nothing: get_files_provider_config
        # (litellm/proxy/openai_files_endpoints/files_endpoints.py) raises without it. The
        # endpoint and key come from the deployment, as for the batch routes.
        config["files_settings"] = [{"custom_llm_provider": "openai"}]
    return config


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    models = write_sim_models(
        tmp_path_factory.mktemp("sim"), SIM_MODELS + "\n[batch]\nlatency_s = 0.3\n"
    )
    with running_simulator(models=models, seed=SIM_SEED, api_key=SIM_KEY) as handle:
        yield handle


@pytest.fixture(scope="module")
def slow_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    # A batch that runs far longer than the test takes to act on it.
    models = write_sim_models(
        tmp_path_factory.mktemp("slow"), SIM_MODELS + "\n[batch]\nlatency_s = 600\n"
    )
    with running_simulator(models=models, seed=SIM_SEED, api_key=SIM_KEY) as handle:
        yield handle


@contextmanager
def _proxy(directory: Path, config: dict[str, Any]) -> Iterator[Server]:
    program = peer_program("litellm", "litellm", installed_by="make peers")
    path = directory / "config.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(config), encoding="utf-8")
    port = free_port()
    command = [str(program), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    try:
        with running_server(
            "litellm",
            command,
            ready_path="/health/liveliness",
            port=port,
            log_dir=directory,
            env={
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                # Where LiteLLM turns when its config names no OpenAI endpoint: a loopback port
                # nothing listens on and a key the simulator refuses. So no call leaves
                # 127.0.0.1 whatever the environment holds, and the test fails if the proxy
                # stops reading its config for these routes.
                **dict.fromkeys(("OPENAI_BASE_URL", "OPENAI_API_BASE"), _nowhere()),
                "OPENAI_API_KEY": "sk-not-the-simulators",
            },
            startup_timeout=120,
        ) as server:
            yield server
    except ServerUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="module")
def relay(sim: SimulatorHandle) -> Iterator[Relay]:
    with Relay(sim.root) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, relay: Relay) -> Iterator[Server]:
    """The proxy, with the simulator behind a relay that fails polls when a test asks."""
    with _proxy(tmp_path_factory.mktemp("litellm"), proxy_config(relay.url + "/v1")) as server:
        yield server


def _nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


def _job(directory: Path, base_url: str, *, cheap: str = "", name: str) -> Path:
    body = job_text(base_url=base_url, route=FIXED, models=MODELS + cheap)
    body = body.replace("timeout_s = 5", 'timeout_s = 30\napi_key_env = "BATCHROUTE_TEST_KEY"')
    body = body.replace("concurrency = 16", "concurrency = 200")
    body = body.replace("out/results.parquet", f"out/{Path(name).stem}.parquet")
    return write_job(directory, body, name=name)


def _run(job: Path, key: str, monkeypatch: pytest.MonkeyPatch) -> RunReport:
    monkeypatch.setenv("BATCHROUTE_TEST_KEY", key)
    return run(load_job(job), RunOptions(cache="off"))


def test_a_batch_tier_through_the_proxy_runs_on_the_simulator_at_the_batch_price(
    tmp_path: Path, sim: SimulatorHandle, proxy: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 40
    write_tasks(tmp_path, n)
    sim.reset()
    online = _run(_job(tmp_path, sim.base_url, name="online.toml"), SIM_KEY, monkeypatch)
    expected = read_results(online.results_path)
    online_cost = sim.ledger()["total_charged_usd"]
    sim.reset()

    job = _job(tmp_path, proxy.base_url, cheap='mode = "batch"\n', name="batch.toml")
    report = _run(job, MASTER_KEY, monkeypatch)

    results = read_results(report.results_path)
    assert results.select(COMPARED).equals(expected.select(COMPARED))
    assert (results["status"] == "ok").all()
    # Every line went to the simulator as one batch; none went online.
    ledger = sim.ledger()
    assert ledger["batches"]["batches"] == 1 and ledger["batches"]["lines"] == n
    assert ledger["models"]["t/cheap"]["requests"] == n  # the batch's lines count here too
    # Priced with the batch discount, and what we recorded is what the simulator charged.
    calls = read_calls(report.results_path)
    assert calls.height == n and (calls["cost_source"] == "price_table").all()
    assert results["cost_usd"].sum() == pytest.approx(0.5 * online_cost, rel=1e-9)
    assert results["cost_usd"].sum() == pytest.approx(ledger["total_charged_usd"], rel=1e-9)
    assert "t/cheap batch (1 batches)" in report.summary_line
    # The batch id the proxy handed back is the simulator's own: asked through the proxy
    # (`batchroute status`) and of the simulator directly, it is the same completed batch.
    monkeypatch.setenv("BATCHROUTE_TEST_KEY", MASTER_KEY)
    (line,) = status_lines(load_job(job))
    batch_id = line.split()[0]
    assert f"{batch_id}  t/cheap  completed  {n}/{n} done, 0 failed" in line
    status, _, body = http("GET", f"{sim.base_url}/batches/{batch_id}", headers=SIMS)
    assert status == 200 and body["status"] == "completed"
    assert body["request_counts"] == {"total": n, "completed": n, "failed": 0}


def test_the_provider_s_batch_errors_reach_the_client_as_a_bare_500(
    sim: SimulatorHandle, proxy: Server
) -> None:
    # The simulator answers 404 for a batch it does not know, as OpenAI does.
    status, _, body = http("GET", f"{sim.base_url}/batches/batch_unknown", headers=SIMS)
    assert status == 404 and body["error"]["message"] == "No such Batch object: batch_unknown"
    # The proxy's error handler for these routes (handle_exception_on_proxy in
    # litellm/proxy/utils.py) imports `prisma`, which litellm[proxy] does not install: the
    # ModuleNotFoundError turns the 404 into a plain-text 500 that names nothing.
    status, _, body = proxy.request("GET", "/v1/batches/batch_unknown", headers=MASTER)
    assert (status, body) == (500, "Internal Server Error")


def test_without_files_settings_every_upload_is_refused_but_batches_follow_the_model_list(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    file_id = _upload(sim.base_url, SIMS)[1]["id"]  # a batch input already on the simulator
    batches = sim.ledger()["batches"]["batches"]
    with _proxy(tmp_path, proxy_config(sim.base_url, files_settings=False)) as bare:
        status, body = _upload(bare.base_url, MASTER)
        assert status == 500
        assert body["error"]["message"] == (
            "files_settings is not set, set it on your config.yaml file."
        )
        # A batch names no model, yet goes to the OpenAI deployment's api_base with its key
        # (get_team_provider_credentials in litellm/proxy/openai_files_endpoints/
        # common_utils.py), not to LiteLLM's default OpenAI endpoint (here: nowhere).
        status, _, body = bare.request(
            "POST",
            "/v1/batches",
            body={
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
            headers=MASTER,
        )
        assert status == 200 and body["input_file_id"] == file_id
    assert sim.ledger()["batches"]["batches"] == batches + 1


def _upload(base_url: str, headers: dict[str, str]) -> tuple[int, Any]:
    """POST /files with purpose=batch and a one-line batch input; the status and JSON body."""
    line = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "t/cheap", "messages": [{"role": "user", "content": "hi"}]},
    }
    boundary = "batchroute-test-boundary"
    data = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        f"Content-Type: application/jsonl\r\n\r\n{json.dumps(line)}\n\r\n--{boundary}--\r\n"
    ).encode()
    request = urllib.request.Request(f"{base_url}/files", data=data, method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    for name, value in headers.items():
        request.add_header(name, value)
    # An empty ProxyHandler: a proxy from the environment must never see loopback calls.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_poll_the_proxy_fails_does_not_pay_for_the_batch_twice(
    tmp_path: Path,
    sim: SimulatorHandle,
    relay: Relay,
    proxy: Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = 20
    write_tasks(tmp_path, n)
    online = _run(_job(tmp_path, sim.base_url, name="online.toml"), SIM_KEY, monkeypatch)
    sim.reset()
    # The provider fails polls while the batch runs; the proxy hands each failure on as its
    # bare 500. The batch still runs upstream: it must be waited for, not sent again.
    failed, relay.fail_polls = relay.failed, 4
    job = _job(tmp_path, proxy.base_url, cheap='mode = "batch"\n', name="batch.toml")
    report = _run(job, MASTER_KEY, monkeypatch)
    assert relay.failed == failed + 4
    ledger = sim.ledger()
    assert ledger["batches"]["batches"] == 1 and ledger["batches"]["lines"] == n
    results = read_results(report.results_path)
    expected = read_results(online.results_path)
    assert results.select(COMPARED).equals(expected.select(COMPARED))
    assert results["cost_usd"].sum() == pytest.approx(ledger["total_charged_usd"], rel=1e-9)


def test_status_and_cancel_through_the_proxy_stop_a_running_batch(
    tmp_path: Path, sim: SimulatorHandle, slow_sim: SimulatorHandle, relay: Relay, proxy: Server
) -> None:
    write_tasks(tmp_path, 20)
    job = _job(tmp_path, proxy.base_url, cheap='mode = "batch"\n', name="job.toml")
    env = {"BATCHROUTE_TEST_KEY": MASTER_KEY}
    relay.upstream = slow_sim.root  # the proxy's provider is now the slow simulator
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "batchroute", "run", str(job), "-q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        batch_id = wait_for_batch_id(tmp_path / ".batchroute/store.sqlite", process)
        status = run_cli("status", job, env=env)
        assert status.returncode == 0, status.stderr
        line = next(line for line in status.stdout.splitlines() if batch_id in line)
        assert "t/cheap" in line and ("validating" in line or "in_progress" in line)
        cancelled = run_cli("cancel", job, env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        assert batch_id in cancelled.stdout and "cancel requested" in cancelled.stdout
        _, stderr = process.communicate(timeout=60)
    finally:
        relay.upstream = sim.root
    assert process.returncode == 5, stderr  # no row ended ok: the batch was cancelled
    assert "cancelled" in stderr and "Traceback" not in stderr
    ledger = slow_sim.ledger()
    assert ledger["batches"]["batches"] == 1 and ledger["batches"]["cancelled"] == 1
    assert ledger["total_charged_usd"] == 0
