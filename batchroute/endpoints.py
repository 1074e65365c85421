"""The endpoints a job calls: which ones its models use, their keys, and where they listen."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from batchroute.errors import ConfigError
from batchroute.job import DEFAULT_ENDPOINT, EndpointConfig, Job, models_named


def used_endpoints(job: Job) -> dict[str, EndpointConfig]:
    """The endpoints that serve a model the job names, by name ("default" is `[endpoint]`)."""
    names = {job.endpoint_name(model) for model in models_named(job)} or {DEFAULT_ENDPOINT}
    every = job.all_endpoints()
    return {name: every[name] for name in every if name in names}


def api_keys(job: Job) -> dict[str, str]:
    """Each used endpoint's key, read from the variable its `api_key_env` names."""
    keys = {}
    for name, endpoint in used_endpoints(job).items():
        where = "endpoint" if name == DEFAULT_ENDPOINT else f"endpoints.{name}"
        keys[name] = _key(endpoint, where=f"{job.source}: {where}")
    return keys


def _key(endpoint: EndpointConfig, *, where: str) -> str:
    variable = endpoint.api_key_env
    if variable is None:
        # Local servers (the simulator, llama.cpp, vLLM) accept any key; clients need one.
        return "not-needed"
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"{where}.api_key_env: environment variable {variable} is not set")
    return value


@contextlib.contextmanager
def endpoint_urls(job: Job) -> Iterator[dict[str, str]]:
    """Each used endpoint's base URL; one simulator is started for the run if any of them is
    `embedded`, and stopped afterwards. Blocking: run it in a worker thread from async code."""
    endpoints = used_endpoints(job)
    with contextlib.ExitStack() as stack:
        simulator_url = None
        if any(endpoint.embedded for endpoint in endpoints.values()):
            from batchroute.sim import running_simulator

            sim = job.simulator
            handle = stack.enter_context(
                running_simulator(
                    models=sim.models, seed=sim.seed, balance=sim.balance_usd, replay=sim.replay
                )
            )
            simulator_url = handle.base_url
        yield {
            name: simulator_url if endpoint.embedded and simulator_url else endpoint.base_url
            for name, endpoint in endpoints.items()
        }
