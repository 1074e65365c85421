"""The simulator's Batch API: files and batches in OpenAI's shapes, answered after a delay.

A batch is validated when created (a bad line fails it, as OpenAI does), then reads as
`validating`, `in_progress` and, once `batch.latency_s` has passed since its creation,
`completed` (or `expired` when lines expired). Its lines are answered then, all at once, with
the same deterministic answers as online calls, charged at `batch.price_factor` of the price
table; lines may fail (500) or expire on request (`batch.fail_rate`, `batch.expire_rate`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from batchroute.sim import answers, followups
from batchroute.sim.handlers import Response
from batchroute.sim.request import BadRequest, parse_chat
from batchroute.sim.state import ModelBook, Sim

__all__ = ["cancel", "create", "file_content", "file_object", "retrieve", "upload"]

CHAT = "/v1/chat/completions"
MAX_FILE_BYTES = 200 * 1024 * 1024  # OpenAI's limit per batch input file
MAX_LINES = 50_000
_TERMINAL = {"failed", "completed", "expired", "cancelled"}


@dataclass(slots=True)
class SimFile:
    id: str
    filename: str
    purpose: str
    created_at: int
    data: bytes

    def object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass(slots=True)
class SimBatch:
    obj: dict[str, Any]
    started: float  # monotonic seconds at creation
    lines: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # custom_id, body


def _json(status: int, body: Any) -> Response:
    return Response(status, {}, json.dumps(body).encode())


def api_error(status: int, message: str, *, param: str | None = None) -> Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": param, "code": None}
    return _json(status, {"error": error})


def upload(sim: Sim, *, filename: str, purpose: str, data: bytes) -> Response:
    """POST /v1/files (multipart): keep the file, answer its FileObject."""
    if purpose != "batch":
        return api_error(400, "Only purpose=batch is served by the simulator.", param="purpose")
    file = SimFile(f"file-{sim.next_id()}", filename, purpose, int(time.time()), data)
    sim.desk.files[file.id] = file
    return _json(200, file.object())


def file_object(sim: Sim, file_id: str) -> Response:
    """GET /v1/files/{id}."""
    file = sim.desk.files.get(file_id)
    if file is None:
        return api_error(404, f"No such File object: {file_id}", param="id")
    return _json(200, file.object())


def file_content(sim: Sim, file_id: str) -> bytes | None:
    """GET /v1/files/{id}/content: the bytes, or None for an unknown file."""
    file = sim.desk.files.get(file_id)
    return None if file is None else file.data


def create(sim: Sim, raw: bytes) -> Response:
    """POST /v1/batches: validate the request and its input file, start the clock."""
    try:
        body = json.loads(raw)
    except ValueError:
        return api_error(400, "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return api_error(400, "The request body must be a JSON object.")
    file = sim.desk.files.get(str(body.get("input_file_id")))
    if file is None:
        return api_error(404, "No such input file.", param="input_file_id")
    if body.get("endpoint") != CHAT:
        return api_error(400, f"endpoint must be {CHAT}.", param="endpoint")
    if body.get("completion_window") != "24h":
        return api_error(400, "completion_window must be 24h.", param="completion_window")
    metadata = body.get("metadata")
    now = int(time.time())
    obj: dict[str, Any] = {
        "id": f"batch_{sim.next_id()}",
        "object": "batch",
        "endpoint": CHAT,
        "errors": None,
        "input_file_id": file.id,
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + 24 * 3600,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata if isinstance(metadata, dict) else None,
    }
    batch = SimBatch(obj, time.monotonic())
    try:
        batch.lines = _read_lines(file.data)
    except BadRequest as exc:
        line = int(exc.param) if exc.param and exc.param.isdigit() else None
        error = {"code": "invalid_line", "message": str(exc), "param": None, "line": line}
        obj |= {"status": "failed", "failed_at": now, "errors": {"object": "list", "data": [error]}}
    obj["request_counts"]["total"] = len(batch.lines)
    sim.desk.batches[obj["id"]] = batch
    return _json(200, obj)


def _read_lines(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    lines: list[tuple[str, dict[str, Any]]] = []
    ids: set[str] = set()
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            raise BadRequest("Line is not valid JSON.", param=str(number)) from None
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            raise BadRequest("Line has no custom_id.", param=str(number))
        if line.get("method") != "POST" or line.get("url") != CHAT:
            raise BadRequest(f"Line must POST to {CHAT}.", param=str(number))
        if not isinstance(line.get("body"), dict):
            raise BadRequest("Line has no body object.", param=str(number))
        if line["custom_id"] in ids:
            raise BadRequest("custom_id values must be unique.", param=str(number))
        ids.add(line["custom_id"])
        lines.append((line["custom_id"], line["body"]))
    if not lines:
        raise BadRequest("The input file has no requests.", param="1")
    if len(lines) > MAX_LINES:
        raise BadRequest(f"More than {MAX_LINES} requests in one file.")
    return lines


def retrieve(sim: Sim, batch_id: str) -> Response:
    """GET /v1/batches/{id}: the batch as of now (answered once its time has come)."""
    batch = sim.desk.batches.get(batch_id)
    if batch is None:
        return api_error(404, f"No such Batch object: {batch_id}", param="id")
    _advance(sim, batch)
    return _json(200, batch.obj)


def list_batches(sim: Sim, *, limit: str | None, after: str | None) -> Response:
    """GET /v1/batches: newest first, `limit` (1-100, default 20) after the id `after`."""
    try:
        count = 20 if limit is None else int(limit)
    except ValueError:
        count = 0
    if not 1 <= count <= 100:
        return api_error(400, "limit must be an integer from 1 to 100.", param="limit")
    newest_first = list(reversed(sim.desk.batches.values()))
    start = 0
    if after is not None:
        ids = [batch.obj["id"] for batch in newest_first]
        if after not in ids:
            return api_error(400, f"No such Batch object: {after}", param="after")
        start = ids.index(after) + 1
    page = newest_first[start : start + count]
    for batch in page:
        _advance(sim, batch)
    data = [batch.obj for batch in page]
    return _json(
        200,
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": start + count < len(newest_first),
        },
    )


def cancel(sim: Sim, batch_id: str) -> Response:
    """POST /v1/batches/{id}/cancel: `cancelling`, then `cancelled` at the next look."""
    batch = sim.desk.batches.get(batch_id)
    if batch is None:
        return api_error(404, f"No such Batch object: {batch_id}", param="id")
    _advance(sim, batch)
    if batch.obj["status"] in _TERMINAL:
        return api_error(409, f"Cannot cancel a batch that is {batch.obj['status']}.")
    batch.obj |= {"status": "cancelling", "cancelling_at": int(time.time())}
    sim.desk.cancelled += 1
    return _json(200, batch.obj)


def _advance(sim: Sim, batch: SimBatch) -> None:
    obj, now = batch.obj, int(time.time())
    if obj["status"] in _TERMINAL:
        return
    if obj["status"] == "cancelling":
        # Nothing was answered yet (lines are answered at the end), so nothing is charged.
        obj |= {"status": "cancelled", "cancelled_at": now}
        return
    elapsed, latency = time.monotonic() - batch.started, sim.config.batch.latency_s
    if elapsed < latency * 0.1:
        return
    obj["in_progress_at"] = obj["in_progress_at"] or now
    if elapsed < latency:
        obj["status"] = "in_progress"
        # Counts that move, as OpenAI's do, so a client can show progress.
        obj["request_counts"]["completed"] = int(len(batch.lines) * elapsed / latency)
        return
    obj["finalizing_at"] = now
    _finish(sim, batch)


def _finish(sim: Sim, batch: SimBatch) -> None:
    spec = sim.config.batch
    out: list[str] = []
    errors: list[str] = []
    expired = 0
    for custom_id, body in batch.lines:
        line_id = f"batch_req_{sim.next_id()}"
        response, error = _answer(sim, body)
        if error is None and response is not None:
            model, prompt = str(body.get("model")), _prompt(body)
            key = answers.digest_key("batch", model, prompt)
            k = sim.desk.seen.get(key, 0)
            sim.desk.seen[key] = k + 1
            u = answers.unit_draw(sim.seed, "batch", model, prompt, k)
            if u < spec.expire_rate:
                response, error = (
                    None,
                    {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the window expired.",
                    },
                )
            elif u < spec.expire_rate + spec.fail_rate:
                message = "The server had an error (injected)."
                err = {"message": message, "type": "server_error", "param": None, "code": None}
                response = {"status_code": 500, "request_id": line_id, "body": {"error": err}}
            else:
                _charge(sim, body, response)
        line = {"id": line_id, "custom_id": custom_id, "response": response, "error": error}
        ok = response is not None and response["status_code"] == 200
        expired += error is not None and error["code"] == "batch_expired"
        (out if ok else errors).append(json.dumps(line))
        sim.desk.lines += 1
    now, obj = int(time.time()), batch.obj
    for name, rows in (("output_file_id", out), ("error_file_id", errors)):
        if rows:
            data = ("\n".join(rows) + "\n").encode()
            file = SimFile(f"file-{sim.next_id()}", f"{obj['id']}_{name}.jsonl", "batch_output",
                           now, data)  # fmt: skip
            sim.desk.files[file.id] = file
            obj[name] = file.id
    obj["request_counts"] = {"total": len(batch.lines), "completed": len(out),
                             "failed": len(errors)}  # fmt: skip
    if expired:
        obj |= {"status": "expired", "expired_at": now}
    else:
        obj |= {"status": "completed", "completed_at": now}
    batch.lines = []  # answered: the file holds them


def _prompt(body: dict[str, Any]) -> str:
    try:
        return parse_chat(json.dumps(body).encode()).prompt
    except BadRequest:
        return ""


def _answer(sim: Sim, body: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """One line's response as online would give it (without latency, limits or faults)."""
    rid = sim.next_id()
    try:
        req = parse_chat(json.dumps(body).encode())
    except BadRequest as exc:
        err = {"message": str(exc), "type": "invalid_request_error", "param": exc.param}
        return {"status_code": 400, "request_id": rid, "body": {"error": err}}, None
    spec = sim.config.models.get(req.model)
    book = sim.books.setdefault(req.model, ModelBook())
    book.requests += 1
    if spec is None:
        err = {"message": f"The model `{req.model}` does not exist.", "code": "model_not_found"}
        return {"status_code": 404, "request_id": rid, "body": {"error": err}}, None
    d = followups.draw(req, skill=spec.skill, format_fix=spec.format_fix, seed=sim.seed)
    text = answers.render(d, mode=req.mode, schema=req.schema)
    content, completion_tokens, finish = answers.complete(text, max_tokens=req.max_tokens)
    prompt_tokens = answers.count_prompt_tokens(req.texts)
    logprobs = None
    if req.logprobs:
        lp = answers.token_logprobs(content, correct=d.correct, seed=d.logprob_seed)
        logprobs = {"content": lp, "refusal": None}
    completion = {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": logprobs,
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return {"status_code": 200, "request_id": f"req_{rid}", "body": completion}, None


def _charge(sim: Sim, body: dict[str, Any], response: dict[str, Any]) -> None:
    model = str(body.get("model"))
    spec, usage = sim.config.models[model], response["body"]["usage"]
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    prices = spec.usd_per_mtok
    usd = (prompt * prices.input + completion * prices.output) / 1e6 * sim.config.batch.price_factor
    sim.book_charge(sim.books[model], usd=usd, prompt=prompt, completion=completion)
    sim.desk.charged_usd += float(f"{usd:.10f}")
