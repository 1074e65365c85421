"""Shared fixtures: a real simulator on 127.0.0.1 for each test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import SIM_SEED, write_sim_models

from batchroute.sim import SimulatorHandle, running_simulator


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    """One simulator per test module; `fresh_sim` clears its ledger for each test."""
    models = write_sim_models(tmp_path_factory.mktemp("sim"))
    with running_simulator(models=models, seed=SIM_SEED) as handle:
        yield handle


@pytest.fixture
def fresh_sim(sim: SimulatorHandle) -> SimulatorHandle:
    sim.reset()
    return sim
