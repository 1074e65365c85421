"""The job file: TOML parsed into frozen, validated configuration."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from batchroute.check_config import CheckConfig as CheckConfig  # re-exported
from batchroute.check_config import Checks, as_check_list
from batchroute.errors import ConfigError
from batchroute.prompts import PromptTemplate

EMBEDDED = "embedded"
DEFAULT_ENDPOINT = "default"  # the name of the job's own [endpoint] among [endpoints]
# The types `input.schema` may give a CSV column (csv_input.py maps them to Arrow and polars).
ColumnType = Literal["str", "int", "float", "bool", "date"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageOptions(_Section):
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


class InputConfig(_Section):
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


class OutputConfig(_Section):
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


class EndpointConfig(_Section):
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


class SimulatorConfig(_Section):
    """Settings of the built-in simulator, used when `base_url = "embedded"`."""

    models: Path | None = None
    seed: int = 0
    balance_usd: float | None = None
    # Replay mode: a recorded table whose models answer with their recorded outputs and cost.
    replay: Path | None = None


class Prices(_Section):
    """A model's price table, in USD per million tokens."""

    input: Annotated[float, Field(ge=0)]
    output: Annotated[float, Field(ge=0)]

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """USD for these tokens: the one place the price formula lives."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


class ModelConfig(_Section):
    rpm: Annotated[int, Field(gt=0)] | None = None
    tpm: Annotated[int, Field(gt=0)] | None = None
    max_concurrency: Annotated[int, Field(gt=0)] | None = None
    usd_per_mtok: Prices | None = None
    fallbacks: tuple[str, ...] = ()
    endpoint: str | None = None  # a table of [endpoints]; else the job's [endpoint]


# What a model without a [models] table gets: no limits, prices or fallbacks. One shared
# (frozen) instance, because `Job.model` is asked on every call and validating a new one each
# time was a visible share of the per-call cost.
NO_MODEL_SETTINGS = ModelConfig()


class ResponseFormat(_Section):
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


class Params(_Section):
    """Request parameters sent with every call of a plan."""

    max_tokens: Annotated[int, Field(gt=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None  # ask for token logprobs (a `confidence` check can read them)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        for key in ("max_tokens", "temperature", "top_p", "seed", "logprobs"):
            value = getattr(self, key)
            if value is not None:
                wire[key] = value
        if self.response_format is not None:
            wire["response_format"] = self.response_format.to_wire()
        return wire


# --- routing strategies: rules, classifier, named plans, shadow sampling -------------------


class RuleConfig(_Section):
    """One `[[route.rules]]` entry: a SQL predicate over the row's columns and its target."""

    when: str
    target: str  # a `[plans]` name or a model name
    name: str | None = None  # default: "rule N"


class ClassifierConfig(_Section):
    """`[route.classifier]`: a cheap model's normalised label picks the target."""

    model: str
    prompt: str
    system: str | None = None
    labels: Annotated[dict[str, str], Field(min_length=1)]  # label -> target
    max_tokens: Annotated[int, Field(gt=0)] = 16
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0

    @model_validator(mode="after")
    def _templates_parse(self) -> ClassifierConfig:
        PromptTemplate.parse(self.prompt)
        if self.system is not None:
            PromptTemplate.parse(self.system)
        return self

    def template(self) -> PromptTemplate:
        return PromptTemplate.parse(self.prompt)

    def system_template(self) -> PromptTemplate | None:
        return PromptTemplate.parse(self.system) if self.system is not None else None


class PlanConfig(_Section):
    """`[plans.NAME]`: tiers with their own checks and parameters, for rules and labels to name."""

    tiers: Annotated[tuple[str, ...], Field(min_length=1)]
    check: Checks | None = None  # none: the job's [check]; an empty list: no check
    params: Params | None = None  # merged over the job's [params], key by key

    _checks = field_validator("check", mode="before")(as_check_list)


# --- end of routing strategies ---------------------------------------------------------------


class RouteConfig(_Section):
    strategy: Literal["fixed", "cascade", "rules", "classifier"]
    model: str | None = None
    tiers: tuple[str, ...] = ()
    rules: tuple[RuleConfig, ...] = ()
    classifier: ClassifierConfig | None = None
    default: str | None = None  # rules and classifier: the target when nothing else applies
    shadow_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    shadow_model: str | None = None  # default: the cheapest tier by usd_per_mtok
    seed: int = 0  # of shadow sampling

    @model_validator(mode="after")
    def _shape_fits_strategy(self) -> RouteConfig:
        if self.strategy == "fixed" and (self.model is None or self.tiers):
            raise ValueError("strategy 'fixed' takes 'model' (and no 'tiers')")
        if self.strategy == "cascade" and (len(self.tiers) < 2 or self.model is not None):
            raise ValueError("strategy 'cascade' takes 'tiers', two or more models")
        return self

    @model_validator(mode="after")
    def _strategy_keys_fit(self) -> RouteConfig:
        routed = self.strategy in ("rules", "classifier")
        if routed and (self.model is not None or self.tiers):
            raise ValueError(f"strategy {self.strategy!r} takes targets, not 'model' or 'tiers'")
        if routed and self.default is None:
            raise ValueError(f"strategy {self.strategy!r} needs 'default', the target of the rest")
        if (self.strategy == "rules") != bool(self.rules):
            raise ValueError("'rules' go with strategy 'rules', which needs one or more")
        if (self.strategy == "classifier") != (self.classifier is not None):
            raise ValueError("[route.classifier] goes with strategy 'classifier', which needs it")
        if not routed and self.default is not None:
            raise ValueError(f"'default' does not apply to strategy {self.strategy!r}")
        names = [rule.name for rule in self.rules if rule.name is not None]
        if len(names) != len(set(names)):
            raise ValueError("two rules have the same name")
        return self

    def rule_name(self, index: int) -> str:
        """The name of rule `index` (0-based): its own, else "rule N" counting from 1."""
        return self.rules[index].name or f"rule {index + 1}"


class RunConfig(_Section):
    # `ray`: Ray Data reads the input and `workers` actors run the rows (engines/ray_engine.py)
    engine: Literal["local", "ray"] = "local"
    workers: Annotated[int, Field(gt=0, le=10_000)] = 2  # Ray engine: worker actors
    worker_cpus: Annotated[float, Field(gt=0)] = 0.25  # Ray engine: CPUs each worker reserves
    ray_address: str | None = None  # Ray engine: a cluster to join; none: start a local one
    concurrency: Annotated[int, Field(gt=0, le=100_000)] = 64
    max_attempts: Annotated[int, Field(gt=0, le=50)] = 4
    backoff_base_s: Annotated[float, Field(ge=0)] = 0.5
    backoff_max_s: Annotated[float, Field(gt=0)] = 30.0
    default_max_tokens: Annotated[int, Field(gt=0)] = 512  # for token budgets when unset
    budget_usd: Annotated[float, Field(gt=0)] | None = None
    min_balance_usd: Annotated[float, Field(ge=0)] | None = None
    grace_s: Annotated[float, Field(ge=0)] = 10.0  # for calls in flight after an interrupt
    max_retry_after_s: Annotated[float, Field(ge=0)] = 120.0  # the longest Retry-After obeyed


class StoreConfig(_Section):
    path: Path | None = None  # default: .batchroute/store.sqlite beside the job file


class Job(_Section):
    input: InputConfig
    output: OutputConfig
    endpoint: EndpointConfig = EndpointConfig()
    endpoints: dict[str, EndpointConfig] = {}  # more endpoints, that models name
    simulator: SimulatorConfig = SimulatorConfig()
    models: dict[str, ModelConfig] = {}
    route: RouteConfig
    params: Params = Params()
    check: Checks | None = None  # `[check]` or `[[check]]`: all must pass
    plans: dict[str, PlanConfig] = {}
    run: RunConfig = RunConfig()
    store: StoreConfig = StoreConfig()
    source: Annotated[Path | None, Field(exclude=True)] = None

    _checks = field_validator("check", mode="before")(as_check_list)

    @model_validator(mode="after")
    def _endpoints_are_known(self) -> Job:
        if DEFAULT_ENDPOINT in self.endpoints:
            raise ValueError(
                f"endpoints.{DEFAULT_ENDPOINT}: the name of the job's own [endpoint]; rename it"
            )
        for name, model in self.models.items():
            if model.endpoint is not None and model.endpoint not in self.endpoints:
                raise ValueError(f"models.{name}.endpoint: no [endpoints.{model.endpoint}] table")
        return self

    @model_validator(mode="after")
    def _targets_are_known(self) -> Job:
        clash = sorted(set(self.plans) & set(self.models))
        if clash:
            raise ValueError(f"plans.{clash[0]}: a plan may not have the name of a model")
        if self.models:
            missing = sorted(set(models_named(self)) - set(self.models))
            if missing:
                raise ValueError(f"model {missing[0]!r} is used but has no [models] table")
        return self

    def model(self, name: str) -> ModelConfig:
        return self.models.get(name, NO_MODEL_SETTINGS)

    def endpoint_name(self, model: str) -> str:
        """Which endpoint serves `model`: its own `endpoint`, else the job's."""
        return self.model(model).endpoint or DEFAULT_ENDPOINT

    def all_endpoints(self) -> dict[str, EndpointConfig]:
        """The job's `[endpoint]` under the name "default", then every `[endpoints.NAME]`."""
        return {DEFAULT_ENDPOINT: self.endpoint, **self.endpoints}

    def settings(self) -> dict[str, Any]:
        """The job as plain data for output metadata: names of secrets, never their values."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def key(self) -> str:
        """Identifies the job across runs, from whatever directory it is run: the same key, the
        same run to resume, the same outputs to replace without --force.

        Only what decides the results is keyed (the `_NOT_KEYED_*` lists name the rest): how
        fast, how hard or how long a run may go must not turn a resume into a new run, or a
        lower concurrency after a wall of 429s would start a new run that reports the killed
        run's own answers as "cached" and refuses its results for --retry-failed."""
        settings = self.settings()
        for section, name in _PATH_SETTINGS:
            value = settings.get(section, {}).get(name)
            if value is not None:
                settings[section][name] = str(Path(value).resolve())
        for section in _NOT_KEYED_SECTIONS:
            settings.pop(section, None)
        for endpoint in (settings.get("endpoint", {}), *settings.get("endpoints", {}).values()):
            for name in _NOT_KEYED_ENDPOINT:
                endpoint.pop(name, None)
        for model in settings.get("models", {}).values():
            for name in _NOT_KEYED_MODEL:
                model.pop(name, None)
        settings.get("input", {}).pop("batch_rows", None)  # how the input is read, not what
        settings.get("simulator", {}).pop("balance_usd", None)  # a fresh simulator each run
        canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(canonical.encode(), digest_size=12).hexdigest()

    def endpoint_identity(self, name: str = "default") -> str:
        """What a stored answer's endpoint is: the URL, or the simulator's settings, since
        an embedded simulator gets a new port every run but gives the same answers."""
        endpoint = self.all_endpoints()[name]
        if not endpoint.embedded:
            return endpoint.base_url.rstrip("/")
        sim = self.simulator
        models = sim.models.read_bytes() if sim.models is not None else b"default"
        digest = hashlib.blake2b(models, digest_size=8).hexdigest()
        identity = f"embedded:seed={sim.seed}:models={digest}"
        if sim.replay is not None:  # other recordings, other answers
            recorded = hashlib.blake2b(sim.replay.read_bytes(), digest_size=8).hexdigest()
            identity += f":replay={recorded}"
        return identity


_PATH_SETTINGS = (
    ("input", "path"),
    ("output", "path"),
    ("output", "calls"),
    ("simulator", "models"),
    ("simulator", "replay"),
)

# Left out of `Job.key`. Keyed are the input, the prompt, the route, plans, checks, params,
# models' prices and fallbacks, the endpoint's URL and charge headers (all change answers or
# the figures written) and the output paths (a job writing elsewhere is another job, with its
# own run to resume). Not keyed:
# - [run]: concurrency, retries, backoff, budget and grace decide how a run goes, not what a
#   finished row holds; raising the budget or lowering the concurrency must resume the run.
# - [store]: the store is where run ids live; another store cannot hold this run anyway.
_NOT_KEYED_SECTIONS = ("run", "store")
# The client's timeout, its HTTP library and the variable holding the key: the same answers.
_NOT_KEYED_ENDPOINT = ("timeout_s", "transport", "api_key_env")
# Rate limits shape the pace of calls, not their answers.
_NOT_KEYED_MODEL = ("rpm", "tpm", "max_concurrency")


def route_targets(job: Job) -> list[str]:
    """Every target the route names, in order: rules' or labels', then the default."""
    route = job.route
    targets = [rule.target for rule in route.rules]
    if route.classifier is not None:
        targets += list(route.classifier.labels.values())
    return targets + ([route.default] if route.default is not None else [])


def models_named(job: Job) -> dict[str, list[str]]:
    """Every model the job names, with what it is used as (tier, classifier, judge, ...)."""
    roles: dict[str, list[str]] = {}

    def note(model: str, role: str) -> None:
        uses = roles.setdefault(model, [])
        if role not in uses:
            uses.append(role)

    route = job.route
    for model in (route.model, *route.tiers):
        if model is not None:
            note(model, "tier")
    for target in route_targets(job):
        if target not in job.plans:
            note(target, "target")
    for name, plan in job.plans.items():
        for model in plan.tiers:
            note(model, f"tier of plan {name}")
    for checks in (job.check or (), *(plan.check or () for plan in job.plans.values())):
        for check in checks:
            if check.type == "judge" and check.model is not None:
                note(check.model, "judge")
    if route.classifier is not None:
        note(route.classifier.model, "classifier")
    if route.shadow_model is not None:
        note(route.shadow_model, "shadow")
    for model in list(roles):
        for fallback in job.model(model).fallbacks:
            note(fallback, f"fallback of {model}")
    return roles


def load_job(path: Path | str) -> Job:
    """Read and validate a job file; relative paths in it are relative to the file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such job file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the job file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        job = Job.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_problem(exc)}") from None
    job = _anchor_paths(job, base=path.parent, source=path)
    if job.simulator.replay is not None:
        _check_replay(job.simulator.replay, source=path)
    return job


def _check_replay(table: Path, *, source: Path) -> None:
    """A replay table must be readable and laid out as one (its schema only is read)."""
    from batchroute.sim.replay import ReplayError, check_layout

    if not table.is_file():
        raise ConfigError(f"{source}: simulator.replay: no such file {table}")
    try:
        check_layout(table)
    except ReplayError as exc:
        raise ConfigError(f"{source}: simulator.replay: {exc}") from None


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (misspelled?)"
    elif error["type"] == "missing":
        message = "required key is missing"
    return f"{where}: {message}" if where else message


def _anchor_paths(job: Job, *, base: Path, source: Path) -> Job:
    def anchored(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else Path(os.path.normpath(base / p))

    updates_in = {"path": anchored(job.input.path)}
    updates_out: dict[str, Any] = {"path": anchored(job.output.path)}
    if job.output.calls is not None:
        updates_out["calls"] = anchored(job.output.calls)
    sim = job.simulator
    store_path = anchored(job.store.path) or base / ".batchroute" / "store.sqlite"
    return job.model_copy(
        update={
            "input": job.input.model_copy(update=updates_in),
            "output": job.output.model_copy(update=updates_out),
            "simulator": sim.model_copy(
                update={"models": anchored(sim.models), "replay": anchored(sim.replay)}
            ),
            "store": job.store.model_copy(update={"path": store_path}),
            "source": source,
        }
    )
