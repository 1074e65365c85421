"""The simulator's model table: prices, latency, skill, limits and injected errors per model."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "BatchSpec",
    "ErrorRates",
    "Latency",
    "ModelSpec",
    "Prices",
    "SimConfig",
    "SimConfigError",
    "load_sim_config",
]


class SimConfigError(ValueError):
    """A models file that cannot be used; the message is one line naming the file and key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Prices(_Frozen):
    """US dollars per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class Latency(_Frozen):
    """Milliseconds; each request sleeps uniform in [mean - jitter, mean + jitter], floor 0."""

    mean: float = Field(default=50.0, ge=0)
    jitter: float = Field(default=0.0, ge=0)


class ErrorRates(_Frozen):
    """Probability per request of each injected failure; they are exclusive, so sum <= 1."""

    # TOML keys are the status codes, which are not Python identifiers.
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    rate_429: float = Field(default=0.0, ge=0, le=1, alias="429")
    rate_500: float = Field(default=0.0, ge=0, le=1, alias="500")
    rate_503: float = Field(default=0.0, ge=0, le=1, alias="503")
    hang: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _at_most_one(self) -> Self:
        if self.rate_429 + self.rate_500 + self.rate_503 + self.hang > 1.0 + 1e-9:
            raise ValueError("error probabilities sum to more than 1")
        return self


class ModelSpec(_Frozen):
    """How one simulated model prices, paces, limits, fails and answers."""

    usd_per_mtok: Prices
    latency_ms: Latency = Latency()
    skill: float = Field(default=0.5, ge=0, le=1)
    # The chance that a follow-up to this model's own answer (a repair turn) fixes that
    # answer's broken format; its content stays the same (sim/followups.py).
    format_fix: float = Field(default=0.8, ge=0, le=1)
    rpm: int = Field(default=0, ge=0)
    tpm: int = Field(default=0, ge=0)
    itpm: int = Field(default=0, ge=0)  # input tokens per minute, as Anthropic counts them
    otpm: int = Field(default=0, ge=0)  # output tokens per minute
    # Which rate-limit headers every answer carries: OpenAI's, Anthropic's, or none.
    header_style: Literal["openai", "anthropic", "none"] = "openai"
    spent: float = Field(default=0.0, ge=0, le=1)  # share of each limit used before start
    # Answer with the request's body (all but `model`) as JSON, so a test can see what the
    # server received.
    echo: bool = False
    errors: ErrorRates = ErrorRates()
    hang_s: float = Field(default=600.0, ge=0)


class BatchSpec(_Frozen):
    """How the Batch API behaves: seconds until a batch completes, its price factor, and the
    share of lines that fail (500) or expire (the batch then ends `expired`)."""

    latency_s: float = Field(default=2.0, ge=0)
    price_factor: float = Field(default=0.5, ge=0)
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    expire_rate: float = Field(default=0.0, ge=0, le=1)


class SimConfig(_Frozen):
    """The whole table: a starting balance, the Batch API's behaviour and the served models."""

    balance_usd: float = 1000.0
    batch: BatchSpec = BatchSpec()
    models: dict[str, ModelSpec] = Field(min_length=1)


def load_sim_config(path: Path | None = None) -> SimConfig:
    """Read a models TOML file, or the packaged default table when `path` is None."""
    if path is None:
        source = resources.files("batchroute.sim").joinpath("models.toml")
        name, text = "batchroute/sim/models.toml", source.read_text(encoding="utf-8")
    else:
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SimConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SimConfigError(f"{name}: invalid TOML: {exc}") from None
    try:
        return SimConfig.model_validate(data)
    except ValidationError as exc:
        raise SimConfigError(f"{name}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    # One line is what a user can act on. An unknown key comes first: it is usually a typo
    # that also explains a "missing" one.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    key = _dotted(err["loc"])
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    where = f"key {key}: " if key else ""
    return f"{where}{_message(err)}{extra}"


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    return str(err["msg"]).removeprefix("Value error, ")


def _dotted(loc: tuple[int | str, ...]) -> str:
    # Spell the key the way it appears in TOML, quoting names like "openai/gpt-4o-mini".
    parts = []
    for part in loc:
        text = str(part)
        bare = text.replace("_", "").replace("-", "").isalnum()
        parts.append(text if bare else f'"{text}"')
    return ".".join(parts)
