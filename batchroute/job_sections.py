"""The job file's sections but the route: input, output, endpoints, models, params, run, store."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from batchroute.prompts import PromptTemplate

EMBEDDED = "embedded"
DEFAULT_ENDPOINT = "default"  # the name of the job's own [endpoint] among [endpoints]
# The types `input.schema` may give a CSV column (csv_input.py maps them to Arrow and polars).
ColumnType = Literal["str", "int", "float", "bool", "date"]


class Section(BaseModel):
    """A table of the job file: frozen, and a key it does not know is an error naming it."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageOptions(Section):
    """How to reach an object store: where, and the NAMES of the variables holding the keys."""

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:9000 (MinIO, moto); default AWS
    region: str | None = None
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None
    anonymous: bool = False


def _is_url(value: object) -> bool:
    return isinstance(value, str) and "://" in value


def _staged(url: str, *, name: str) -> str:
    """Where the local copy of an object-store URL lives, relative to the job file."""
    digest = hashlib.blake2b(url.encode(), digest_size=6).hexdigest()
    return f".batchroute/remote/{digest}/{name}"


class InputConfig(Section):
    # A file, a directory, a glob (`data/part-*.parquet`), or an object-store URL (`s3://...`,
    # kept in `url`; `path` is then where its files are copied for the local engine).
    path: Path
    url: str | None = None
    storage_options: StorageOptions | None = None
    id: str | None = None
    prompt: str | None = None
    system: str | None = None
    messages: str | None = None  # a column holding a JSON list of chat messages
    batch_rows: Annotated[int, Field(gt=0)] = 2048
    # CSV only: a column's type, over what is inferred from the file (`{ zip = "str" }`).
    schema_: Annotated[dict[str, ColumnType], Field(alias="schema")] = {}

    @field_validator("prompt", "system")
    @classmethod
    def _plain_template(cls, value: str | None) -> str | None:
        if value is not None:
            PromptTemplate.parse(value)  # raises ValueError naming the bad placeholder
        return value

    @model_validator(mode="after")
    def _one_prompt_source(self) -> InputConfig:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' (a template) or 'messages' (a column)")
        if self.messages is not None and self.system is not None:
            raise ValueError("'system' applies to 'prompt' templates; put it in the messages")
        return self

    @model_validator(mode="before")
    @classmethod
    def _url_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and _is_url(data.get("path")):
            url = str(data["path"])
            if not url.startswith("s3://"):
                raise ValueError("path: the only object store supported is s3:// (URL given)")
            data = {**data, "url": url, "path": _staged(url, name="input")}
        return data

    def template(self) -> PromptTemplate | None:
        return PromptTemplate.parse(self.prompt) if self.prompt is not None else None

    def system_template(self) -> PromptTemplate | None:
        return PromptTemplate.parse(self.system) if self.system is not None else None


class OutputConfig(Section):
    path: Path
    calls: Path | None = None  # default: <results stem>.calls.parquet beside the results
    # An s3:// URL given as `path` (`calls`): kept here; `path` is the local file written,
    # then uploaded to the URL when the run ends.
    url: str | None = None
    calls_url: str | None = None
    storage_options: StorageOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _url_paths(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, url_key in (("path", "url"), ("calls", "calls_url")):
            if _is_url(data.get(key)):
                url = str(data[key])
                if not url.startswith("s3://") or url.endswith("/"):
                    raise ValueError(f"{key}: an object-store output is an s3:// URL of a file")
                data[url_key] = url
                data[key] = _staged(url, name=url.rsplit("/", 1)[-1])
        if data.get("url") is not None and data.get("calls") is None:
            url = str(data["url"])
            stem = url.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            data["calls_url"] = f"{url.rsplit('/', 1)[0]}/{stem}.calls.parquet"
        return data

    @property
    def calls_path(self) -> Path:
        if self.calls is not None:
            return self.calls
        return self.path.with_name(self.path.stem + ".calls.parquet")


class EndpointConfig(Section):
    base_url: str = EMBEDDED
    api_key_env: str | None = None
    timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 60.0
    charge_header: str = "X-MDB-Charged-USD"
    balance_header: str = "X-MDB-Balance-USD"
    transport: Literal["aiohttp", "openai"] = "aiohttp"
    # A body larger than this fails its call (response_too_large) instead of filling memory.
    max_response_bytes: Annotated[int, Field(gt=0)] = 4 * 1024 * 1024

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        """An http(s) URL with a host and a valid port, or "embedded"; checked here, because
        the HTTP clients reject such a URL only at the first request, as an internal error."""
        if value == EMBEDDED:
            return value
        # Never echo the URL: it may hold a password.
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError('not an http(s) URL such as "https://host/v1", nor "embedded"')
        if parts.username is not None or parts.password is not None:
            raise ValueError("holds a user or password; put the key in api_key_env instead")
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError("the port must be a number from 1 to 65535")
        return value

    @property
    def embedded(self) -> bool:
        return self.base_url == EMBEDDED


class SimulatorConfig(Section):
    """Settings of the built-in simulator, used when `base_url = "embedded"`."""

    models: Path | None = None
    seed: int = 0
    balance_usd: float | None = None
    # Replay mode: a recorded table whose models answer with their recorded outputs and cost.
    replay: Path | None = None


def _duration(text: str) -> str:
    if re.fullmatch(r"[1-9][0-9]*[smhd]", text) is None:
        raise ValueError(f'{text!r} is not a duration such as "90m", "6h" or "2d"')
    return text


class Prices(Section):
    """A model's price table, in USD per million tokens."""

    input: Annotated[float, Field(ge=0)]
    output: Annotated[float, Field(ge=0)]

    def cost(self, prompt_tokens: float, completion_tokens: float, *, factor: float = 1.0) -> float:
        """USD for these tokens: the one place the price formula lives. `factor` is a batch
        tier's discount (`batch_price_factor`)."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000 * factor


class ModelConfig(Section):
    rpm: Annotated[int, Field(gt=0)] | None = None
    tpm: Annotated[int, Field(gt=0)] | None = None
    itpm: Annotated[int, Field(gt=0)] | None = None  # input tokens per minute (Anthropic's)
    otpm: Annotated[int, Field(gt=0)] | None = None  # output tokens per minute
    # Where limits come from: the job's keys, the answers' rate-limit headers, or both (the
    # lower wins).
    limits: Literal["headers", "job", "both"] = "both"
    max_concurrency: Annotated[int, Field(gt=0)] | None = None
    usd_per_mtok: Prices | None = None
    fallbacks: tuple[str, ...] = ()
    endpoint: str | None = None  # a table of [endpoints]; else the job's [endpoint]
    # Batch API tier (batch/): calls go in a JSONL file, priced at the factor when no charge
    # is reported; lines that expire or fail are retried in a new batch, or online.
    mode: Literal["online", "batch"] = "online"
    batch_price_factor: Annotated[float, Field(ge=0, le=1)] = 0.5
    completion_window: Annotated[str, AfterValidator(_duration)] = "24h"
    batch_fallback: Literal["batch", "online"] = "batch"
    # The provider's limits per input file (OpenAI's); a larger batch is split.
    batch_max_requests: Annotated[int, Field(gt=0)] = 50_000
    batch_max_bytes: Annotated[int, Field(gt=0)] = 200 * 1024 * 1024

    # This model's own prompt templates, over [input]'s (a fallback or tier that needs
    # another wording); placeholders name columns, as in [input].
    prompt: str | None = None
    system: str | None = None

    @field_validator("prompt", "system")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is not None:
            PromptTemplate.parse(value)
        return value


# What a model without a [models] table gets: no limits, prices or fallbacks. One shared
# (frozen) instance, because `Job.model` is asked on every call and validating a new one each
# time was a visible share of the per-call cost.
NO_MODEL_SETTINGS = ModelConfig()


class ResponseFormat(Section):
    type: Literal["text", "json_object", "json_schema"]
    name: str = "answer"
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool = False

    def to_wire(self) -> dict[str, Any]:
        if self.type != "json_schema":
            return {"type": self.type}
        spec: dict[str, Any] = {"name": self.name, "schema": self.schema_ or {}}
        if self.strict:
            spec["strict"] = True
        return {"type": "json_schema", "json_schema": spec}


class Params(Section):
    """Request parameters sent with every call of a plan."""

    max_tokens: Annotated[int, Field(gt=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None  # ask for token logprobs (a `confidence` check can read them)
    # The rest of the chat API's parameters, sent as written. Named here (not any key at all)
    # so that a misspelled key is still an error; anything else goes in `extra_body`.
    max_completion_tokens: Annotated[int, Field(gt=0)] | None = None
    stop: str | list[str] | None = None
    n: Annotated[int, Field(gt=0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, float] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    user: str | None = None
    extra_body: dict[str, Any] | None = None  # merged into the request body as is

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        for key in type(self).model_fields:
            value = getattr(self, key)
            if value is not None and key not in ("response_format", "extra_body"):
                wire[key] = value
        if self.response_format is not None:
            wire["response_format"] = self.response_format.to_wire()
        if self.extra_body is not None:
            wire |= self.extra_body
        return wire


class RunConfig(Section):
    # `ray`: Ray Data reads the input and `workers` actors run the rows (engines/ray_engine.py)
    engine: Literal["local", "ray"] = "local"
    workers: Annotated[int, Field(gt=0, le=10_000)] = 2  # Ray engine: worker actors
    worker_cpus: Annotated[float, Field(gt=0)] = 0.25  # Ray engine: CPUs each worker reserves
    # Ray engine: a cluster to join; none: $RAY_ADDRESS, else start a local one
    ray_address: str | None = None
    concurrency: Annotated[int, Field(gt=0, le=100_000)] = 64
    max_attempts: Annotated[int, Field(gt=0, le=50)] = 4
    backoff_base_s: Annotated[float, Field(ge=0)] = 0.5
    backoff_max_s: Annotated[float, Field(gt=0)] = 30.0
    default_max_tokens: Annotated[int, Field(gt=0)] = 512  # for token budgets when unset
    budget_usd: Annotated[float, Field(gt=0)] | None = None
    min_balance_usd: Annotated[float, Field(ge=0)] | None = None
    grace_s: Annotated[float, Field(ge=0)] = 10.0  # for calls in flight after an interrupt
    max_retry_after_s: Annotated[float, Field(ge=0)] = 120.0  # the longest Retry-After obeyed
    # Turns the same model gets to fix an answer that failed a format check, before escalating.
    repair_attempts: Annotated[int, Field(ge=0, le=5)] = 0
    # A batch tier whose completion window ends after this runs online ("6h", "90m", "1d").
    deadline: Annotated[str, AfterValidator(_duration)] | None = None
    # Identical deterministic requests of a run share one call ("auto"), or each is sent.
    dedupe: Literal["auto", "off"] = "auto"


class StoreConfig(Section):
    path: Path | None = None  # default: .batchroute/store.sqlite beside the job file


def duration_s(text: str) -> float:
    """Seconds of a duration such as "24h", "90m", "30s" or "1d" (as `_duration` checked)."""
    return float(text[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]
