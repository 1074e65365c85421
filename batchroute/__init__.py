"""batchroute: run datasets of LLM tasks through a model router, with honest cost accounting."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("batchroute")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from batchroute.compare import compare  # noqa: E402
from batchroute.job import Job, load_job  # noqa: E402
from batchroute.preflight import RunOptions  # noqa: E402
from batchroute.results import read_calls, read_metadata, read_results  # noqa: E402
from batchroute.runner import RunReport, arun, run  # noqa: E402
from batchroute.runs import Run, read_run  # noqa: E402

__all__ = [
    "Job",
    "RunOptions",
    "RunReport",
    "Run",
    "__version__",
    "arun",
    "compare",
    "load_job",
    "read_calls",
    "read_metadata",
    "read_results",
    "read_run",
    "run",
]
