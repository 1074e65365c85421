"""A batch tier through the LiteLLM proxy's `/v1/files` and `/v1/batches`, with the simulator
behind it as the OpenAI provider.

The proxy (1.108.7) routes these two APIs apart from its `model_list`: an upload goes to
`files_settings`' provider, a batch (create, retrieve, cancel) and a file's content to the
proxy's global OpenAI settings (`litellm_settings.api_base`/`api_key`, else the
OPENAI_BASE_URL / OPENAI_API_BASE / OPENAI_API_KEY variables, else api.openai.com). The
config below sets both to the simulator, so nothing leaves 127.0.0.1; the README's "Batch
APIs" section says the same for users. The simulator accepts only its own key, so a batch on
its ledger is one the proxy made with the key of its config, never the client's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import SIM_MODELS, SIM_SEED, job_text, write_job, write_sim_models, write_tasks
from peers import (
    Server,
    ServerUnavailable,
    free_port,
    http,
    peer_program,
    running_server,
    unavailable,
)

from batchroute import load_job, read_calls, read_results
from batchroute.batch.admin import status_lines
from batchroute.options import RunOptions
from batchroute.runner import RunReport, run
from batchroute.sim import SimulatorHandle, running_simulator

pytestmark = pytest.mark.timeout(240)

MASTER_KEY = "sk-batchroute-test-master"  # what batchroute sends to the proxy
SIM_KEY = "sk-batchroute-test-sim"  # what the proxy sends to the simulator
FIXED = 'strategy = "fixed"\nmodel = "t/cheap"'
MODELS = """
[models."t/cheap"]
usd_per_mtok = { input = 0.2, output = 0.8 }
"""
COMPARED = ["row_id", "status", "answer", "model", "escalated", "tiers_tried"]


def proxy_config(sim: SimulatorHandle) -> dict[str, Any]:
    """The proxy's config for OpenAI's Batch API on the simulator."""
    # batchroute checks the job's models against GET /models before a run; the proxy lists
    # its model_list, which its batch routes do not read (the requests name no model).
    model = {"model": "openai/t/cheap", "api_base": sim.base_url, "api_key": SIM_KEY}
    return {
        "model_list": [{"model_name": "t/cheap", "litellm_params": model}],
        "general_settings": {"master_key": MASTER_KEY},
        # Read by litellm.acreate_batch / aretrieve_batch / acancel_batch / afile_content
        # (litellm/batches/main.py, litellm/files/main.py) when the request names no model.
        "litellm_settings": {"api_base": sim.base_url, "api_key": SIM_KEY},
        # Required for an upload: without it the proxy answers 500 "files_settings is not
        # set" (get_files_provider_config in proxy/openai_files_endpoints/files_endpoints.py).
        "files_settings": [{"custom_llm_provider": "openai"}],
    }


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    models = write_sim_models(
        tmp_path_factory.mktemp("sim"), SIM_MODELS + "\n[batch]\nlatency_s = 0.3\n"
    )
    with running_simulator(models=models, seed=SIM_SEED, api_key=SIM_KEY) as handle:
        yield handle


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, sim: SimulatorHandle) -> Iterator[Server]:
    program = peer_program("litellm", "litellm", installed_by="make peers")
    directory = tmp_path_factory.mktemp("litellm")
    config = directory / "config.json"  # YAML is a superset of JSON
    config.write_text(json.dumps(proxy_config(sim)), encoding="utf-8")
    port = free_port()
    command = [str(program), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
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
    status, _, body = http(
        "GET", f"{sim.base_url}/batches/{batch_id}", headers={"Authorization": f"Bearer {SIM_KEY}"}
    )
    assert status == 200 and body["status"] == "completed"
    assert body["request_counts"] == {"total": n, "completed": n, "failed": 0}
