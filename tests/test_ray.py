"""The Ray engine on a real local Ray cluster, inside a network namespace with only loopback.

Ray binds every interface by default; each run here is the real CLI started under
`unshare --net` (root only), so nothing listens on or reaches anything but 127.0.0.1. The
embedded simulator runs in the same namespace, in the driver.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import polars as pl
import pytest
from helpers import ray_job, write_sim_models, write_tasks

from batchroute.sink import read_metadata

pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install '.[ray]'")

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "jobs" / "demo.toml"


def _netns_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--net", "sh", "-c", "ip link set lo up"], capture_output=True, check=False
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _netns_works(),
    reason="Ray tests run in a loopback-only network namespace: needs `unshare --net` (root)",
)


def run_in_netns(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real `batchroute` command in a network namespace of its own with only loopback."""
    command = [sys.executable, "-m", "batchroute", *map(str, args)]
    return subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_local(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "batchroute", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def _demo_in(directory: Path, *, output: str) -> Path:
    """The demo job, reading the demo data, writing into `directory` (its own store)."""
    directory.mkdir(parents=True)
    text = DEMO.read_text(encoding="utf-8")
    text = text.replace('"../data/demo_tickets.parquet"', f'"{ROOT / "data/demo_tickets.parquet"}"')
    text = text.replace('"../out/demo.cascade.parquet"', f'"{output}"')
    job = directory / "demo.toml"
    job.write_text(text, encoding="utf-8")
    return job


@pytest.mark.timeout(600)
def test_the_demo_on_ray_with_two_workers_matches_the_local_engine_row_for_row(
    tmp_path: Path,
) -> None:
    local_job = _demo_in(tmp_path / "local", output="out/demo.parquet")
    ray_job = _demo_in(tmp_path / "ray", output="out/demo.parquet")
    local = run_local("run", local_job, "-q")
    assert local.returncode == 0, local.stderr
    on_ray = run_in_netns("run", ray_job, "-q", "--engine", "ray")
    assert on_ray.returncode == 0, on_ray.stderr

    a = pl.read_parquet(tmp_path / "local/out/demo.parquet")
    b = pl.read_parquet(tmp_path / "ray/out/demo.parquet")
    assert a.schema == b.schema
    assert b.height == 3000
    same = ["ticket_id", "answer", "model", "plan", "escalated", "tiers_tried", "status"]
    assert a.select(same).equals(b.select(same))  # row for row, in input order
    # Identical requests share one call within a worker only (`run.dedupe`), so which of two
    # identical rows paid may differ; what each row's answer cost, paid or shared, may not.
    answer_cost = pl.col("cost_usd").fill_null(0) + pl.col("shared_cost_usd").fill_null(0)
    cost_a, cost_b = a.select(answer_cost).to_series(), b.select(answer_cost).to_series()
    assert cost_a.to_list() == pytest.approx(cost_b.to_list(), abs=1e-12)
    assert b["cost_usd"].sum() >= a["cost_usd"].sum() - 1e-9  # workers share less
    assert b["escalated"].sum() > 0  # the cascade did escalate

    calls_a = pl.read_parquet(tmp_path / "local/out/demo.calls.parquet")
    calls_b = pl.read_parquet(tmp_path / "ray/out/demo.calls.parquet")
    assert calls_a.schema == calls_b.schema
    key = ["row_id", "tier", "model", "attempt"]
    charged = (pl.col("charge_usd").fill_null(0) + pl.col("shared_charge_usd").fill_null(0)).alias(
        "charged"
    )
    assert (
        calls_a.sort(key).select([*key, charged]).equals(calls_b.sort(key).select([*key, charged]))
    )
    meta_a = read_metadata(tmp_path / "local/out/demo.parquet")
    meta_b = read_metadata(tmp_path / "ray/out/demo.parquet")
    assert set(meta_a) == set(meta_b)
    assert meta_b["summary"]["rows"] == meta_a["summary"]["rows"] == 3000
    assert meta_b["summary"]["cost_usd"] >= meta_a["summary"]["cost_usd"] - 1e-9


RPM = 1200  # 20 requests a second: 500 rows take about 25 s once the workers are up
ROWS = 500


@pytest.mark.timeout(600)
def test_four_workers_share_one_rpm_through_the_lease_service(tmp_path: Path) -> None:
    """Each worker would send the job's rpm on its own; the lease service holds them to it.

    The simulator counts a sliding minute and answers the excess with 429s (every call is in
    the calls table, 429s too).
    """
    models = write_sim_models(
        tmp_path,
        f"""
        [models."t/limited"]
        usd_per_mtok = {{ input = 0.2, output = 0.8 }}
        latency_ms = {{ mean = 20, jitter = 0 }}
        rpm = {RPM}
        """,
    )
    write_tasks(tmp_path, ROWS)
    job = ray_job(
        tmp_path,
        model="t/limited",
        models=models,
        model_settings=f"rpm = {RPM}",
        batch_rows=25,
        run="workers = 4\nworker_cpus = 0.2\nconcurrency = 32",
    )
    done = run_in_netns("run", job, "-q", "--no-cache")
    assert done.returncode == 0, done.stderr
    calls = pl.read_parquet(tmp_path / "out/results.calls.parquet")
    ok = calls.filter(pl.col("status_code") == 200)
    limited = calls.filter(pl.col("status_code") == 429)
    assert ok.height == ROWS
    assert limited.height / calls.height < 0.005
    # The rate while calls flowed (Ray's start-up is not the limiter's doing).
    first = ok["started_at"].min()
    last = ok["started_at"].max()
    span_s = (last - first).total_seconds()  # type: ignore[operator]
    achieved_per_min = (ok.height - 1) / span_s * 60
    # Near the limit, never past it: four workers each pacing on their own would send 4x.
    assert 0.97 <= achieved_per_min / RPM <= 1.02


@pytest.mark.timeout(600)
def test_a_csv_directory_on_ray_reads_the_types_the_local_engine_reads(tmp_path: Path) -> None:
    """Two CSV files with a code column (text by input.schema; one file alone would read as
    numbers) and a bool in any case: Ray Data's reader gets the local engine's column types,
    so both write the same rows."""
    for name, engine in (("local", "local"), ("ray", "ray")):
        directory = tmp_path / name
        (directory / "parts").mkdir(parents=True)
        (directory / "parts" / "a.csv").write_text(
            "task_id,code,urgent,text\nt1,007,True,box one\nt2,010,false,box two\n",
            encoding="utf-8",
        )
        (directory / "parts" / "b.csv").write_text(
            "task_id,code,urgent,text\nt3,123,TRUE,box three\n", encoding="utf-8"
        )
        (directory / "job.toml").write_text(
            textwrap.dedent(
                f"""
                [input]
                path = "parts"
                id = "task_id"
                prompt = "Label {{code}} ({{urgent}}): {{text}}"
                schema = {{ code = "str" }}
                [output]
                path = "out/results.parquet"
                [endpoint]
                base_url = "embedded"
                [route]
                strategy = "fixed"
                model = "openai/gpt-4o-mini"
                [run]
                engine = "{engine}"
                workers = 1
                """
            ),
            encoding="utf-8",
        )
    local = run_local("run", tmp_path / "local/job.toml", "-q")
    assert local.returncode == 0, local.stderr
    on_ray = run_in_netns("run", tmp_path / "ray/job.toml", "-q")
    assert on_ray.returncode == 0, on_ray.stderr
    a = pl.read_parquet(tmp_path / "local/out/results.parquet")
    b = pl.read_parquet(tmp_path / "ray/out/results.parquet")
    assert a.schema == b.schema
    assert b["code"].to_list() == ["007", "010", "123"]
    assert b["urgent"].to_list() == [True, False, True]
    assert a.select("task_id", "answer", "cost_usd").equals(
        b.select("task_id", "answer", "cost_usd")
    )


def _peak_in_flight(calls: pl.DataFrame) -> int:
    """The most calls open at one instant, from each call's start and latency (every call
    starts inside its slot, so this never overstates the slots held)."""
    events = []
    for started, latency in calls.select("started_at", "latency_s").iter_rows():
        start = started.timestamp()
        events += [(start, 1), (start + latency, -1)]
    open_now = peak = 0
    for _, step in sorted(events, key=lambda event: (event[0], event[1])):
        open_now += step
        peak = max(peak, open_now)
    return peak


@pytest.mark.timeout(600)
def test_max_concurrency_holds_across_the_workers(tmp_path: Path) -> None:
    """A model that takes 2 calls at a time, called by 2 workers of 8 rows in flight each:
    each worker holds one slot, 2 calls at once across the cluster (4 if each held 2)."""
    models = write_sim_models(
        tmp_path,
        """
        [models."t/narrow"]
        usd_per_mtok = { input = 0.2, output = 0.8 }
        latency_ms = { mean = 300, jitter = 0 }
        """,
    )
    write_tasks(tmp_path, 40)
    job = ray_job(
        tmp_path,
        model="t/narrow",
        models=models,
        model_settings="max_concurrency = 2",
        batch_rows=10,
        run="workers = 2\nconcurrency = 8",
    )
    done = run_in_netns("run", job, "-q", "--no-cache")
    assert done.returncode == 0, done.stderr
    calls = pl.read_parquet(tmp_path / "out/results.calls.parquet")
    assert calls.height == 40 and (calls["status_code"] == 200).all()
    assert _peak_in_flight(calls) == 2


@pytest.mark.timeout(600)
def test_a_cluster_address_that_ray_left_behind_is_not_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray records the last cluster started on a machine in its temp directory and joins it
    by default, also when that cluster was killed without `ray stop`. With no address asked
    for, a run starts its own local cluster instead of waiting on the dead one."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    try:
        (temp / "ray").mkdir()
        (temp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9", encoding="utf-8")
        monkeypatch.setenv("RAY_TMPDIR", str(temp))
        write_tasks(tmp_path, 10)
        job = ray_job(tmp_path, model="openai/gpt-4o-mini", run="workers = 1")
        done = run_in_netns("run", job, "-q", timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
        assert pl.read_parquet(tmp_path / "out/results.parquet").height == 10
    finally:
        shutil.rmtree(temp, ignore_errors=True)
