"""The simulator's Batch API over real HTTP, read with the openai SDK and its own types."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from helpers import SIM_MODELS, SIM_SEED, write_sim_models
from openai.types import Batch, FileObject

from batchroute.sim import SimulatorHandle, running_simulator

BATCH_MODELS = (
    SIM_MODELS
    + """
[batch]
latency_s = 0.4
"""
)


@pytest.fixture(scope="module")
def batch_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    models = write_sim_models(tmp_path_factory.mktemp("batch_sim"), BATCH_MODELS)
    with running_simulator(models=models, seed=SIM_SEED) as handle:
        yield handle


@pytest.fixture
def client(batch_sim: SimulatorHandle) -> Iterator[openai.OpenAI]:
    batch_sim.reset()
    with openai.OpenAI(base_url=batch_sim.base_url, api_key="k", max_retries=0) as c:
        yield c


def _line(custom_id: str, prompt: str, model: str = "t/cheap") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _upload(client: openai.OpenAI, data: bytes) -> FileObject:
    raw = client.files.with_raw_response.create(
        file=("in.jsonl", io.BytesIO(data)), purpose="batch"
    )
    return FileObject.model_validate(raw.http_response.json())


def _batch(client: openai.OpenAI, batch_id: str) -> Batch:
    raw = client.batches.with_raw_response.retrieve(batch_id)
    return Batch.model_validate(raw.http_response.json())


def _wait(client: openai.OpenAI, batch_id: str) -> tuple[Batch, list[str]]:
    """Poll until the batch ends; every object seen is validated, its statuses returned."""
    seen: list[str] = []
    while True:
        batch = _batch(client, batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch, seen
        time.sleep(0.05)


def _content(client: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines()]


def test_a_batch_answers_as_online_at_half_price(
    client: openai.OpenAI, batch_sim: SimulatorHandle
) -> None:
    prompts = [f"Classify ticket {i}: late parcel" for i in range(5)]
    online = [
        client.chat.completions.create(
            model="t/cheap", messages=[{"role": "user", "content": p}], max_tokens=64
        )
        for p in prompts
    ]
    online_usd = batch_sim.ledger()["models"]["t/cheap"]["charged_usd"]

    uploaded = _upload(client, _jsonl([_line(f"row-{i}", p) for i, p in enumerate(prompts)]))
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    again = FileObject.model_validate(
        client.files.with_raw_response.retrieve(uploaded.id).http_response.json()
    )
    assert again.id == uploaded.id
    raw = client.batches.with_raw_response.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    created = Batch.model_validate(raw.http_response.json())
    assert created.status == "validating" and created.request_counts is not None
    assert created.request_counts.total == 5

    done, seen = _wait(client, created.id)
    assert seen[-1] == "completed" and "in_progress" in seen
    assert done.request_counts is not None and done.request_counts.completed == 5
    assert done.output_file_id is not None and done.error_file_id is None
    output = client.files.with_raw_response.retrieve(done.output_file_id).http_response.json()
    assert FileObject.model_validate(output).purpose == "batch_output"
    out = {line["custom_id"]: line for line in _content(client, done.output_file_id)}
    for i, reply in enumerate(online):
        line = out[f"row-{i}"]
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"] == reply.choices[0].message.content
    ledger = batch_sim.ledger()
    batch_usd = ledger["models"]["t/cheap"]["charged_usd"] - online_usd
    assert batch_usd == pytest.approx(online_usd * 0.5, rel=1e-6)
    assert ledger["batches"]["batches"] == 1 and ledger["batches"]["lines"] == 5


def test_a_bad_line_fails_the_batch_and_nothing_is_charged(
    client: openai.OpenAI, batch_sim: SimulatorHandle
) -> None:
    data = _jsonl([_line("a", "x")]) + b"not json\n"
    created = client.batches.create(
        input_file_id=_upload(client, data).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    batch = _batch(client, created.id)
    assert batch.status == "failed" and batch.errors is not None
    assert batch.errors.data is not None and batch.errors.data[0].line == 2
    assert batch_sim.ledger()["total_charged_usd"] == 0


def test_cancel_ends_a_batch_unanswered(client: openai.OpenAI, batch_sim: SimulatorHandle) -> None:
    file = _upload(client, _jsonl([_line("a", "x"), _line("b", "y")]))
    created = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    raw = client.batches.with_raw_response.cancel(created.id)
    assert Batch.model_validate(raw.http_response.json()).status == "cancelling"
    batch, _ = _wait(client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert batch.output_file_id is None
    assert batch_sim.ledger()["total_charged_usd"] == 0
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(created.id)


def test_failed_and_expired_lines_are_in_the_error_file(tmp_path: Path) -> None:
    models = write_sim_models(
        tmp_path, SIM_MODELS + "\n[batch]\nlatency_s = 0\nfail_rate = 0.3\nexpire_rate = 0.3\n"
    )
    with (
        running_simulator(models=models, seed=SIM_SEED) as sim,
        openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0) as client,
    ):
        lines = [_line(f"r{i}", f"prompt {i}") for i in range(40)]
        file = _upload(client, _jsonl(lines))
        created = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch, _ = _wait(client, created.id)
        assert batch.status == "expired" and batch.expired_at is not None
        assert batch.error_file_id is not None and batch.output_file_id is not None
        errors = _content(client, batch.error_file_id)
        codes = {"expired" if e["error"] else e["response"]["status_code"] for e in errors}
        assert codes == {"expired", 500}
        ok = _content(client, batch.output_file_id)
        assert len(ok) + len(errors) == 40
        assert batch.request_counts is not None
        assert batch.request_counts.failed == len(errors)
        assert sim.ledger()["models"]["t/cheap"]["ok"] == len(ok)


def test_the_api_key_is_required_when_set(tmp_path: Path) -> None:
    models = write_sim_models(tmp_path)
    with running_simulator(models=models, seed=SIM_SEED, api_key="secret") as sim:
        with openai.OpenAI(base_url=sim.base_url, api_key="wrong", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError):
                client.batches.retrieve("batch_x")
            with pytest.raises(openai.AuthenticationError):
                client.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch")


def test_the_list_of_batches_pages_newest_first_through_the_sdk(
    client: openai.OpenAI, batch_sim: SimulatorHandle
) -> None:
    # GET /v1/batches is how a rerun finds a batch whose id it never recorded: the SDK's own
    # cursor pagination must read it, newest first, with every batch a valid `Batch`.
    made = []
    for i in range(3):
        uploaded = _upload(client, _jsonl([_line("row-0", f"Classify ticket {i}")]))
        raw = client.batches.with_raw_response.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        made.append(Batch.model_validate(raw.http_response.json()).id)
    listed = [batch.id for batch in client.batches.list(limit=2)]  # pages of 2, followed
    assert listed[:3] == made[::-1]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[:0:-1] and first.has_more
    assert all(isinstance(b, Batch) for b in first.data)
    with pytest.raises(openai.BadRequestError):
        client.batches.list(limit=1000)
