"""batchroute: run datasets of LLM tasks through a model router, with honest cost accounting."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from batchroute.version import __version__

if TYPE_CHECKING:
    from batchroute.comparison import Comparison, compare, compare_table
    from batchroute.job import Job, load_job
    from batchroute.options import RunOptions
    from batchroute.results import read_calls, read_metadata, read_results
    from batchroute.runner import RunReport, arun, run
    from batchroute.runs import Run, read_run

# The public API is imported on first use (PEP 562): importing it all up front costs most of
# a second (polars, pyarrow, the openai SDK), which `batchroute --help` and every `sim`
# process would pay for nothing.
_HOMES = {
    "Job": "batchroute.job",
    "load_job": "batchroute.job",
    "RunOptions": "batchroute.options",
    "read_calls": "batchroute.results",
    "read_metadata": "batchroute.results",
    "read_results": "batchroute.results",
    "RunReport": "batchroute.runner",
    "arun": "batchroute.runner",
    "run": "batchroute.runner",
    "compare": "batchroute.comparison",
    "compare_table": "batchroute.comparison",
    "Comparison": "batchroute.comparison",
    "Run": "batchroute.runs",
    "read_run": "batchroute.runs",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'batchroute' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found directly from now on
    return value


__all__ = [
    "Comparison",
    "Job",
    "RunOptions",
    "RunReport",
    "Run",
    "__version__",
    "arun",
    "compare",
    "compare_table",
    "load_job",
    "read_calls",
    "read_metadata",
    "read_results",
    "read_run",
    "run",
]
