"""The Batch API over HTTP: upload a file, create, poll and cancel a batch, download its files.

Every answer is validated where it enters: a batch object is read into `BatchState` (id,
status, counts, file ids) and anything malformed is an `BatchApiError`, as is any non-2xx
status, which keeps its status so that the Caller classifies it as it would an online one.
Files go up and come down in chunks, never whole in memory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import aiohttp
import anyio

from batchroute.errors import one_line
from batchroute.transport import TransportConnection, TransportTimeout
from batchroute.version import __version__

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_STATUSES = TERMINAL | {"validating", "in_progress", "finalizing", "cancelling"}
_CHUNK = 1 << 20
# Looking for a batch among those created since its file was uploaded: at most this many
# pages of 100 (a provider account with more batches in that time is not looked through).
_MAX_LIST_PAGES = 50
# An id goes into a URL path: only what a provider's ids are made of, never "/" or "..".
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]{0,199}")


class BatchApiError(Exception):
    """The Batch API answered with an error status or a body that is not what it should be."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class BatchState:
    """What a batch object says, validated."""

    id: str
    status: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def read_batch(body: Any) -> BatchState:
    """A batch object as `BatchState`; raises BatchApiError when it is not one."""
    if not isinstance(body, dict) or not _is_id(body.get("id")):
        raise BatchApiError(502, "the batch object has no usable id")
    status = body.get("status")
    if status not in _STATUSES:
        raise BatchApiError(502, f"unknown batch status {one_line(str(status))[:40]!r}")
    counts = body.get("request_counts") or {}
    numbers = [counts.get(k, 0) if isinstance(counts, dict) else 0 for k in _COUNTS]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise BatchApiError(502, "the batch's request_counts are not counts")
    output, error = body.get("output_file_id"), body.get("error_file_id")
    if not all(f is None or _is_id(f) for f in (output, error)):
        raise BatchApiError(502, "the batch's file ids are not usable ids")
    total, completed, failed = numbers
    return BatchState(body["id"], status, total, completed, failed, output, error)


_COUNTS = ("total", "completed", "failed")


def _is_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


class BatchClient:
    """One endpoint's Batch API. Create inside the running loop; use as `async with`."""

    def __init__(self, *, base_url: str, api_key: str, timeout_s: float) -> None:
        self._base = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout_s, connect=timeout_s),
            headers={
                "Authorization": f"Bearer {api_key}",
                "User-Agent": f"batchroute/{__version__}",
            },
            raise_for_status=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            await self._session.close()

    async def upload(self, path: Path) -> str:
        """POST /files with purpose=batch, streaming `path`; the file's id."""
        with path.open("rb") as data:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", data, filename=path.name, content_type="application/jsonl")
            body = await self._json("POST", "/files", data=form)
        if not isinstance(body, dict) or not _is_id(body.get("id")):
            raise BatchApiError(502, "the uploaded file's object has no usable id")
        file_id: str = body["id"]
        return file_id

    async def create(
        self, file_id: str, *, window: str, metadata: dict[str, str] | None = None
    ) -> BatchState:
        """POST /batches for the chat completions of `file_id`."""
        request = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": window,
            "metadata": metadata or {},
        }
        return read_batch(await self._json("POST", "/batches", json=request))

    async def retrieve(self, batch_id: str) -> BatchState:
        return read_batch(await self._json("GET", f"/batches/{batch_id}"))

    async def find(self, input_file_id: str, *, created_since: float) -> BatchState | None:
        """The batch made from `input_file_id`, looked for among the batches created since
        `created_since` (newest first, a page at a time); None when there is none, or when
        the provider lists no batches (a 404)."""
        after: str | None = None
        for _ in range(_MAX_LIST_PAGES):
            query = "?limit=100" + ("" if after is None else f"&after={after}")
            try:
                page = await self._json("GET", "/batches" + query)
            except BatchApiError as exc:
                if exc.status in (404, 405):
                    return None
                raise
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise BatchApiError(502, "the list of batches has no data list")
            for item in data:
                if not isinstance(item, dict):
                    raise BatchApiError(502, "the list of batches holds a non-object")
                if item.get("input_file_id") == input_file_id:
                    return read_batch(item)
            created = [i.get("created_at") for i in data]
            # Newest first: once a page reaches back past the upload, the batch was never made.
            older = [c for c in created if isinstance(c, int | float) and c < created_since]
            if older or not data or page.get("has_more") is not True:
                return None
            last = data[-1].get("id")
            if not _is_id(last):
                raise BatchApiError(502, "the list of batches has an unusable id")
            after = last
        return None

    async def cancel(self, batch_id: str) -> BatchState:
        return read_batch(await self._json("POST", f"/batches/{batch_id}/cancel"))

    async def download(self, file_id: str, dest: Path, *, max_bytes: int) -> None:
        """GET /files/{id}/content into `dest`, in chunks, refusing more than `max_bytes`."""
        try:
            async with self._session.get(f"{self._base}/files/{file_id}/content") as response:
                if response.status >= 300:
                    raise BatchApiError(response.status, await _message(response))
                size = 0
                with dest.open("wb") as out:
                    async for chunk in response.content.iter_chunked(_CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            raise BatchApiError(502, f"file {file_id} is over {max_bytes} bytes")
                        await anyio.to_thread.run_sync(out.write, chunk)
        except TimeoutError:
            raise TransportTimeout("request timed out") from None
        except aiohttp.ClientError as exc:
            raise TransportConnection(one_line(str(exc)) or type(exc).__name__) from None

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self._session.request(method, self._base + path, **kwargs) as response:
                if response.status >= 300:
                    raise BatchApiError(response.status, await _message(response))
                try:
                    return await response.json(content_type=None)
                except ValueError:
                    raise BatchApiError(502, f"{method} {path}: the body is not JSON") from None
        except TimeoutError:
            raise TransportTimeout("request timed out") from None
        except aiohttp.ClientError as exc:
            raise TransportConnection(one_line(str(exc)) or type(exc).__name__) from None


async def _message(response: aiohttp.ClientResponse) -> str:
    text = (await response.content.read(4096)).decode("utf-8", "replace")
    try:
        error = json.loads(text).get("error") or {}
        text = str(error.get("message") or text)
    except (ValueError, AttributeError):
        pass
    return f"HTTP {response.status}: {one_line(text)[:300]}"
