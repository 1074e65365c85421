"""Shared fixtures: a real simulator on 127.0.0.1 for tests of HTTP, one in-process for the rest.

`make test` runs the suite on four pytest-xdist workers. The Ray tests are one unit of work,
so one worker runs them one cluster at a time (two Ray clusters on two cores starve each
other). Being the largest unit, xdist hands it out first: it is the longest chain, and the
other workers share the rest meanwhile.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from helpers import SIM_SEED, write_sim_models
from inprocess import InProcessSim

from batchroute.sim import SimConfig, SimulatorHandle, load_sim_config, running_simulator
from batchroute.sim.state import Sim

RAY_MODULES = ("test_ray.py", "test_ray_faults.py")


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Under `-n`, the Ray tests are one unit of work: one worker runs them, one cluster at a
    time. (xdist's own `--dist loadgroup` marks groups by rewriting node ids, which pytest 9.2
    no longer lets it do.) `_split_scope` is how xdist's own loadgroup and loadfile
    schedulers are written; pyproject.toml keeps xdist below 4 for it."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class RayTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if _module(nodeid) in RAY_MODULES else nodeid

    return RayTogether(config, log)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    """One simulator for the whole session; `fresh_sim` clears its ledger for each test."""
    models = write_sim_models(tmp_path_factory.mktemp("sim"))
    with running_simulator(models=models, seed=SIM_SEED) as handle:
        yield handle


@pytest.fixture
def fresh_sim(sim: SimulatorHandle) -> SimulatorHandle:
    sim.reset()
    return sim


@pytest.fixture(scope="session")
def sim_config(tmp_path_factory: pytest.TempPathFactory) -> SimConfig:
    """The shared simulator's model table (helpers.SIM_MODELS), read once."""
    return load_sim_config(write_sim_models(tmp_path_factory.mktemp("inproc")))


@pytest.fixture
def inproc_sim(
    sim_config: SimConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessSim]:
    """A new in-process simulator per test, with `sim`'s models and seed: jobs that name its
    `base_url` and run through `inproc_sim.run` are answered without a socket."""
    path = list(sys.path)
    yield InProcessSim(Sim(sim_config, seed=SIM_SEED))
    # A job's python checks are imported from its directory, into this process: forget them,
    # as the end of a CLI process would, so the next test imports its own.
    sys.path[:] = path
    scratch = str(tmp_path_factory.getbasetemp())
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(scratch):
            del sys.modules[name]
