"""The HTTP layer under the Caller: send a request, get back status, headers and JSON body.

    TransportError           the request got no usable HTTP answer at all
    ├── TransportTimeout     no answer within `endpoint.timeout_s`
    ├── TransportConnection  the connection failed: refused, reset, closed mid-answer
    └── ResponseTooLarge     the body is over `endpoint.max_response_bytes` (not read further)

An HTTP answer, whatever its status, is a `Reply`; deciding what a status means is the
Caller's job (`caller.classify`), done once for both transports:

- `aiohttp` (the default) posts the JSON itself. Per call it costs a fraction of the SDK's
  request path, which re-validates and transforms every argument and is the ceiling of
  SDK-based tools at high request rates (bench/RESULTS.md).
- `openai` goes through the openai SDK (`AsyncOpenAI`, `max_retries=0`, raw responses), the
  reference for request and response shapes. The same tests run over both.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self
from urllib.parse import urlencode

import aiohttp
import anyio

from batchroute.errors import one_line
from batchroute.version import __version__

if TYPE_CHECKING:
    import httpx2
    import openai

TransportName = Literal["aiohttp", "openai"]

DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
_CHUNK_BYTES = 64 * 1024


class TransportError(Exception):
    """No HTTP answer."""


class TransportTimeout(TransportError):
    """No answer in time."""


class TransportConnection(TransportError):
    """The connection failed."""


class ResponseTooLarge(TransportError):
    """The body is larger than the endpoint's `max_response_bytes`; it was not kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response body over endpoint.max_response_bytes ({limit} bytes)")


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer. `headers` looks up names case-insensitively."""

    status: int
    headers: Mapping[str, str]
    body: Any  # the parsed JSON, or None when the body is not JSON
    text: str  # the raw body, for error messages

    @property
    def error(self) -> Mapping[str, Any]:
        """The OpenAI-style `{"error": {...}}` object of an error answer, else empty."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            error: Mapping[str, Any] = self.body["error"]
            return error
        return {}


class Transport(Protocol):
    def chat(self, payload: dict[str, Any]) -> Awaitable[Reply]:
        """POST /chat/completions; raises TransportError when no HTTP answer comes."""
        ...

    async def models(self, *, after: str | None = None) -> Reply:
        """GET /models, the endpoint's model list (the page `after` an id, for servers that
        page it); raises TransportError like `chat`."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


class _Closing:
    """`async with transport:` closes its connections on the way out, even when cancelled."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Shielded: a cancelled run must still close its sockets, or aiohttp warns of an
        # "Unclosed connector" after the user's one-line error.
        with anyio.CancelScope(shield=True):
            await self.aclose()


def open_transport(
    name: TransportName,
    *,
    base_url: str,
    api_key: str,
    timeout_s: float,
    connections: int,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> Transport:
    """Create the transport inside the running event loop; use it as `async with`."""
    if name == "openai":
        return SdkTransport(
            base_url=base_url,
            api_key=api_key,
            timeout_s=timeout_s,
            max_response_bytes=max_response_bytes,
        )
    return AiohttpTransport(
        base_url=base_url,
        api_key=api_key,
        timeout_s=timeout_s,
        connections=connections,
        max_response_bytes=max_response_bytes,
    )


class AiohttpTransport(_Closing):
    """Plain HTTP/1.1 with keep-alive connections, one pool for the run."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timeout_s: float,
        connections: int,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._max_bytes = max_response_bytes
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            headers={
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"batchroute/{__version__}",
            },
            raise_for_status=False,  # every status is an answer; the Caller decides
        )

    def chat(self, payload: dict[str, Any]) -> Awaitable[Reply]:
        # Not a coroutine of its own: the request's is awaited directly, one layer fewer to
        # resume on each of its waits.
        data = json.dumps(payload, ensure_ascii=False).encode()
        return self._request("POST", "/chat/completions", data)

    async def models(self, *, after: str | None = None) -> Reply:
        query = "" if after is None else "?" + urlencode({"after": after})
        return await self._request("GET", "/models" + query, None)

    async def _request(self, method: str, path: str, data: bytes | None) -> Reply:
        try:
            async with self._session.request(method, self._base + path, data=data) as response:
                raw = await self._read(response)
                headers = response.headers
                status = response.status
        except TimeoutError:  # aiohttp's timeouts subclass it
            raise TransportTimeout("request timed out") from None
        except aiohttp.ClientError as exc:  # refused, reset, cut short, or not HTTP at all
            # str(): aiohttp's connection errors are OSErrors whose strerror leaves out the host
            raise TransportConnection(one_line(str(exc)) or type(exc).__name__) from None
        return _reply(status, headers, raw.decode("utf-8", "replace"))

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, read in chunks and never past the cap: a server announcing or sending
        more is cut off (the connection is then dropped, not reused)."""
        announced = response.content_length
        if announced is not None and announced > self._max_bytes:
            raise ResponseTooLarge(self._max_bytes)
        if announced is not None and response.headers.get("Content-Encoding") in (None, "identity"):
            # aiohttp reads an announced length and not a byte past it: one read, no loop. A
            # compressed body is counted after decompressing (a small gzip can hold gigabytes).
            return await response.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
            size += len(chunk)
            if size > self._max_bytes:
                raise ResponseTooLarge(self._max_bytes)
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        await self._session.close()


class SdkTransport(_Closing):
    """The openai SDK's client, used as a transport: its answers and errors become Replies."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timeout_s: float,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        import openai  # only this transport needs the SDK; it is slow to import

        # The SDK reads a whole body before we see it: the cap is checked after, so it
        # bounds what is parsed and kept, not what is read.
        self._max_bytes = max_response_bytes
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_s
        )
        self._api_error = openai.APIError

    async def chat(self, payload: dict[str, Any]) -> Reply:
        try:
            raw = await self._client.chat.completions.with_raw_response.create(**payload)
        except self._api_error as exc:
            return reply_from_sdk_error(exc, max_response_bytes=self._max_bytes)
        return _sdk_reply(raw.http_response, self._max_bytes)

    async def models(self, *, after: str | None = None) -> Reply:
        query = None if after is None else {"after": after}
        try:
            raw = await self._client.models.with_raw_response.list(extra_query=query)
        except self._api_error as exc:
            return reply_from_sdk_error(exc, max_response_bytes=self._max_bytes)
        return _sdk_reply(raw.http_response, self._max_bytes)

    async def aclose(self) -> None:
        await self._client.close()


def reply_from_sdk_error(
    exc: openai.APIError, *, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
) -> Reply:
    """The SDK raises for every non-2xx status; give back the answer it carried."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        raise TransportTimeout("request timed out") from None
    if isinstance(exc, openai.APIConnectionError):
        raise TransportConnection(" ".join(exc.message.split())) from None
    # A status error, or a 2xx the SDK could not read as the model it expected.
    response = getattr(exc, "response", None)
    if response is None:
        raise TransportConnection(" ".join(exc.message.split())) from None
    return _sdk_reply(response, max_response_bytes)


def _sdk_reply(response: httpx2.Response, max_bytes: int) -> Reply:
    if len(response.content) > max_bytes:
        raise ResponseTooLarge(max_bytes)
    return _reply(response.status_code, response.headers, response.text)


def _reply(status: int, headers: Mapping[str, str], text: str) -> Reply:
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    return Reply(status, headers, body, text)
