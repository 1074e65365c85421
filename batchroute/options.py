"""How to run a job, beyond the job file: what the command line's flags say."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from batchroute.transport import Transport

CacheMode = Literal["use", "off", "offline"]


class TransportFactory(Protocol):
    """Builds the transport of endpoint `name` in place of `open_transport` (tests only)."""

    def __call__(
        self, name: str, /, *, base_url: str, api_key: str, timeout_s: float
    ) -> Transport: ...


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run, beyond the job file: the command line's flags."""

    force: bool = False  # replace outputs written by a different job
    quiet: bool = True
    cache: CacheMode = "use"
    retry_failed: Path | None = None  # an earlier results file whose failed rows to rerun
    handle_signals: bool = False  # only in the main thread of a CLI process
    limit_rows: int | None = None  # only the first rows (estimate --sample)
    # Not a flag: tests answer calls in-process with it; no embedded simulator is started.
    transport_factory: TransportFactory | None = None
