"""Rows that cannot be answered fail alone, with their reason, and the run goes on."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from aiohttp import web
from helpers import job_text, run_cli, write_job

from batchroute import read_results

CONTEXT_CHARS = 200  # this server's whole "context window"


async def _chat(request: web.Request) -> web.Response:
    body = await request.json()
    prompt = " ".join(str(m["content"]) for m in body["messages"])
    if len(prompt) > CONTEXT_CHARS:
        # What OpenAI answers for a prompt past the model's context window.
        error = {
            "message": f"This model's maximum context length is {CONTEXT_CHARS} characters",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
        return web.json_response({"error": error}, status=400)
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": 1, "total_tokens": 0},
    }
    return web.Response(text=json.dumps(completion), content_type="application/json")


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "small/ctx", "object": "model"}]})


@pytest.fixture
def small_context_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1, in its own thread and event loop."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.add_routes([web.post("/v1/chat/completions", _chat), web.get("/v1/models", _models)])
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_a_prompt_past_the_context_window_fails_its_row_only(
    tmp_path: Path, small_context_server: str
) -> None:
    texts = ["short one", "x" * 500, "short two", "", "y" * 300, "short three"]
    pl.DataFrame({"task_id": [f"t{i}" for i in range(6)], "text": texts}).write_parquet(
        tmp_path / "tasks.parquet"
    )
    body = job_text(base_url=small_context_server, route='strategy = "fixed"\nmodel = "small/ctx"')
    done = run_cli("run", write_job(tmp_path, body))
    assert done.returncode == 0, done.stderr
    results = read_results(tmp_path / "out/results.parquet")
    assert results["status"].to_list() == ["ok", "failed", "ok", "failed", "failed", "ok"]
    too_long = results.filter(pl.col("task_id").is_in(["t1", "t4"]))
    assert too_long["error"].str.starts_with("http_400: This model's maximum context").all()
    assert (too_long["calls"] == 1).all()  # not retried: no attempt could succeed
    assert (
        results.filter(pl.col("task_id") == "t3")["error"][0] == "bad input: column 'text' is empty"
    )
    assert "3 ok, 3 failed" in done.stdout
