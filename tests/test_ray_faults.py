"""Faults on the Ray engine (a worker that dies mid-batch, a worker node killed with every
process on it, a driver killed mid-run) and its object-store input and output. Each scenario
(tests/ray_scenarios.py) runs in a loopback-only network namespace, simulator and S3 server
and all, and reports the simulator's ledger."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_ray import pytestmark as ray_marks

pytestmark = ray_marks
SCENARIOS = Path(__file__).with_name("ray_scenarios.py")


def _scenario(name: str, directory: Path) -> dict[str, object]:
    command = [sys.executable, str(SCENARIOS), name, str(directory)]
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command],
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in outcome, outcome["error"]
    return outcome


@pytest.mark.timeout(600)
def test_a_worker_killed_mid_batch_is_replaced_and_re_pays_only_its_calls_in_flight(
    tmp_path: Path,
) -> None:
    outcome = _scenario("worker", tmp_path)
    assert outcome["crashed"] is True
    assert outcome["rows"] == outcome["unique_ids"] == outcome["ok"] == 200
    # The crashed worker's finished calls are in the store; at most its calls in flight
    # (its concurrency, 8) are paid again.
    assert 200 <= outcome["requests"] <= 200 + 8  # type: ignore[operator]


@pytest.mark.timeout(600)
def test_a_worker_node_killed_mid_run_loses_no_row_and_re_pays_at_most_its_calls_in_flight(
    tmp_path: Path,
) -> None:
    outcome = _scenario("node", tmp_path)
    # Ray spreads the pool's actors over the three nodes: one of the two lived on the killed
    # worker node.
    assert outcome["workers_on_killed_node"] == 1
    assert 0 < outcome["paid_before_kill"] < 200  # type: ignore[operator]
    assert outcome["rows"] == outcome["unique_ids"] == outcome["ok"] == 200
    assert 200 <= outcome["requests"] <= 200 + 8  # type: ignore[operator]


@pytest.mark.timeout(600)
def test_a_killed_driver_is_resumed_by_the_same_command_without_paying_twice(
    tmp_path: Path,
) -> None:
    outcome = _scenario("driver", tmp_path)
    assert outcome["rows"] == outcome["unique_ids"] == outcome["ok"] == 200
    # Two workers of 8 calls each were in flight when the driver died.
    assert outcome["requests"] <= 200 + 2 * 8  # type: ignore[operator]


@pytest.mark.timeout(600)
def test_the_ray_engine_reads_an_s3_prefix_and_writes_to_s3(tmp_path: Path) -> None:
    pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
    outcome = _scenario("s3", tmp_path)
    assert outcome == {
        "ids_in_order": True,
        "ok": 60,
        "requests": 60,
        # Run again: every answer from the store, nothing paid twice (the workers' last
        # calls reached the store before Ray ended them).
        "again_rc": 0,
        "requests_after_again": 60,
        "all_cached_again": True,
    }


@pytest.mark.timeout(600)
def test_two_workers_share_one_budget(tmp_path: Path) -> None:
    outcome = _scenario("budget", tmp_path)
    assert outcome["rc"] == 3, outcome["stderr"]  # stopped by the budget
    assert "reached across the cluster" in str(outcome["stderr"])
    assert outcome["skipped"] > 0 and outcome["ok"] > 0
    # Each worker holding the budget on its own would have spent it twice over.
    assert outcome["charged"] <= 0.0005 + 1e-12
    assert outcome["cost_usd"] == pytest.approx(outcome["charged"])
