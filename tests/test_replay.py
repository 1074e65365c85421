"""Replay mode: recorded outputs served over real HTTP, and the data README's sanity table
reproduced by `batchroute compare` over the GSM8K and MT-Bench jobs in jobs/ (run in-process)."""

from __future__ import annotations

import csv
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import run_cli
from inprocess import embedded_sim

import batchroute
from batchroute.errors import ConfigError
from batchroute.job import load_job
from batchroute.sim import running_simulator
from batchroute.sim.replay import (
    JUDGE_MODEL,
    NO_TEXT,
    ReplayMiss,
    ReplayTable,
    recorded_correct,
    recorded_score,
)

REPO = Path(__file__).resolve().parent.parent
ROUTING = REPO / "data" / "routing"
MIXTRAL, GPT4 = "mixtral-8x7b-instruct-v0.1", "gpt-4-1106-preview"


def small_table() -> pl.DataFrame:
    """Two prompts; `b` has no recording of the second, `c` labels only, `a` no judgement
    of its second answer."""
    return pl.DataFrame(
        {
            "prompt": ["What is 2 + 2?", "Name a colour."],
            "a__response": ["It is 4.", "Blue."],
            "a__correct": [True, None],
            "a__score": [9.0, None],
            "a__input_tokens": [12, 10],
            "a__output_tokens": [4, 2],
            "a__cost_usd": [0.0012, 0.0004],
            "b__response": ["Four.", None],
            "b__correct": [True, None],
            "b__input_tokens": [12, None],
            "b__output_tokens": [2, None],
            "b__cost_usd": [0.5, None],
            "c__correct": [False, True],
            "c__cost_usd": [0.0, 0.25],
        }
    )


def test_replay_table_lookups() -> None:
    table = ReplayTable(small_table(), name="small")
    assert table.models == ("a", "b", "c") and JUDGE_MODEL in table.served
    reply = table.reply("a", "  What is 2 + 2?\n")
    assert (reply.content, reply.prompt_tokens, reply.completion_tokens) == ("It is 4.", 12, 4)
    assert reply.cost_usd == 0.0012
    # A template around the recorded prompt still finds it.
    assert table.reply("b", "Question: What is 2 + 2?\nAnswer:").content == "Four."
    with pytest.raises(ReplayMiss) as miss:
        table.reply("a", "Something else")
    assert miss.value.status == "400"
    with pytest.raises(ReplayMiss) as missing:
        table.reply("b", "Name a colour.")
    assert missing.value.status == "404"  # a fallback model may have it
    carried = json.loads(table.reply("c", "Name a colour.").content)
    assert carried == {"correct": True, "score": None, "note": NO_TEXT}
    # The judge finds the recorded answer quoted in its rubric and gives its recorded score.
    assert table.reply(JUDGE_MODEL, "Rate this:\n[It is 4.]").content == "Rating: [[9]]"
    assert table.reply(JUDGE_MODEL, "Rate: Four.").content == "Rating: [[10]]"  # label only
    assert "no rating" in table.reply(JUDGE_MODEL, "Rate: Blue.").content
    assert table.reply(JUDGE_MODEL, "Rate: Four.").cost_usd == 0.0


def test_recorded_truth_scorers() -> None:
    row = small_table().row(0, named=True)
    assert recorded_correct(row, "It is 4.") == (True, None)
    assert recorded_correct(row, "Five")[0] is False
    assert recorded_score(row, " It is 4. ") == 9.0
    carried = json.dumps({"correct": False, "score": None, "note": NO_TEXT})
    assert recorded_correct(row, carried) == (False, None)


def _post(base_url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    request = urllib.request.Request(
        base_url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.load(error)


def test_replay_over_http(tmp_path: Path) -> None:
    table = tmp_path / "table.parquet"
    small_table().write_parquet(table)
    with running_simulator(replay=table) as sim:
        messages = [{"role": "user", "content": "What is 2 + 2?"}]
        status, headers, body = _post(sim.base_url, {"model": "a", "messages": messages})
        assert status == 200
        assert body["choices"][0]["message"]["content"] == "It is 4."
        assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
        assert float(headers["X-MDB-Charged-USD"]) == 0.0012
        colour = [{"role": "user", "content": "Name a colour."}]
        status, _, body = _post(sim.base_url, {"model": "b", "messages": colour})
        assert status == 404 and body["error"]["code"] == "model_not_found"
        ledger = sim.ledger()
        assert ledger["models"]["a"]["charged_usd"] == pytest.approx(0.0012)
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            sim.base_url + "/models", timeout=10
        ) as response:
            served = {m["id"] for m in json.load(response)["data"]}
        assert {"a", "b", "c", JUDGE_MODEL} <= served


def test_a_repair_turn_is_replayed_as_the_recorded_answer_to_its_task(tmp_path: Path) -> None:
    # A recording holds one answer per prompt: a repair turn after it gets that answer again
    # (paid again), not a 400 for the repair text. A follow-up to an answer that is not the
    # recorded one, or that does not speak to the answer, is a new prompt, as before.
    table = tmp_path / "table.parquet"
    small_table().write_parquet(table)
    task = {"role": "user", "content": "What is 2 + 2?"}
    repair = {"role": "user", "content": "Your answer did not match the schema. Reply with JSON."}
    with running_simulator(replay=table) as sim:
        said = {"role": "assistant", "content": "It is 4."}
        status, _, body = _post(sim.base_url, {"model": "a", "messages": [task, said, repair]})
        assert status == 200 and body["choices"][0]["message"]["content"] == "It is 4."
        assert sim.ledger()["models"]["a"]["charged_usd"] == pytest.approx(0.0012)
        other = {"role": "assistant", "content": "Five."}
        status, _, body = _post(sim.base_url, {"model": "a", "messages": [task, other, repair]})
        assert status == 400 and "no recorded prompt" in body["error"]["message"]
        colour = {"role": "user", "content": "Name a colour."}
        status, _, body = _post(sim.base_url, {"model": "a", "messages": [task, said, colour]})
        assert status == 200 and body["choices"][0]["message"]["content"] == "Blue."


def test_a_bad_replay_table_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"question": ["x"]}).write_parquet(bad)
    job = tmp_path / "job.toml"
    job.write_text(
        '[input]\npath = "tasks.parquet"\nprompt = "{text}"\n[output]\npath = "o.parquet"\n'
        '[simulator]\nreplay = "bad.parquet"\n[route]\nstrategy = "fixed"\nmodel = "a"\n'
    )
    with pytest.raises(ConfigError, match=r"simulator.replay: .*needs a 'prompt' column"):
        load_job(job)


JOBS = [
    f"{data}_{name}" for data in ("gsm8k", "mtbench") for name in ("mixtral", "gpt4", "cascade")
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's six replay jobs, run from a scratch copy so outputs land there (data/
    is linked, not copied), each against the simulator its [simulator] table would start,
    built in-process: what is tested here is replay and compare, not HTTP (test_replay_over_http
    is). Each job keeps its own call store, so the cascades pay their calls anew instead of
    reusing the single-model runs' ones, which changes none of the figures."""
    root = tmp_path_factory.mktemp("replay")
    (root / "jobs").mkdir()
    shutil.copy(REPO / "jobs" / "gsm8k_checks.py", root / "jobs")
    for name in JOBS:
        text = (REPO / "jobs" / f"{name}.toml").read_text()
        store = f'\n[store]\npath = "../stores/{name}.sqlite"\n'
        (root / "jobs" / f"{name}.toml").write_text(text + store)
    (root / "data").symlink_to(REPO / "data")
    for name in JOBS:
        job = load_job(root / "jobs" / f"{name}.toml")
        report = embedded_sim(job).run(job)
        assert report.summary["failed"] == 0, f"{name}: {report.summary_line}"
    return root


def _sanity(dataset: str) -> dict[str, dict[str, str]]:
    with (ROUTING / "sanity_summary.csv").open() as handle:
        return {r["policy"]: r for r in csv.DictReader(handle) if r["dataset"] == dataset}


def _compare(root: Path, stem: str, scorer: str) -> dict[str, dict[str, Any]]:
    runs = [f"out/{stem}.{name}.parquet" for name in ("mixtral", "gpt4", "cascade")]
    result = run_cli("compare", *runs, "--truth-scorer", scorer, "--format", "json", cwd=root)
    assert result.returncode == 0, result.stderr
    return {r["run"].removeprefix(stem + "."): r for r in json.loads(result.stdout)["runs"]}


def _assert_reproduces(
    figures: dict[str, dict[str, Any]], expected: dict[str, dict[str, str]]
) -> None:
    cascade = f"oracle cascade {MIXTRAL} -> {GPT4}"
    for run, policy in (("mixtral", MIXTRAL), ("gpt4", GPT4), ("cascade", cascade)):
        got, want = figures[run], expected[policy]
        assert got["rows"] == got["ok"] == int(want["n"])
        assert got["accuracy"] == pytest.approx(float(want["accuracy"]), abs=1e-9)
        # To the cent per thousand queries (and in fact far closer).
        per_1k = got["cost_per_row_usd"] * 1000
        assert abs(per_1k - float(want["avg_cost_usd"]) * 1000) < 0.005
        assert per_1k == pytest.approx(float(want["avg_cost_usd"]) * 1000, abs=1e-6)
    assert figures["cascade"]["escalation_rate"] == pytest.approx(
        float(expected[cascade]["escalation_rate"]), abs=1e-9
    )


def test_gsm8k_replay_reproduces_the_sanity_table(workdir: Path) -> None:
    # The failing-test check as truth reproduces the recorded labels...
    figures = _compare(workdir, "gsm8k", "jobs/gsm8k_checks.py:final_number_matches")
    _assert_reproduces(figures, _sanity("gsm8k"))
    # ...and the recorded labels themselves give the same accuracy.
    labels = _compare(workdir, "gsm8k", "batchroute.sim.replay:recorded_correct")
    assert {k: v["accuracy"] for k, v in labels.items()} == {
        k: v["accuracy"] for k, v in figures.items()
    }
    assert figures["cascade"]["saving"] == pytest.approx(1 - 0.00668465 / 0.01561498, abs=1e-5)


def test_mtbench_replay_with_the_recorded_judge(workdir: Path) -> None:
    expected = _sanity("mt_bench")
    figures = _compare(workdir, "mtbench", "batchroute.sim.replay:recorded_correct")
    _assert_reproduces(figures, expected)
    # The mean judge score of the answers kept, from the Python API.
    cascade = f"oracle cascade {MIXTRAL} -> {GPT4}"
    for run, policy in (("mixtral", MIXTRAL), ("gpt4", GPT4), ("cascade", cascade)):
        results = batchroute.read_run(workdir / f"out/mtbench.{run}.parquet").results
        scores = [recorded_score(row, row["answer"]) for row in results.iter_rows(named=True)]
        mean = sum(s for s in scores if s is not None) / len(scores)
        assert mean == pytest.approx(float(expected[policy]["mean_score"]), abs=1e-9)
    judge_calls = batchroute.read_run(workdir / "out/mtbench.cascade.parquet").calls
    assert judge_calls.filter(pl.col("model") == JUDGE_MODEL)["charge_usd"].sum() == 0
