"""The Ray engine's usage errors: exit 2 and one line, before Ray starts or a call is made."""

from __future__ import annotations

from pathlib import Path

from helpers import job_text, run_cli, write_job, write_tasks

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
