"""The provider's model list: which of the job's models the endpoint serves, and what else it has.

`batchroute run` checks the job's models against `GET /v1/models` before the first row, so a
misspelled model stops the run with the closest served names instead of failing every row.
`batchroute models JOB` prints the whole comparison.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any

import anyio

from batchroute.endpoints import api_keys, endpoint_urls
from batchroute.errors import ConfigError, one_line
from batchroute.job import DEFAULT_ENDPOINT, Job, models_named, route_targets
from batchroute.transport import (
    Transport,
    TransportConnection,
    TransportError,
    TransportTimeout,
    open_transport,
)

log = logging.getLogger("batchroute")


_MAX_PAGES = 100  # a server that always says "more" must not keep a run from starting


@dataclass(frozen=True, slots=True)
class Listing:
    """What `GET /models` gave: the served ids (every page), or why there are none."""

    served: list[str] | None  # None: no usable list (see `status`)
    status: int  # the HTTP status of the last page asked for


async def fetch_models(transport: Transport) -> Listing:
    """Every model id the endpoint lists, page after page.

    Most servers answer with one page. Those that page (OpenAI's list shape, Anthropic's)
    say `has_more` and are asked again `after` the last id (`last_id` when they give it).
    Raises TransportError when no HTTP answer comes."""
    served: list[str] = []
    after: str | None = None
    for _ in range(_MAX_PAGES):
        reply = await transport.models(after=after)
        if not 200 <= reply.status < 300:
            return Listing(None, reply.status)
        ids = _model_ids(reply.body)
        if ids is None:
            return Listing(None, reply.status)
        served.extend(i for i in dict.fromkeys(ids) if i not in served)
        cursor = _next_cursor(reply.body, ids)
        if cursor is None or cursor == after:
            break
        after = cursor
    return Listing(served, 200)


def _next_cursor(body: Any, ids: list[str]) -> str | None:
    if not isinstance(body, dict) or body.get("has_more") is not True or not ids:
        return None
    last = body.get("last_id")
    return last if isinstance(last, str) and last else ids[-1]


def closest(name: str, *, served: list[str], n: int = 3) -> list[str]:
    """The served names most like `name`, best first (difflib's ratio, at least 0.6)."""
    return difflib.get_close_matches(name, served, n=n, cutoff=0.6)


def _where(job: Job, endpoint: str, base_url: str) -> str:
    where = "the embedded simulator" if job.all_endpoints()[endpoint].embedded else base_url
    return where if endpoint == DEFAULT_ENDPOINT else f"{where} (endpoints.{endpoint})"


def _models_on(job: Job, endpoint: str) -> dict[str, list[str]]:
    """The models the job names that `endpoint` serves, with what each is used as."""
    return {m: roles for m, roles in models_named(job).items() if job.endpoint_name(m) == endpoint}


def missing_message(
    job: Job, *, model: str, served: list[str], endpoint: str, base_url: str
) -> str:
    """One line: the job file, the model it names that the endpoint lacks, the nearest names."""
    near = closest(model, served=served)
    hint = f"; closest served: {', '.join(near)}" if near else "; see `batchroute models JOB`"
    if job.plans and model in route_targets(job):
        hint = f" (nor is it a [plans] table: {', '.join(job.plans)}){hint}"
    where = _where(job, endpoint, base_url)
    return f"{job.source}: model {model!r} is not served by {where}{hint}"


async def check_served(
    job: Job, *, endpoint: str, transport: Transport, base_url: str
) -> str | None:
    """Raise ConfigError for the first model the job names that the endpoint does not serve.

    An endpoint without the route is tolerated with a warning, as is one that fails to list:
    the run's own calls then say what is wrong, row by row. Returns a hint for that case
    when one is known (the URL lacks its `/v1`). The list is fetched through the run's own
    transport, so a run over plain HTTP never loads the openai SDK (most of its start-up
    time); the statuses mean what they meant to the SDK's `models.list()`.
    """
    where = _where(job, endpoint, base_url)
    try:
        listing = await fetch_models(transport)
    except TransportTimeout:
        log.warning("%s did not list its models in time; names not checked", where)
        return None
    except TransportConnection as exc:
        # Nothing answers there: every row would fail after its retries, so say it once now.
        raise ConfigError(
            f"{job.source}: {_key(endpoint)}: cannot reach {where}: {one_line(exc)}"
        ) from None
    if listing.status == 404:
        hint = await _v1_hint(job, endpoint=endpoint, base_url=base_url)
        log.warning(
            "%s has no GET /models route; the job's model names were not checked%s",
            where,
            f"; {hint}" if hint else "",
        )
        return hint
    if listing.status in (401, 403):
        return None  # the first call stops the run with the credentials error
    if listing.served is None:
        log.warning(
            "could not list the models of %s (%s); the job's model names were not checked",
            where,
            "not a model list" if listing.status == 200 else f"it answered {listing.status}",
        )
        return None
    for model in _models_on(job, endpoint):
        if model not in listing.served:
            raise ConfigError(
                missing_message(
                    job, model=model, served=listing.served, endpoint=endpoint, base_url=base_url
                )
            )
    return None


def _key(endpoint: str) -> str:
    """The job file's key of an endpoint's URL."""
    return "endpoint.base_url" if endpoint == DEFAULT_ENDPOINT else f"endpoints.{endpoint}.base_url"


async def _v1_hint(job: Job, *, endpoint: str, base_url: str) -> str | None:
    """'did you mean .../v1?' when the URL lacks the `/v1` under which the server answers."""
    base = base_url.rstrip("/")
    if base.endswith("/v1") or job.all_endpoints()[endpoint].embedded:
        return None
    config = job.all_endpoints()[endpoint]
    try:
        async with open_transport(
            "aiohttp",
            base_url=base + "/v1",
            api_key=api_keys(job)[endpoint],
            timeout_s=config.timeout_s,
            connections=1,
            max_response_bytes=config.max_response_bytes,
        ) as probe:
            reply = await probe.models()
    except TransportError:
        return None
    if reply.status == 404:
        return None
    return f'did you mean {_key(endpoint)} = "{base}/v1"?'


def _model_ids(body: Any) -> list[str] | None:
    """The ids of an OpenAI-style `{"object": "list", "data": [{"id": ...}, ...]}`."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return None
    ids = [item.get("id") for item in data if isinstance(item, dict)]
    return [i for i in ids if isinstance(i, str)]


@dataclass(frozen=True, slots=True)
class ModelsReport:
    """The comparison `batchroute models` prints."""

    where: str
    named: dict[str, list[str]]  # model -> what the job uses it as
    served: list[str] | None  # None: the endpoint has no model list

    @property
    def missing(self) -> list[str]:
        return [] if self.served is None else [m for m in self.named if m not in self.served]

    def lines(self) -> list[str]:
        width = max([len("model"), *(len(m) for m in self.named)])
        out = [f"models of the job on {self.where}:", f"{'model':<{width}}  served  used as"]
        for model, roles in self.named.items():
            if self.served is None:
                served = "?"
            else:
                served = "yes" if model in self.served else "no"
            note = ""
            if (
                served == "no"
                and self.served is not None
                and (near := closest(model, served=self.served))
            ):
                note = f"  (closest served: {', '.join(near)})"
            out.append(f"{model:<{width}}  {served:<6}  {', '.join(roles)}{note}")
        if self.served is None:
            out.append("the endpoint has no GET /models route: served is unknown")
            return out
        unused = [m for m in self.served if m not in self.named]
        out.append(f"served, not used by the job: {len(unused)}")
        out.extend(f"  {m}" for m in unused)
        return out


async def list_models(job: Job, *, base_urls: dict[str, str]) -> list[ModelsReport]:
    """Ask each endpoint the job uses for its models (every page, through the endpoint's own
    transport, as `batchroute run` does) and compare them with the job's."""
    keys, endpoints = api_keys(job), job.all_endpoints()
    reports = []
    for endpoint, base_url in base_urls.items():
        where = _where(job, endpoint, base_url)
        config = endpoints[endpoint]
        try:
            async with open_transport(
                config.transport,
                base_url=base_url,
                api_key=keys[endpoint],
                timeout_s=config.timeout_s,
                connections=1,
                max_response_bytes=config.max_response_bytes,
            ) as transport:
                listing = await fetch_models(transport)
        except TransportError as exc:
            raise ConfigError(
                f"{job.source}: {_key(endpoint)}: cannot list the models of {where}:"
                f" {one_line(exc)}"
            ) from None
        if listing.served is None and listing.status != 404:
            answer = "not a model list" if listing.status == 200 else f"HTTP {listing.status}"
            raise ConfigError(
                f"{job.source}: {_key(endpoint)}: cannot list the models of {where}: {answer}"
            )
        named = _models_on(job, endpoint)
        reports.append(ModelsReport(where=where, named=named, served=listing.served))
    return reports


def models_report(job: Job) -> list[ModelsReport]:
    """`list_models` from synchronous code, starting the simulator when the job embeds it."""
    with endpoint_urls(job) as base_urls:
        return anyio.run(lambda: list_models(job, base_urls=base_urls), backend="asyncio")
