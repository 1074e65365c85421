"""Fault scenarios of the Ray engine, run by tests/test_ray_faults.py inside a loopback-only
network namespace: each starts a simulator, runs the real CLI on Ray, breaks something, and
prints one JSON line of what the simulator's ledger and the outputs say.

    python tests/ray_scenarios.py worker|node|driver|s3|budget DIRECTORY
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
from helpers import ray_job, write_sim_models, write_tasks  # noqa: E402

from batchroute.sim import SimulatorHandle, running_simulator  # noqa: E402

ROWS = 200
BUDGET = 0.0005
CONCURRENCY = 8  # per worker: at most this many calls of a worker are in flight

# A python check that kills its own worker process once, at one row: a real crash of a Ray
# actor mid-batch, after that row's call was paid.
CRASHY = """
import os
from pathlib import Path


def check(row, answer):
    marker = Path(__file__).with_name("crashed")
    if row["task_id"] == "task-0120" and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return True
"""


def _job(directory: Path, base_url: str, *, check: bool) -> Path:
    checked = '[check]\ntype = "python"\nfunction = "crashy:check"\n' if check else ""
    run = f"workers = 2\nworker_cpus = 0.25\nconcurrency = {CONCURRENCY}"
    return ray_job(directory, model="t/slow", run=run, base_url=base_url, extra=checked)


def _command(job: Path) -> list[str]:
    return [sys.executable, "-m", "batchroute", "run", str(job), "-q"]


def _outcome(directory: Path, sim_ledger: dict, **extra: object) -> dict[str, object]:
    results = pl.read_parquet(directory / "out/results.parquet")
    return {
        "rows": results.height,
        "unique_ids": results["task_id"].n_unique(),
        "ok": int((results["status"] == "ok").sum()),
        "requests": sim_ledger["models"]["t/slow"]["requests"],
        **extra,
    }


def _paid(sim: SimulatorHandle) -> int:
    """The calls the simulator was paid for."""
    return sim.ledger()["models"]["t/slow"]["requests"]


def _paid_a_third(sim: SimulatorHandle, run: subprocess.Popen[bytes]) -> bool:
    """Wait until a third of the rows' calls are paid; False if the run ended first."""
    while _paid(sim) < ROWS // 3:
        if run.poll() is not None:
            return False
        time.sleep(0.05)
    return True


def worker(directory: Path) -> dict[str, object]:
    (directory / "crashy.py").write_text(CRASHY, encoding="utf-8")
    with running_simulator(models=_models(directory)) as sim:
        job = _job(directory, sim.base_url, check=True)
        done = subprocess.run(_command(job), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return {"error": done.stderr[-2000:]}
        return _outcome(
            directory, sim.ledger(), crashed=(directory / "crashed").exists(), rc=done.returncode
        )


def driver(directory: Path) -> dict[str, object]:
    with running_simulator(models=_models(directory)) as sim:
        job = _job(directory, sim.base_url, check=False)
        # Its own session: the kill takes the driver and the Ray processes it started.
        first = subprocess.Popen(
            _command(job),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not _paid_a_third(sim, first):
            return {"error": "the first run ended before it was killed"}
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        paid_before = _paid(sim)
        done = subprocess.run(_command(job), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return {"error": done.stderr[-2000:]}
        return _outcome(directory, sim.ledger(), paid_before_kill=paid_before, rc=done.returncode)


def node(directory: Path) -> dict[str, object]:
    """A cluster of a head and two worker nodes; a worker node running one of the run's
    workers is killed mid-run, every process of it (raylet and object store included)."""
    import ray
    from ray._private import state
    from ray.cluster_utils import Cluster

    # Two logical CPUs a node: Ray spreads the workers (0.25 CPU each) over the nodes, and a
    # read task needs a whole CPU free on one node; with one CPU a node none may be, and the
    # run waits for ever.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
        cluster.wait_for_nodes()
        with running_simulator(models=_models(directory)) as sim:
            job = _job(directory, sim.base_url, check=False)
            # Its stderr to a file: a pipe nobody reads while the run goes on could fill.
            log = directory / "run.stderr"
            with log.open("w", encoding="utf-8") as stderr:
                run = subprocess.Popen(
                    [*_command(job), "--ray-address", cluster.address],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            if not _paid_a_third(sim, run):
                return {"error": "the run ended before the node was killed"}
            # Ray's own table of actors (the GCS, read without a dashboard): where the run's
            # workers live.
            ray.init(address=cluster.address, log_to_driver=False)
            homes = [
                actor["Address"]["NodeID"]
                for actor in state.actors().values()
                if actor["State"] == "ALIVE" and "MapWorker" in actor["ActorClassName"]
            ]
            ray.shutdown()
            victims = [node for node in nodes if node.node_id in homes]
            if not victims:
                return {"error": f"no worker on a worker node: {homes}"}
            paid_before = _paid(sim)
            cluster.remove_node(victims[0], allow_graceful=False)
            if run.wait(timeout=400) != 0:
                return {"error": log.read_text(encoding="utf-8")[-2000:]}
            return _outcome(
                directory,
                sim.ledger(),
                workers_on_killed_node=homes.count(victims[0].node_id),
                paid_before_kill=paid_before,
                rc=run.returncode,
            )
    finally:
        cluster.shutdown()


def s3(directory: Path) -> dict[str, object]:
    """Input parts under an s3:// prefix and the output to s3://, on moto's server."""
    import pyarrow.parquet as pq
    from helpers import make_tasks
    from s3_server import KEY_ENV, KEY_VALUE, SECRET_ENV, SECRET_VALUE, running_s3

    whole = make_tasks(60)
    with running_s3() as server, running_simulator(models=_models(directory)) as sim:
        fs = server.filesystem()
        fs.create_dir("lake")
        for number in range(3):
            with fs.open_output_stream(f"lake/in/part-{number}.parquet") as sink:
                pq.write_table(whole.slice(number * 20, 20).to_arrow(), sink)
        job = _job(directory, sim.base_url, check=False)
        options = server.storage_options()
        text = job.read_text(encoding="utf-8")
        text = text.replace(
            'path = "tasks.parquet"', f'path = "s3://lake/in/"\nstorage_options = {options}'
        )
        text = text.replace(
            'path = "out/results.parquet"',
            f'path = "s3://lake/out/results.parquet"\nstorage_options = {options}',
        )
        job.write_text(text, encoding="utf-8")
        env = {**os.environ, KEY_ENV: KEY_VALUE, SECRET_ENV: SECRET_VALUE}
        done = subprocess.run(_command(job), capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            return {"error": done.stderr[-2000:]}
        with fs.open_input_file("lake/out/results.parquet") as handle:
            results = pl.read_parquet(handle)
        paid = _paid(sim)
        # The same job again: a new run, answered from the store (the cross-run cache).
        again = subprocess.run(_command(job), capture_output=True, text=True, check=False, env=env)
        with fs.open_input_file("lake/out/results.parquet") as handle:
            cached = pl.read_parquet(handle)["cached"].to_list()
        return {
            "ids_in_order": results["task_id"].to_list() == whole["task_id"].to_list(),
            "ok": int((results["status"] == "ok").sum()),
            "requests": paid,
            "again_rc": again.returncode,
            "requests_after_again": _paid(sim),
            "all_cached_again": all(cached),
        }


def budget(directory: Path) -> dict[str, object]:
    """Two workers under one budget of some 80 calls: their spend together stays within it."""
    with running_simulator(models=_models(directory)) as sim:
        job = _job(directory, sim.base_url, check=False)
        text = job.read_text(encoding="utf-8").replace(
            "[route]",
            '[models."t/slow"]\nusd_per_mtok = { input = 0.2, output = 0.8 }\n'
            "[params]\nmax_tokens = 8\n[route]",
        )
        # A call is charged about $0.0000063 and estimated (8 tokens at most) at $0.0000084;
        # 200 rows, $0.00125. A budget of $0.0005 covers some 70 calls: two workers each
        # holding it on their own would spend it twice.
        job.write_text(text + f"budget_usd = {BUDGET}\n", encoding="utf-8")
        done = subprocess.run(_command(job), capture_output=True, text=True, check=False)
        results = pl.read_parquet(directory / "out/results.parquet")
        ledger = sim.ledger()
        return {
            "rc": done.returncode,
            "stderr": done.stderr[-300:],
            "ok": int((results["status"] == "ok").sum()),
            "skipped": int((results["status"] == "skipped").sum()),
            "charged": ledger["total_charged_usd"],
            "cost_usd": results["cost_usd"].sum(),
        }


def _models(directory: Path) -> Path:
    write_tasks(directory, ROWS)
    return write_sim_models(
        directory,
        """
        [models."t/slow"]
        usd_per_mtok = { input = 0.2, output = 0.8 }
        latency_ms = { mean = 100, jitter = 0 }
        """,
    )


if __name__ == "__main__":
    scenario, where = sys.argv[1], Path(sys.argv[2])
    outcome = {
        "worker": worker,
        "node": node,
        "driver": driver,
        "s3": s3,
        "budget": budget,
    }[scenario](where)
    print(json.dumps(outcome))
