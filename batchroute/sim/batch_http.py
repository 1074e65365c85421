"""The simulator's Batch API over HTTP: aiohttp routes around `batches`, added by server.py."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from batchroute.sim.batches import (
    MAX_FILE_BYTES,
    api_error,
    cancel,
    create,
    file_content,
    file_object,
    list_batches,
    retrieve,
    upload,
)
from batchroute.sim.handlers import Response, refuse_auth
from batchroute.sim.state import Sim

__all__ = ["add_routes"]


def add_routes(app: web.Application, key: web.AppKey[Sim]) -> None:
    """Serve the Batch API of `app[key]` under /v1."""

    def sim_of(request: web.Request) -> Sim | web.Response:
        sim = request.app[key]
        refused = refuse_auth(sim, authorization=request.headers.get("Authorization"))
        return sim if refused is None else _web(refused)

    async def post_file(request: web.Request) -> web.Response:
        sim = sim_of(request)
        if isinstance(sim, web.Response):
            return sim
        fields: dict[str, str] = {}
        data, filename = None, "input.jsonl"
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, aiohttp.BodyPartReader):
                continue
            if part.name == "file":
                filename = part.filename or filename
                data = await _read_capped(part)
                if data is None:
                    return _web(api_error(413, f"Files are limited to {MAX_FILE_BYTES} bytes."))
            elif part.name:
                fields[part.name] = (await part.read(decode=True)).decode("utf-8", "replace")
        if data is None:
            return _web(api_error(400, "No file part in the upload.", param="file"))
        return _web(upload(sim, filename=filename, purpose=fields.get("purpose", ""), data=data))

    async def get_file(request: web.Request) -> web.Response:
        sim = sim_of(request)
        if isinstance(sim, web.Response):
            return sim
        return _web(file_object(sim, request.match_info["file_id"]))

    async def get_content(request: web.Request) -> web.Response:
        sim = sim_of(request)
        if isinstance(sim, web.Response):
            return sim
        data = file_content(sim, request.match_info["file_id"])
        if data is None:
            return _web(api_error(404, "No such file.", param="id"))
        return web.Response(body=data, content_type="application/octet-stream")

    async def post_batch(request: web.Request) -> web.Response:
        sim = sim_of(request)
        if isinstance(sim, web.Response):
            return sim
        return _web(create(sim, await request.read()))

    async def get_batch(request: web.Request) -> web.Response:
        sim = sim_of(request)
        if isinstance(sim, web.Response):
            return sim
        return _web(retrieve(sim, request.match_info["batch_id"]))

    async def get_batches(request: web.Request) -> web.Response:
        sim = sim_of(request)
        if isinstance(sim, web.Response):
            return sim
        query = request.query
        return _web(list_batches(sim, limit=query.get("limit"), after=query.get("after")))

    async def post_cancel(request: web.Request) -> web.Response:
        sim = sim_of(request)
        if isinstance(sim, web.Response):
            return sim
        return _web(cancel(sim, request.match_info["batch_id"]))

    app.router.add_post("/v1/files", post_file)
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_get("/v1/files/{file_id}/content", get_content)
    app.router.add_post("/v1/batches", post_batch)
    app.router.add_get("/v1/batches", get_batches)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", post_cancel)


async def _read_capped(part: aiohttp.BodyPartReader) -> bytes | None:
    chunks, size = [], 0
    while chunk := await part.read_chunk(1 << 20):
        size += len(chunk)
        if size > MAX_FILE_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _web(response: Response) -> web.Response:
    return web.Response(
        status=response.status,
        body=response.body,
        headers=response.headers,
        content_type="application/json",
        charset=response.charset,
    )
