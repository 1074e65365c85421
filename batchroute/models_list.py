"""The provider's model list: which of the job's models the endpoint serves, and what else it has.

`batchroute run` checks the job's models against `GET /v1/models` before the first row, so a
misspelled model stops the run with the closest served names instead of failing every row.
`batchroute models JOB` prints the whole comparison.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from batchroute.endpoints import api_keys, endpoint_urls
from batchroute.errors import ConfigError
from batchroute.job import DEFAULT_ENDPOINT, Job, models_named, route_targets
from batchroute.transport import Transport, TransportConnection, TransportTimeout

if TYPE_CHECKING:
    import openai

log = logging.getLogger("batchroute")


async def served_models(client: openai.AsyncOpenAI) -> list[str] | None:
    """The model ids the endpoint lists (every page); None when it has no such route (404)."""
    import openai

    try:
        return [model.id async for model in client.models.list()]
    except openai.NotFoundError:
        return None


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


def _client(job: Job, *, endpoint: str, base_url: str, api_key: str) -> openai.AsyncOpenAI:
    # Its own short-lived client: one GET, for `batchroute models`. Imported here because the
    # SDK is slow to import and `batchroute run` lists the models through its own transport.
    import openai

    timeout = job.all_endpoints()[endpoint].timeout_s
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)


async def check_served(job: Job, *, endpoint: str, transport: Transport, base_url: str) -> None:
    """Raise ConfigError for the first model the job names that the endpoint does not serve.

    An endpoint without the route is tolerated with a warning, as is one that fails to list:
    the run's own calls then say what is wrong, row by row. The list is fetched through the
    run's own transport, so a run over plain HTTP never loads the openai SDK (most of its
    start-up time); the statuses mean what they meant to the SDK's `models.list()`.
    """
    where = _where(job, endpoint, base_url)
    try:
        reply = await transport.models()
    except TransportTimeout:
        log.warning("%s did not list its models in time; names not checked", where)
        return
    except TransportConnection as exc:
        # Nothing answers there: every row would fail after its retries, so say it once now.
        raise ConfigError(f"{job.source}: endpoint.base_url: cannot reach {where}: {exc}") from None
    if reply.status == 404:
        log.warning("%s has no GET /models route; the job's model names were not checked", where)
        return
    if reply.status in (401, 403):
        return  # the first call stops the run with the credentials error
    if not 200 <= reply.status < 300:
        log.warning(
            "%s answered %s to GET /models; the job's model names were not checked",
            where,
            reply.status,
        )
        return
    served = _model_ids(reply.body)
    if served is None:
        log.warning(
            "could not list the models of %s (not a model list); the job's model names"
            " were not checked",
            where,
        )
        return
    for model in _models_on(job, endpoint):
        if model not in served:
            raise ConfigError(
                missing_message(
                    job, model=model, served=served, endpoint=endpoint, base_url=base_url
                )
            )


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
    """Ask each endpoint the job uses for its models and compare them with the job's."""
    import openai

    keys = api_keys(job)
    reports = []
    for endpoint, base_url in base_urls.items():
        where = _where(job, endpoint, base_url)
        client = _client(job, endpoint=endpoint, base_url=base_url, api_key=keys[endpoint])
        try:
            async with client:
                served = await served_models(client)
        except openai.APIError as exc:
            raise ConfigError(
                f"{job.source}: cannot list the models of {where}: {type(exc).__name__}"
            ) from None
        reports.append(ModelsReport(where=where, named=_models_on(job, endpoint), served=served))
    return reports


def models_report(job: Job) -> list[ModelsReport]:
    """`list_models` from synchronous code, starting the simulator when the job embeds it."""
    with endpoint_urls(job) as base_urls:
        return anyio.run(lambda: list_models(job, base_urls=base_urls), backend="asyncio")
