"""The job file: TOML parsed into frozen, validated configuration.

The sections live in `job_sections.py` and `job_route.py`; a `Job` holds them, knows what
identifies it (`key`) and loads from a file (`load_job`). Every section's name is importable
from here, as it always was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from batchroute.check_config import CheckConfig, Checks, as_check_list
from batchroute.errors import ConfigError
from batchroute.job_route import ClassifierConfig, PlanConfig, RouteConfig, RuleConfig
from batchroute.job_sections import (
    DEFAULT_ENDPOINT,
    EMBEDDED,
    NO_MODEL_SETTINGS,
    ColumnType,
    EndpointConfig,
    InputConfig,
    ModelConfig,
    OutputConfig,
    Params,
    Prices,
    ResponseFormat,
    RunConfig,
    Section,
    SimulatorConfig,
    StorageOptions,
    StoreConfig,
    duration_s,
)
from batchroute.prediction import TunePrediction

__all__ = [
    "CheckConfig",
    "ClassifierConfig",
    "ColumnType",
    "DEFAULT_ENDPOINT",
    "EMBEDDED",
    "EndpointConfig",
    "InputConfig",
    "Job",
    "ModelConfig",
    "NO_MODEL_SETTINGS",
    "OutputConfig",
    "Params",
    "PlanConfig",
    "Prices",
    "ResponseFormat",
    "RouteConfig",
    "RuleConfig",
    "RunConfig",
    "SimulatorConfig",
    "StorageOptions",
    "StoreConfig",
    "duration_s",
    "load_job",
    "models_named",
    "route_targets",
]


class Job(Section):
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
    tune: TunePrediction | None = None  # written by `batchroute tune`; read by `compare`
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

    def with_response_model(self, model: type[BaseModel]) -> Job:
        """This job answering in `model`'s JSON schema: the response format asks for it,
        every json_schema check validates against it (one is added if there is none), and the
        results' `parsed` column has its fields. Plans' own params and checks are kept."""
        response = ResponseFormat.model_validate(
            {
                "type": "json_schema",
                "name": re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64],
                "schema": model.model_json_schema(),
            }
        )
        checks = [
            # No schema of its own: the check uses the response format's.
            check.model_copy(update={"schema_": None}) if check.type == "json_schema" else check
            for check in self.check or ()
        ]
        if not any(check.type == "json_schema" for check in checks):
            checks.insert(0, CheckConfig(type="json_schema"))
        params = self.params.model_copy(update={"response_format": response})
        return self.model_copy(update={"params": params, "check": tuple(checks)})

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
        repairs = self.run.repair_attempts
        for section in _NOT_KEYED_SECTIONS:
            settings.pop(section, None)
        if repairs:  # they change answers; keyed only when on, so other jobs keep their keys
            settings["repair_attempts"] = repairs
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
    ("route", "router"),
)

# Left out of `Job.key`. Keyed are the input, the prompt, the route, plans, checks, params,
# models' prices and fallbacks, the endpoint's URL and charge headers (all change answers or
# the figures written) and the output paths (a job writing elsewhere is another job, with its
# own run to resume). Not keyed:
# - [run]: concurrency, retries, backoff, budget and grace decide how a run goes, not what a
#   finished row holds; raising the budget or lowering the concurrency must resume the run.
#   (`run.repair_attempts` is the exception: it changes answers, so it is keyed.)
# - [store]: the store is where run ids live; another store cannot hold this run anyway.
# - [tune]: what tune predicted for the run; it changes no answer.
_NOT_KEYED_SECTIONS = ("run", "store", "tune")
# The client's timeout, its HTTP library and the variable holding the key: the same answers.
_NOT_KEYED_ENDPOINT = ("timeout_s", "transport", "api_key_env")
# Rate limits shape the pace of calls, not their answers.
_NOT_KEYED_MODEL = (
    "rpm",
    "tpm",
    "itpm",
    "otpm",
    "limits",
    "max_concurrency",
    "batch_fallback",
    "batch_max_requests",
    "batch_max_bytes",
)


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


def load_job(path: Path | str, *, response_model: type[BaseModel] | None = None) -> Job:
    """Read and validate a job file; relative paths in it are relative to the file.

    `response_model`, a pydantic model: the job answers in its schema
    (`Job.with_response_model`)."""
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
    return job if response_model is None else job.with_response_model(response_model)


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
            "route": job.route.model_copy(update={"router": anchored(job.route.router)}),
            "input": job.input.model_copy(update=updates_in),
            "output": job.output.model_copy(update=updates_out),
            "simulator": sim.model_copy(
                update={"models": anchored(sim.models), "replay": anchored(sim.replay)}
            ),
            "store": job.store.model_copy(update={"path": store_path}),
            "source": source,
        }
    )
