"""Batch files: split over the provider's limits, hostile output lines, and a 50,000-line batch
that goes up and comes down through a real simulator without being held in memory."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import SIM_MODELS, SIM_SEED, write_sim_models

from batchroute.batch import jsonl
from batchroute.batch.client import BatchClient
from batchroute.sim import running_simulator

pytestmark = pytest.mark.timeout(300)


def _requests(n: int, *, words: int = 20) -> Iterator[tuple[str, dict[str, Any]]]:
    for i in range(n):
        text = f"Ticket {i}: " + " ".join(["parcel"] * words)
        body = {"model": "t/cheap", "messages": [{"role": "user", "content": text}]}
        yield f"row-{i}", body


def test_parts_split_at_the_request_limit(tmp_path: Path) -> None:
    parts = jsonl.write_parts(_requests(10), directory=tmp_path, max_requests=4, max_bytes=10**9)
    assert [len(p.custom_ids) for p in parts] == [4, 4, 2]
    lines = [json.loads(line) for p in parts for line in p.path.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"row-{i}" for i in range(10)]
    assert all(line["url"] == "/v1/chat/completions" for line in lines)
    assert [p.size for p in parts] == [p.path.stat().st_size for p in parts]


def test_parts_split_at_the_byte_limit(tmp_path: Path) -> None:
    one = len(jsonl.render("row-0", next(_requests(1))[1]))
    parts = jsonl.write_parts(
        _requests(10), directory=tmp_path, max_requests=100, max_bytes=3 * one + 2
    )
    assert [len(p.custom_ids) for p in parts] == [3, 3, 3, 1]
    assert all(p.path.stat().st_size <= 3 * one + 2 for p in parts)


def test_output_lines_are_read_as_replies_and_hostile_ones_skipped(tmp_path: Path) -> None:
    body = {"choices": [{"message": {"content": "ok"}}], "usage": {"prompt_tokens": 3}}
    lines = [
        {"custom_id": "a", "response": {"status_code": 200, "request_id": "r1", "body": body}},
        {"custom_id": "b", "response": None, "error": {"code": "batch_expired", "message": "x"}},
        {"custom_id": "c", "response": {"status_code": 500, "body": {"error": {"message": "e"}}}},
        {"custom_id": 7, "response": {"status_code": 200, "body": body}},  # no string id
        {"custom_id": "d", "response": {"status_code": "200", "body": body}},  # a string status
        {"custom_id": "e"},  # neither response nor error
    ]
    path = tmp_path / "out.jsonl"
    text = "\n".join(json.dumps(line) for line in lines) + "\nnot json\n[1]\n"
    path.write_text(text)
    replies = dict(jsonl.read_replies(path))
    assert set(replies) == {"a", "b", "c"}
    assert replies["a"].status == 200 and replies["a"].headers["X-Request-Id"] == "r1"
    assert replies["a"].body == body
    assert replies["b"].status == jsonl.EXPIRED and replies["b"].error["code"] == "batch_expired"
    assert replies["c"].status == 500 and replies["c"].error["message"] == "e"


def test_a_50000_line_batch_is_streamed_up_and_down(tmp_path: Path) -> None:
    n = 50_000
    models = write_sim_models(tmp_path, SIM_MODELS + "\n[batch]\nlatency_s = 0\n")
    with running_simulator(models=models, seed=SIM_SEED) as sim:
        tracemalloc.start()
        try:
            parts = jsonl.write_parts(
                _requests(n), directory=tmp_path, max_requests=n, max_bytes=10**9
            )
            written_peak = tracemalloc.get_traced_memory()[1]
            assert len(parts) == 1 and len(parts[0].custom_ids) == n
            size = parts[0].path.stat().st_size
            del parts[0].custom_ids[:]  # the collector keeps ids per line; not the file
            tracemalloc.reset_peak()
            count, out_size, io_peak = anyio.run(_round_trip, sim.base_url, parts[0].path)
        finally:
            tracemalloc.stop()
    assert count == n
    assert size > 10_000_000 and out_size > size
    # Neither the input nor the output file was ever held whole. Writing keeps the 50,000
    # custom ids (about 66 bytes each, which the store needs), not the lines.
    assert written_peak < size / 3
    assert io_peak < out_size / 4  # a few of aiohttp's buffers and 1 MB chunks
    print(f"50,000 lines: input {size / 1e6:.1f} MB, output {out_size / 1e6:.1f} MB;"
          f" peak traced memory writing {written_peak / 1e6:.2f} MB,"
          f" uploading + downloading + reading {io_peak / 1e6:.2f} MB")  # fmt: skip


async def _round_trip(base_url: str, path: Path) -> tuple[int, int, int]:
    async with BatchClient(base_url=base_url, api_key="k", timeout_s=120) as client:
        file_id = await client.upload(path)
        state = await client.create(file_id, window="24h")
        while not state.done:
            await anyio.sleep(0.1)
            state = await client.retrieve(state.id)
        assert state.status == "completed" and state.output_file_id is not None
        out = path.with_name("out.jsonl")
        await client.download(state.output_file_id, out, max_bytes=10**9)
    count = sum(1 for _, reply in jsonl.read_replies(out) if reply.status == 200)
    return count, out.stat().st_size, tracemalloc.get_traced_memory()[1]
