"""The one error tree of batchroute, and the exit code each branch maps to.

    BatchrouteError
    ├── UsageError              stops a run before it starts (exit 2), one line naming the fault
    │   ├── ConfigError         the job file: names the file and the key
    │   ├── DatasetError        the input data: names the file and the column or row
    │   ├── OutputError         the output paths: names the file
    │   └── JobBusy             another run of the same job holds its lock: names the pid
    └── RunStopped              the run stopped starting calls part way (finished rows are kept,
        │                       the rest are `skipped`; exit 3)
        ├── BudgetReached       the next call could take spend past `run.budget_usd`, or the
        │                       balance fell below `run.min_balance_usd`, or a 402 (exit 3)
        ├── AuthRejected        the endpoint answered 401/403: no later call can succeed (exit 4)
        └── Interrupted         Ctrl-C or SIGTERM (exit 130)

A run that ended with no row ok is not an exception (its outputs are written); the command
line exits with `EXIT_NO_ROW_OK` (5) and the most common error.

A call's own failure is not an exception that travels: `caller.py` classifies the SDK's
exceptions once, into a `CallFailure` with a `FailureKind`, and the row that made the call
becomes a result row with `status = "failed"`. Only a kind that dooms every later call
(`FATAL`) turns into `AuthRejected`, raised once the finished rows are written.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BatchrouteError(Exception):
    """Base class of every error batchroute raises on purpose."""

    exit_code = 1


class UsageError(BatchrouteError):
    """Bad configuration, data or paths: the run does not start."""

    exit_code = 2


class ConfigError(UsageError):
    """The job file is invalid; the message names the file and the key."""


class DatasetError(UsageError):
    """The input dataset is unreadable or does not fit the job; names file and column or row."""


class OutputError(UsageError):
    """An output path cannot be written without losing earlier results."""


class JobBusy(UsageError):
    """Another process is running the same job (it holds the lock beside the outputs)."""


class RunStopped(BatchrouteError):
    """The run stopped starting rows; rows already finished were written."""

    exit_code = 3


class BudgetReached(RunStopped):
    """Money ran out: the run's budget, the provider's balance floor, or a 402."""


class AuthRejected(RunStopped):
    """The endpoint rejected the credentials; the message never contains the key."""

    exit_code = 4


class Interrupted(RunStopped):
    """The user interrupted the run (SIGINT or SIGTERM)."""

    exit_code = 130


EXIT_NO_ROW_OK = 5  # the run ended, but not one row is ok: likely a wrong URL, model or key


def one_line(what: BaseException | str, *, limit: int = 300, whole: bool = False) -> str:
    """A message fit for one line of output: the first non-blank line of `what` (with `whole`,
    all its lines joined: a server's error body may put the reason on its second line), its
    runs of whitespace collapsed, cut at `limit` characters. An exception without a message
    gives its class name; an OSError its `strerror` and file, without the "[Errno N]" prefix."""
    if isinstance(what, OSError) and what.strerror:
        text = what.strerror + (f": {what.filename}" if what.filename else "")
    else:
        text = str(what)
    if whole:
        text = " ".join(text.split())
    lines = [" ".join(line.split()) for line in text.splitlines()]
    line = next((line for line in lines if line), "")
    if not line:
        return type(what).__name__ if isinstance(what, BaseException) else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


class FailureKind(enum.StrEnum):
    """How a failed call is handled; decided once, in `caller.classify`."""

    RETRYABLE = "retryable"  # timeout, connection error, 408, 409, 429, 5xx: try again later
    FALLBACK = "fallback"  # the model cannot serve this request: try the next model at once
    ROW = "row"  # the request itself is wrong (400): no model will accept it
    FATAL = "fatal"  # 401/403, 402: stop the whole run
    SKIP = "skip"  # the call was not made: the run is stopping, or offline without an answer


@dataclass(frozen=True, slots=True)
class CallFailure:
    """A classified failed call: what happened (`error_kind`) and what to do about it."""

    kind: FailureKind
    error_kind: str  # short machine-readable tag for the calls table, e.g. "http_429", "timeout"
    message: str
    status_code: int | None = None
    retry_after_s: float | None = None
