"""Every request parameter reaches the server (the simulator echoes what it received), is part
of the cache key, and tool calls in an answer are recorded; per-model prompt templates."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from helpers import job_text, write_job, write_tasks

import batchroute
from batchroute.errors import ConfigError
from batchroute.results import read_calls, read_results
from batchroute.sim import running_simulator

SIM = """\
[models."e/echo"]
usd_per_mtok = { input = 1.0, output = 1.0 }
latency_ms = { mean = 0, jitter = 0 }
echo = true

[models."e/plain"]
usd_per_mtok = { input = 1.0, output = 1.0 }
latency_ms = { mean = 0, jitter = 0 }

[models."e/broken"]
usd_per_mtok = { input = 1.0, output = 1.0 }
latency_ms = { mean = 0, jitter = 0 }
errors = { "500" = 1.0 }
"""

PARAMS = """\
[params]
max_tokens = 4000
stop = ["\\n\\n", "END"]
logit_bias = { "50256" = -100 }
reasoning_effort = "low"
tools = [{ type = "function", function = { name = "label", parameters = { type = "object" } } }]
tool_choice = "auto"
extra_body = { top_k = 5, metadata = { team = "support" } }
"""


@pytest.fixture
def sim_url(tmp_path: Path):  # type: ignore[no-untyped-def]
    table = tmp_path / "sim.toml"
    table.write_text(SIM, encoding="utf-8")
    with running_simulator(models=table) as sim:
        yield sim.base_url


def _run(directory: Path, base_url: str, *, route: str, extra: str, models: str = "") -> Path:
    write_tasks(directory, 3)
    body = job_text(base_url=base_url, route=route, extra=extra, models=models)
    job = batchroute.load_job(write_job(directory, body))
    return batchroute.run(job, batchroute.RunOptions(force=True)).results_path


def test_every_parameter_reaches_the_server(tmp_path: Path, sim_url: str) -> None:
    results_path = _run(
        tmp_path, sim_url, route='strategy = "fixed"\nmodel = "e/echo"', extra=PARAMS
    )
    results = read_results(results_path)
    assert set(results["status"]) == {"ok"}
    received = json.loads(results["answer"][0])
    assert received["stop"] == ["\n\n", "END"]
    assert received["logit_bias"] == {"50256": -100}
    assert received["reasoning_effort"] == "low"
    assert received["tools"][0]["function"]["name"] == "label"
    assert received["tool_choice"] == "auto"
    # extra_body is merged into the request, not sent as a key of its own
    assert received["top_k"] == 5 and received["metadata"] == {"team": "support"}
    assert "extra_body" not in received
    assert received["max_tokens"] == 4000


def test_a_parameter_is_part_of_the_cache_key(tmp_path: Path, sim_url: str) -> None:
    route = 'strategy = "fixed"\nmodel = "e/echo"'
    first = _run(tmp_path, sim_url, route=route, extra=PARAMS)
    assert not read_results(first)["cached"].any()
    again = _run(tmp_path, sim_url, route=route, extra=PARAMS)
    assert read_results(again)["cached"].all()  # the same request: from the store
    changed = _run(tmp_path, sim_url, route=route, extra=PARAMS.replace('"low"', '"high"'))
    assert not read_results(changed)["cached"].any()  # another reasoning_effort: asked anew


def test_tool_calls_are_recorded(tmp_path: Path, sim_url: str) -> None:
    extra = PARAMS.replace('tool_choice = "auto"', 'tool_choice = "required"')
    results_path = _run(
        tmp_path, sim_url, route='strategy = "fixed"\nmodel = "e/plain"', extra=extra
    )
    results = read_results(results_path)
    assert set(results["status"]) == {"ok"}
    calls = json.loads(results["tool_calls"][0])
    assert calls[0]["type"] == "function" and calls[0]["function"]["name"] == "label"
    assert "answer" in json.loads(calls[0]["function"]["arguments"])
    assert read_calls(results_path)["tool_calls"].is_not_null().all()
    # Asked again, the answer comes from the store with the same tool calls.
    again = read_results(
        _run(tmp_path, sim_url, route='strategy = "fixed"\nmodel = "e/plain"', extra=extra)
    )
    assert again["cached"].all()
    assert again["tool_calls"].to_list() == results["tool_calls"].to_list()


def test_a_model_carries_its_own_prompt_templates(tmp_path: Path, sim_url: str) -> None:
    models = textwrap.dedent(
        """\
        [models."e/echo"]
        system = "You answer tersely about {task_type}."
        prompt = "Own wording: {text}"
        """
    )
    results_path = _run(
        tmp_path,
        sim_url,
        route='strategy = "fixed"\nmodel = "e/echo"',
        extra="[params]\nmax_tokens = 4000\n",
        models=models,
    )
    received = json.loads(read_results(results_path)["answer"][0])
    assert received["messages"][0] == {
        "role": "system",
        "content": "You answer tersely about classify.",
    }
    assert received["messages"][1]["content"].startswith("Own wording: Ticket number 0")


def test_a_fallback_model_uses_its_own_prompt(tmp_path: Path, sim_url: str) -> None:
    models = textwrap.dedent(
        """\
        [models."e/broken"]
        fallbacks = ["e/echo"]

        [models."e/echo"]
        prompt = "Fallback wording: {text}"
        """
    )
    results_path = _run(
        tmp_path,
        sim_url,
        route='strategy = "fixed"\nmodel = "e/broken"',
        extra="[params]\nmax_tokens = 4000\n",
        models=models,
    )
    results = read_results(results_path)
    assert results["fallback_used"].all() and set(results["model"]) == {"e/echo"}
    received = json.loads(results["answer"][0])
    assert received["messages"][-1]["content"].startswith("Fallback wording: Ticket number 0")


def test_a_misspelled_parameter_is_still_an_error(tmp_path: Path) -> None:
    write_tasks(tmp_path, 1)
    body = job_text(
        base_url="http://127.0.0.1:9/v1",
        route='strategy = "fixed"\nmodel = "e/echo"',
        extra='[params]\ntool_choise = "auto"\n',
    )
    with pytest.raises(ConfigError, match="tool_choise"):
        batchroute.load_job(write_job(tmp_path, body))
