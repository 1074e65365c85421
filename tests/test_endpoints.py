"""Models on several endpoints: each model's calls go to its own server, key and charge rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from helpers import run_cli, write_job, write_sim_models, write_tasks

from batchroute import read_calls, read_metadata, read_results
from batchroute.sim import SimulatorHandle, running_simulator

LOCAL_MODELS = """
[models."local/tiny"]
usd_per_mtok = { input = 0.0, output = 0.0 }
latency_ms = { mean = 0, jitter = 0 }
skill = 0.3
"""
PAID_MODELS = """
[models."paid/large"]
usd_per_mtok = { input = 3.0, output = 15.0 }
latency_ms = { mean = 0, jitter = 0 }
skill = 0.97
"""
PAID_KEY = "sk-paid-endpoint-key"


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[SimulatorHandle, SimulatorHandle]]:
    local_dir, paid_dir = tmp_path / "local", tmp_path / "paid"
    local_dir.mkdir()
    paid_dir.mkdir()
    with (
        running_simulator(models=write_sim_models(local_dir, LOCAL_MODELS)) as local,
        running_simulator(models=write_sim_models(paid_dir, PAID_MODELS), api_key=PAID_KEY) as paid,
    ):
        yield local, paid


def _job(local: SimulatorHandle, paid: SimulatorHandle, *, paid_charge_header: str) -> str:
    return f"""
[input]
path = "tasks.parquet"
id = "task_id"
prompt = "Label: {{text}}"

[output]
path = "out/results.parquet"

[endpoint]
base_url = "{local.base_url}"

[endpoints.paid]
base_url = "{paid.base_url}"
api_key_env = "PAID_KEY_FOR_TEST"
charge_header = "{paid_charge_header}"

[models."local/tiny"]
usd_per_mtok = {{ input = 0.0, output = 0.0 }}

[models."paid/large"]
endpoint = "paid"
usd_per_mtok = {{ input = 3.0, output = 15.0 }}

[route]
strategy = "cascade"
tiers = ["local/tiny", "paid/large"]

[params]
response_format = {{ type = "json_object" }}

[check]
type = "json_schema"
schema = {{ type = "object", properties = {{ confidence = {{ type = "number", minimum = 0.6 }} }} }}

[run]
concurrency = 8
"""


def test_each_tier_goes_to_its_own_endpoint_with_its_own_key_and_charges(
    tmp_path: Path, two_servers: tuple[SimulatorHandle, SimulatorHandle]
) -> None:
    local, paid = two_servers
    write_tasks(tmp_path, 40)
    job = write_job(tmp_path, _job(local, paid, paid_charge_header="X-MDB-Charged-USD"))
    done = run_cli("run", job, env={"PAID_KEY_FOR_TEST": PAID_KEY})
    assert done.returncode == 0, done.stderr

    results = read_results(tmp_path / "out/results.parquet")
    calls = read_calls(tmp_path / "out/results.parquet")
    escalated = results.filter(pl.col("escalated"))
    assert 0 < escalated.height < 40 and set(escalated["model"]) == {"paid/large"}
    local_ledger, paid_ledger = local.ledger(), paid.ledger()
    # Every call reached the server of its model, and only that one.
    assert set(local_ledger["models"]) == {"local/tiny"}
    assert set(paid_ledger["models"]) == {"paid/large"}
    assert local_ledger["models"]["local/tiny"]["requests"] == 40
    assert paid_ledger["models"]["paid/large"]["requests"] == escalated.height
    paid_calls = calls.filter(pl.col("model") == "paid/large")
    assert paid_calls["charge_usd"].sum() == pytest.approx(paid_ledger["total_charged_usd"])
    assert results["cost_usd"].sum() == pytest.approx(
        paid_ledger["total_charged_usd"] + local_ledger["total_charged_usd"]
    )
    # Each provider's balance is kept apart.
    balances = read_metadata(tmp_path / "out/results.parquet")["summary"]["balances_usd"]
    assert balances["default"] == pytest.approx(local_ledger["balance_usd"])
    assert balances["paid"] == pytest.approx(paid_ledger["balance_usd"])


def test_charge_rules_are_per_endpoint(
    tmp_path: Path, two_servers: tuple[SimulatorHandle, SimulatorHandle]
) -> None:
    # The paid endpoint is told to read a header its server never sends: its calls are priced
    # from the table, while the local endpoint's calls keep the header's charge.
    local, paid = two_servers
    write_tasks(tmp_path, 20)
    job = write_job(tmp_path, _job(local, paid, paid_charge_header="x-not-sent"))
    done = run_cli("run", job, env={"PAID_KEY_FOR_TEST": PAID_KEY})
    assert done.returncode == 0, done.stderr
    calls = read_calls(tmp_path / "out/results.parquet")
    by_model = dict(calls.group_by("model").agg(pl.col("cost_source").unique()).iter_rows())
    assert by_model == {"local/tiny": ["header"], "paid/large": ["price_table"]}


def test_a_missing_key_names_its_endpoint_and_models_lists_every_endpoint(
    tmp_path: Path, two_servers: tuple[SimulatorHandle, SimulatorHandle]
) -> None:
    local, paid = two_servers
    write_tasks(tmp_path, 3)
    job = write_job(tmp_path, _job(local, paid, paid_charge_header="X-MDB-Charged-USD"))
    done = run_cli("run", job, env={"PAID_KEY_FOR_TEST": ""})
    assert done.returncode == 2
    assert "endpoints.paid.api_key_env: environment variable PAID_KEY_FOR_TEST" in done.stderr

    listed = run_cli("models", job, env={"PAID_KEY_FOR_TEST": PAID_KEY})
    assert listed.returncode == 0, listed.stderr
    assert f"models of the job on {local.base_url}:" in listed.stdout
    assert f"models of the job on {paid.base_url} (endpoints.paid):" in listed.stdout
    assert PAID_KEY not in listed.stdout + listed.stderr


def test_an_unknown_endpoint_name_is_a_config_error(tmp_path: Path) -> None:
    write_tasks(tmp_path, 3)
    body = _job_without_servers().replace('endpoint = "paid"', 'endpoint = "payd"')
    done = run_cli("run", write_job(tmp_path, body))
    assert done.returncode == 2
    assert "models.paid/large.endpoint: no [endpoints.payd] table" in done.stderr


def _job_without_servers() -> str:
    class _Nowhere:
        base_url = "http://127.0.0.1:9/v1"

    nowhere = _Nowhere()
    return _job(nowhere, nowhere, paid_charge_header="X-MDB-Charged-USD")  # type: ignore[arg-type]
