"""The Ray engine before Ray starts: usage errors (exit 2, one line, no call made) and the job
as each worker runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import job_text, run_cli, write_job, write_tasks

from batchroute.engines.ray_engine import share_warnings, worker_share
from batchroute.job import load_job
from batchroute.sim import SimulatorHandle


def test_the_ray_engine_without_an_id_column_names_input_id(
    tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 5, with_id=False)
    body = job_text(
        base_url=fresh_sim.base_url,
        route='strategy = "fixed"\nmodel = "t/cheap"',
        input_extra='prompt = "Label: {text}"',
    )
    done = run_cli("run", write_job(tmp_path, body), "--engine", "ray")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "input.id: run.engine = 'ray' needs an id column" in done.stderr
    assert sum(m["requests"] for m in fresh_sim.ledger()["models"].values()) == 0
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_max_concurrency_is_split_between_the_workers_and_a_share_below_one_is_named(
    tmp_path: Path,
) -> None:
    models = '[models."t/cheap"]\nmax_concurrency = 5\n[models."t/strong"]\nmax_concurrency = 2\n'
    body = job_text(
        base_url="http://127.0.0.1:9/v1",
        route='strategy = "fixed"\nmodel = "t/cheap"',
        models=models,
        run_extra='engine = "ray"\nworkers = 4',
    )
    job = load_job(write_job(tmp_path, body))
    shares = {name: m.max_concurrency for name, m in worker_share(job).models.items()}
    assert shares == {"t/cheap": 1, "t/strong": 1}  # 5 // 4, and at least one
    (warning,) = share_warnings(job)
    assert "models.t/strong.max_concurrency = 2 is below run.workers = 4" in warning
    assert "\n" not in warning


@pytest.mark.parametrize(
    ("address", "says"),
    [("bogus", "not HOST:PORT"), ("127.0.0.1:9", "no Ray cluster answers there")],
)
def test_a_ray_address_that_is_not_one_or_answers_nothing_is_one_line(
    tmp_path: Path, fresh_sim: SimulatorHandle, address: str, says: str
) -> None:
    write_tasks(tmp_path, 5)
    body = job_text(base_url=fresh_sim.base_url, route='strategy = "fixed"\nmodel = "t/cheap"')
    done = run_cli("run", write_job(tmp_path, body), "--engine", "ray", "--ray-address", address)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert f"run.ray_address (or --ray-address) '{address}': {says}" in done.stderr
    assert sum(m["requests"] for m in fresh_sim.ledger()["models"].values()) == 0
    assert not (tmp_path / "out" / "results.parquet").exists()
