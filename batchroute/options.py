"""How to run a job, beyond the job file: what the command line's flags say."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CacheMode = Literal["use", "off", "offline"]


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run, beyond the job file: the command line's flags."""

    force: bool = False  # replace outputs written by a different job
    quiet: bool = True
    cache: CacheMode = "use"
    retry_failed: Path | None = None  # an earlier results file whose failed rows to rerun
    handle_signals: bool = False  # only in the main thread of a CLI process
    limit_rows: int | None = None  # only the first rows (estimate --sample)
