"""The in-process transport answers as the simulator does over real HTTP, and charges alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import polars as pl
import pytest
from helpers import SIM_SEED, SKILLS, job_text, write_job, write_sim_models, write_tasks
from inprocess import InProcessSim, InProcessTransport, embedded_sim

from batchroute import load_job, read_calls, read_results
from batchroute.runner import run
from batchroute.sim import SimConfig, SimulatorHandle
from batchroute.sim.state import Sim
from batchroute.transport import AiohttpTransport, Reply, Transport, TransportTimeout

pytestmark = pytest.mark.timeout(60)


def _ask(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


# Every gate of the simulator: answers in each mode, truncation, logprobs, an injected 500,
# injected 429s on some draws, an unknown model and a request it refuses as malformed.
REQUESTS = [
    _ask("t/cheap", "Classify: the parcel arrived damaged."),
    _ask("t/strong", "Classify: the parcel arrived damaged.", max_tokens=3),
    _ask("t/cheap", "Extract the box number: box 7.", response_format={"type": "json_object"}),
    _ask("t/strong", "Is this a refund?", logprobs=True, max_tokens=40),
    _ask("t/broken", "Anything."),
    *[_ask("t/throttled", f"Ticket {i}") for i in range(6)],
    _ask("t/nonesuch", "Anything."),
    {"model": "t/cheap", "messages": []},
    _ask("t/cheap", "Classify: the parcel arrived damaged."),  # the same prompt again
]
# Differ per server by design: a random id prefix, the clock, and what HTTP adds.
VARYING = {"x-request-id", "content-length", "date", "server", "connection"}


async def _exchange(transport: Transport) -> list[Reply]:
    replies = [await transport.chat(payload) for payload in REQUESTS]
    return [*replies, await transport.models()]


def _comparable(reply: Reply) -> tuple[int, dict[str, str], Any]:
    headers = {k.lower(): v for k, v in reply.headers.items() if k.lower() not in VARYING}
    body = reply.body
    if isinstance(body, dict) and body.get("object") == "chat.completion":
        body = {k: v for k, v in body.items() if k not in ("id", "created")}
    return reply.status, headers, body


def test_the_same_requests_get_the_same_answers_and_ledger_as_over_http(
    fresh_sim: SimulatorHandle, sim_config: SimConfig
) -> None:
    async def over_http() -> list[Reply]:
        transport = AiohttpTransport(
            base_url=fresh_sim.base_url, api_key="k", timeout_s=10, connections=4
        )
        try:
            return await _exchange(transport)
        finally:
            await transport.aclose()

    state = Sim(sim_config, seed=SIM_SEED)

    async def in_process() -> list[Reply]:
        async with InProcessTransport(state, api_key="k", timeout_s=10) as transport:
            return await _exchange(transport)

    http, local = anyio.run(over_http), anyio.run(in_process)
    statuses = [r.status for r in http]
    assert {200, 400, 404, 429, 500} <= set(statuses)  # every gate was passed through
    assert [_comparable(r) for r in local] == [_comparable(r) for r in http]
    assert state.ledger() == fresh_sim.ledger()


def test_a_run_in_process_writes_what_a_run_over_http_writes(
    tmp_path: Path, fresh_sim: SimulatorHandle, inproc_sim: InProcessSim
) -> None:
    route = 'strategy = "cascade"\ntiers = ["t/cheap", "t/strong"]'
    check = """
    [params]
    max_tokens = 50
    response_format = { type = "json_object" }
    [check]
    type = "json_schema"
    schema = { type = "object", properties = { confidence = { type = "number", minimum = 0.6 } } }
    """
    runs = {}
    for name, base_url in (("http", fresh_sim.base_url), ("local", inproc_sim.base_url)):
        directory = tmp_path / name
        directory.mkdir()
        write_tasks(directory, 40)
        runs[name] = write_job(directory, job_text(base_url=base_url, route=route, extra=check))
    run(load_job(runs["http"]))
    report = inproc_sim.run(runs["local"])
    assert report.summary["rows"] == 40

    kept = ["row_id", "answer", "model", "escalated", "tiers_tried", "cost_usd", "status"]
    http = read_results(tmp_path / "http/out/results.parquet").select(kept)
    local = read_results(tmp_path / "local/out/results.parquet").select(kept)
    assert http["escalated"].any() and not http["escalated"].all()
    assert local.equals(http)
    columns = ["row_id", "tier", "model", "status_code", "charge_usd", "prompt_tokens"]
    order = ["row_id", "tier"]
    http_calls = read_calls(tmp_path / "http/out/results.parquet").select(columns).sort(order)
    local_calls = read_calls(tmp_path / "local/out/results.parquet").select(columns).sort(order)
    assert local_calls.equals(http_calls)
    assert _rounded(inproc_sim.ledger()) == _rounded(fresh_sim.ledger())


def _rounded(value: Any) -> Any:
    """Floats to 1e-9: concurrent calls are booked in any order, and float sums of the same
    charges in another order may differ in their last bit."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 9) if isinstance(value, float) else value


def test_a_hang_times_out_and_a_wrong_key_is_refused(sim_config: SimConfig) -> None:
    state = Sim(sim_config, seed=SIM_SEED, api_key="right")

    async def scenario() -> tuple[Reply, Reply]:
        async with InProcessTransport(state, api_key="right", timeout_s=0.2) as transport:
            with pytest.raises(TransportTimeout):
                await transport.chat(_ask("t/hangs", "Anything."))
            answered = await transport.chat(_ask("t/cheap", "Anything."))
        async with InProcessTransport(state, api_key="wrong", timeout_s=5) as transport:
            refused = await transport.chat(_ask("t/cheap", "Anything."))
        return answered, refused

    answered, refused = anyio.run(scenario)
    assert answered.status == 200 and refused.status == 401
    assert refused.error["code"] == "invalid_api_key" and "right" not in refused.text
    ledger = state.ledger()
    assert ledger["models"]["t/hangs"]["errors"]["hang"] == 1
    assert ledger["models"]["t/hangs"]["charged_usd"] == 0
    assert ledger["rejected"]["401"] == 1


def test_an_embedded_job_with_a_factory_starts_no_simulator(
    tmp_path: Path, inproc_sim: InProcessSim
) -> None:
    write_tasks(tmp_path, 5)
    # A simulator started for this job would exit at once on its unreadable model table.
    (tmp_path / "broken.toml").write_text("[models\n", encoding="utf-8")
    route = 'strategy = "fixed"\nmodel = "t/cheap"'
    extra = '[simulator]\nmodels = "broken.toml"\n'
    job = write_job(tmp_path, job_text(base_url="embedded", route=route, extra=extra))
    report = inproc_sim.run(job)
    assert report.summary["rows"] == 5
    assert inproc_sim.ledger()["models"]["t/cheap"]["ok"] == 5
    results = read_results(tmp_path / "out/results.parquet")
    assert results["status"].to_list() == ["ok"] * 5
    assert results.filter(pl.col("cost_usd") > 0).height == 5


def test_embedded_sim_builds_what_the_job_would_start(tmp_path: Path) -> None:
    models = write_sim_models(tmp_path)
    extra = f'[simulator]\nmodels = "{models.name}"\nseed = 9\nbalance_usd = 5.0\n'
    route = 'strategy = "fixed"\nmodel = "t/cheap"'
    job = load_job(write_job(tmp_path, job_text(base_url="embedded", route=route, extra=extra)))
    local = embedded_sim(job)
    assert set(local.sim.config.models) == set(SKILLS) | {"t/broken", "t/hangs", "t/throttled"}
    assert (local.sim.seed, local.ledger()["balance_usd"]) == (9, 5.0)
