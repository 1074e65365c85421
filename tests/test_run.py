"""End to end: the real CLI against the simulator on 127.0.0.1, outputs read back from Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from helpers import job_text, run_cli, write_job, write_sim_models, write_tasks

from batchroute import read_calls, read_metadata, read_results
from batchroute.sim import SimulatorHandle

# Every end-to-end test runs over both transports: they must behave the same.
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.parametrize("transport", ["aiohttp", "openai"]),
]

CASCADE = 'strategy = "cascade"\ntiers = ["t/cheap", "t/strong"]\n'
JSON_PARAMS_AND_CHECK = """
[params]
max_tokens = 50
response_format = { type = "json_object" }

[check]
type = "json_schema"
schema = { type = "object", required = ["answer", "confidence"], \
  properties = { confidence = { type = "number", minimum = 0.6 } } }
"""


def _run(tmp_path: Path, body: str, *args: str) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    job = write_job(tmp_path, body)
    done = run_cli("run", job, *args)
    assert done.returncode == 0, done.stderr
    results = read_results(tmp_path / "out/results.parquet")
    return results, read_calls(tmp_path / "out/results.parquet"), done.stdout


def test_fixed_route_answers_every_row_and_charges_match_the_ledger(
    transport: str, tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 40)
    body = job_text(
        transport=transport,
        base_url=fresh_sim.base_url,
        route='strategy = "fixed"\nmodel = "t/strong"',
    )
    results, calls, stdout = _run(tmp_path, body)

    assert results.height == 40
    assert results["task_id"].to_list() == [f"task-{i:04d}" for i in range(40)]  # input order
    assert results["row_id"].to_list() == results["task_id"].to_list()
    assert set(results["status"]) == {"ok"} and set(results["model"]) == {"t/strong"}
    assert not results["escalated"].any()
    assert results["check_passed"].is_null().all()  # no check configured
    assert calls.height == 40 and set(calls["status_code"]) == {200}
    assert set(calls["cost_source"]) == {"header"}

    ledger = fresh_sim.ledger()
    assert ledger["models"]["t/strong"]["requests"] == 40
    assert results["cost_usd"].sum() == pytest.approx(ledger["total_charged_usd"], abs=1e-9)
    assert results["prompt_tokens"].sum() == ledger["models"]["t/strong"]["prompt_tokens"]
    assert "40 rows: 40 ok, 0 failed" in stdout


def test_cascade_escalates_exactly_the_rows_whose_cheap_answer_fails_the_check(
    transport: str, tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 60)
    body = job_text(
        transport=transport, base_url=fresh_sim.base_url, route=CASCADE, extra=JSON_PARAMS_AND_CHECK
    )
    results, calls, _ = _run(tmp_path, body)

    escalated = results.filter(pl.col("escalated"))
    kept = results.filter(~pl.col("escalated"))
    assert 0 < escalated.height < results.height  # skill 0.3 fails often, not always
    assert set(escalated["model"]) == {"t/strong"} and set(kept["model"]) == {"t/cheap"}
    assert escalated["tiers_tried"].to_list() == [["t/cheap", "t/strong"]] * escalated.height
    assert escalated["escalation_reason"].str.starts_with("json_schema failed on t/cheap").all()
    assert kept["check_passed"].all() and kept["escalation_reason"].is_null().all()
    assert (escalated["calls"] == 2).all() and (kept["calls"] == 1).all()
    # Each kept answer really passes the check: valid JSON with a confidence of at least 0.6.
    for answer in kept["answer"]:
        assert json.loads(answer)["confidence"] >= 0.6
    # Both tiers' charges are in the row's cost, and the total is what the provider billed.
    per_row = calls.group_by("row_id").agg(pl.col("charge_usd").sum())
    joined = results.join(per_row, on="row_id")
    assert (joined["cost_usd"] - joined["charge_usd"]).abs().max() < 1e-12
    assert results["cost_usd"].sum() == pytest.approx(
        fresh_sim.ledger()["total_charged_usd"], abs=1e-9
    )


def test_fallback_after_retries_and_the_calls_table_records_every_attempt(
    transport: str, tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 5)
    models = """
    [models."t/broken"]
    fallbacks = ["t/strong"]
    [models."t/strong"]
    """
    body = job_text(
        transport=transport,
        base_url=fresh_sim.base_url,
        route='strategy = "fixed"\nmodel = "t/broken"',
        models=models,
        run_extra="max_attempts = 3",
    )
    results, calls, _ = _run(tmp_path, body)

    assert set(results["status"]) == {"ok"} and set(results["model"]) == {"t/strong"}
    assert results["fallback_used"].all() and (results["calls"] == 4).all()
    broken = calls.filter(pl.col("model") == "t/broken").sort("row_id", "attempt")
    assert broken.height == 15
    assert set(broken["status_code"]) == {500} and set(broken["error_kind"]) == {"http_500"}
    assert broken["attempt"].to_list()[:3] == [1, 2, 3]
    assert fresh_sim.ledger()["models"]["t/broken"]["errors"]["500"] == 15


def test_429_retry_after_is_honoured_and_every_row_settles(
    transport: str, tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    # The simulator throttles half of all requests with a 429 and a Retry-After.
    write_tasks(tmp_path, 12)
    body = job_text(
        transport=transport,
        base_url=fresh_sim.base_url,
        route='strategy = "fixed"\nmodel = "t/throttled"',
        run_extra="max_attempts = 12",
    )
    results, calls, _ = _run(tmp_path, body)
    assert set(results["status"]) == {"ok"}
    limited = calls.filter(pl.col("status_code") == 429)
    assert limited.height == fresh_sim.ledger()["models"]["t/throttled"]["errors"]["429"] > 0
    assert limited["retry_after_s"].is_not_null().all()
    # Every retry of a throttled call started no sooner than the server asked.
    for row in limited.iter_rows(named=True):
        later = calls.filter(
            (pl.col("row_id") == row["row_id"]) & (pl.col("attempt") == row["attempt"] + 1)
        )
        waited = (later["started_at"][0] - row["started_at"]).total_seconds()
        assert waited >= row["retry_after_s"]


def test_a_hang_hits_the_timeout_then_falls_back(
    transport: str, tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 3)
    models = """
    [models."t/hangs"]
    fallbacks = ["t/cheap"]
    [models."t/cheap"]
    """
    body = job_text(
        transport=transport,
        base_url=fresh_sim.base_url,
        route='strategy = "fixed"\nmodel = "t/hangs"',
        models=models,
        run_extra="max_attempts = 1",
    ).replace("timeout_s = 5", "timeout_s = 0.5")
    results, calls, _ = _run(tmp_path, body)
    assert set(results["model"]) == {"t/cheap"} and results["fallback_used"].all()
    hung = calls.filter(pl.col("model") == "t/hangs")
    assert hung.height == 3 and set(hung["error_kind"]) == {"timeout"}
    assert hung["status_code"].is_null().all()
    assert hung["latency_s"].min() >= 0.45 and hung["latency_s"].max() < 3


def test_outputs_have_real_types_metadata_and_balance(
    transport: str, tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 10)
    body = job_text(
        transport=transport, base_url=fresh_sim.base_url, route=CASCADE, extra=JSON_PARAMS_AND_CHECK
    )
    results, calls, _ = _run(tmp_path, body)
    schema = results.schema
    assert schema["escalated"] == pl.Boolean and schema["check_passed"] == pl.Boolean
    assert schema["tiers_tried"] == pl.List(pl.String) and schema["calls"] == pl.Int32
    assert schema["cost_usd"] == pl.Float64 and schema["prompt_tokens"] == pl.Int64
    assert calls.schema["started_at"] == pl.Datetime("us", "UTC")

    meta = read_metadata(tmp_path / "out/results.parquet")
    assert meta["run_id"] and meta["batchroute_version"] and meta["strategy"] == "cascade"
    assert meta["job"]["route"]["tiers"] == ["t/cheap", "t/strong"]
    ledger = fresh_sim.ledger()
    assert meta["summary"]["balance_usd"] == pytest.approx(ledger["balance_usd"], abs=1e-9)
    assert meta["summary"]["cost_usd"] == pytest.approx(ledger["total_charged_usd"], abs=1e-9)
    assert read_metadata(tmp_path / "out/results.calls.parquet")["run_id"] == meta["run_id"]
    # The balance header falls call by call.
    balances = calls.sort("started_at")["balance_usd"].drop_nulls()
    assert balances[-1] < balances[0]


def test_csv_input_without_id_column_uses_the_row_index(
    transport: str, tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    write_tasks(tmp_path, 7, name="tasks.csv", with_id=False)
    body = job_text(
        transport=transport,
        base_url=fresh_sim.base_url,
        data="tasks.csv",
        route='strategy = "fixed"\nmodel = "t/cheap"',
        input_extra='prompt = "{task_type}: {text}"\nsystem = "Be brief."',
    )
    results, calls, _ = _run(tmp_path, body)
    assert results["row_id"].to_list() == list(range(7))
    assert results.schema["row_id"] == pl.Int64 and calls.schema["row_id"] == pl.Int64


def test_messages_column_and_a_bad_row_failing_alone(
    transport: str, tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    good = json.dumps([{"role": "user", "content": "Label this: refund please"}])
    pl.DataFrame({"chat": [good, "not json", good]}).write_parquet(tmp_path / "chats.parquet")
    body = job_text(
        transport=transport,
        base_url=fresh_sim.base_url,
        data="chats.parquet",
        input_extra='messages = "chat"',
        route='strategy = "fixed"\nmodel = "t/cheap"',
    )
    results, calls, _ = _run(tmp_path, body)
    assert results["status"].to_list() == ["ok", "failed", "ok"]
    assert "column 'chat' is not valid JSON" in results["error"][1]
    assert calls.height == 2


def test_rejected_key_stops_the_run_without_leaking_it(transport: str, tmp_path: Path) -> None:
    from batchroute.sim import running_simulator

    write_tasks(tmp_path, 30)
    with running_simulator(models=write_sim_models(tmp_path), api_key="right-key") as sim:
        body = job_text(
            transport=transport,
            base_url=sim.base_url,
            route='strategy = "fixed"\nmodel = "t/cheap"',
        )
        body = body.replace("timeout_s = 5", 'timeout_s = 5\napi_key_env = "TEST_SECRET_KEY"')
        job = write_job(tmp_path, body)
        done = run_cli("run", job, env={"TEST_SECRET_KEY": "sk-wrong-secret-123"})
    assert done.returncode == 4
    assert "rejected the credentials (401)" in done.stderr and "TEST_SECRET_KEY" in done.stderr
    assert "Traceback" not in done.stderr
    results = read_results(tmp_path / "out/results.parquet")
    assert results.height == 30 and "skipped" in set(results["status"])
    for path in (tmp_path / "out").iterdir():
        assert b"sk-wrong-secret-123" not in path.read_bytes()
    assert "sk-wrong-secret-123" not in done.stdout + done.stderr


def test_an_exhausted_balance_stops_the_run(transport: str, tmp_path: Path) -> None:
    from batchroute.sim import running_simulator

    write_tasks(tmp_path, 200)
    with running_simulator(models=write_sim_models(tmp_path), balance=0.0005) as sim:
        body = job_text(
            transport=transport,
            base_url=sim.base_url,
            route='strategy = "fixed"\nmodel = "t/strong"',
        )
        done = run_cli("run", write_job(tmp_path, body))
        ledger = sim.ledger()
    assert done.returncode == 3 and "402" in done.stderr
    results = read_results(tmp_path / "out/results.parquet")
    assert results.height == 200
    assert results.filter(pl.col("status") == "ok").height >= 1
    assert results.filter(pl.col("status") == "skipped").height >= 100
    assert results["cost_usd"].sum() == pytest.approx(ledger["total_charged_usd"], abs=1e-9)


def test_embedded_simulator_runs_without_any_server(transport: str, tmp_path: Path) -> None:
    write_tasks(tmp_path, 12)
    body = job_text(
        transport=transport,
        base_url="embedded",
        route='strategy = "fixed"\nmodel = "openai/gpt-4o-mini"',
    )
    results, calls, _ = _run(tmp_path, body)
    assert set(results["status"]) == {"ok"} and set(calls["cost_source"]) == {"header"}


def test_price_table_prices_calls_when_no_charge_header_arrives(
    transport: str, tmp_path: Path, fresh_sim: SimulatorHandle
) -> None:
    # Reading a header name the simulator never sends is a provider without charge headers.
    write_tasks(tmp_path, 5)
    models = '[models."t/cheap"]\nusd_per_mtok = { input = 1000.0, output = 2000.0 }\n'
    body = job_text(
        transport=transport,
        base_url=fresh_sim.base_url,
        route='strategy = "fixed"\nmodel = "t/cheap"',
        models=models,
    ).replace("timeout_s = 5", 'timeout_s = 5\ncharge_header = "x-no-such-header"')
    results, calls, _ = _run(tmp_path, body)
    assert set(calls["cost_source"]) == {"price_table"}
    expected = (calls["prompt_tokens"] * 1000.0 + calls["completion_tokens"] * 2000.0) / 1e6
    assert (calls["charge_usd"] - expected).abs().max() < 1e-12
    assert results["cost_usd"].sum() == pytest.approx(expected.sum())
