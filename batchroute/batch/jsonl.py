"""Batch files on disk: requests written as JSONL parts within the provider's limits, and the
output and error files read back, line by line, into one `Reply` per request.

Files are streamed: a request is encoded and written as it comes, and an output file is read
one line at a time, so a 50,000-line batch never sits in memory as one string.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from multidict import CIMultiDict, CIMultiDictProxy

from batchroute.transport import Reply

CHAT_URL = "/v1/chat/completions"
EXPIRED = 408  # the status an expired line is given: retryable, as a request timeout is
_MAX_LINE_BYTES = 4 * 1024 * 1024  # one output line is one response; a bigger one is refused


@dataclass(slots=True)
class Part:
    """One input file: its path and the custom ids it holds, in order."""

    path: Path
    custom_ids: list[str] = field(default_factory=list)
    size: int = 0


def render(custom_id: str, payload: dict[str, Any]) -> bytes:
    """One request as a JSONL line for the chat completions endpoint."""
    line = {"custom_id": custom_id, "method": "POST", "url": CHAT_URL, "body": payload}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def write_parts(
    requests: Iterable[tuple[str, dict[str, Any]]],
    *,
    directory: Path,
    max_requests: int,
    max_bytes: int,
) -> list[Part]:
    """Write `requests` (custom id, body) as JSONL files of at most `max_requests` lines and
    `max_bytes` bytes each, in `directory`; blocking (run it in a worker thread).

    A single line over `max_bytes` still gets a file of its own: the provider, not us, says
    whether it is too large, and the row then fails with the provider's words.
    """
    parts: list[Part] = []
    out: BinaryIO | None = None
    try:
        for custom_id, payload in requests:
            line = render(custom_id, payload)
            part = parts[-1] if parts else None
            full = part is not None and (
                len(part.custom_ids) >= max_requests or part.size + len(line) > max_bytes
            )
            if part is None or full:
                if out is not None:
                    out.close()
                fd, name = tempfile.mkstemp(prefix="batch-", suffix=".jsonl", dir=directory)
                out = os.fdopen(fd, "wb")
                part = Part(Path(name))
                parts.append(part)
            assert out is not None
            out.write(line)
            part.custom_ids.append(custom_id)
            part.size += len(line)
    finally:
        if out is not None:
            out.close()
    return parts


def read_replies(path: Path) -> Iterator[tuple[str, Reply]]:
    """Each line of an output or error file as (custom id, Reply), as an online call's
    answer would have been; a line that is not one is skipped (its row is then resolved as
    missing from the batch)."""
    with path.open("rb") as lines:
        for raw in lines:
            if len(raw) > _MAX_LINE_BYTES or not raw.strip():
                continue
            parsed = _line(raw)
            if parsed is not None:
                yield parsed


def _line(raw: bytes) -> tuple[str, Reply] | None:
    """A server's line is hostile until read here: the shape is checked field by field."""
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
        return None
    custom_id: str = line["custom_id"]
    response, error = line.get("response"), line.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status = response["status_code"]
        body = response.get("body")
        request_id = response.get("request_id")
        headers = {"x-request-id": request_id} if isinstance(request_id, str) else {}
        return custom_id, _reply(status, body, headers)
    if isinstance(error, dict):
        code = str(error.get("code") or "batch_error")
        message = str(error.get("message") or code)
        status = EXPIRED if code == "batch_expired" else 500
        return custom_id, failure(status, message, code=code)
    return None


def failure(status: int, message: str, *, code: str | None = None) -> Reply:
    """A Reply standing for a line the batch did not answer, classified as its status is."""
    body = {"error": {"message": message, "type": "batch_error", "code": code}}
    return _reply(status, body, {})


def _reply(status: int, body: Any, headers: dict[str, str]) -> Reply:
    text = json.dumps(body)
    return Reply(status, CIMultiDictProxy(CIMultiDict(headers)), body, text)
