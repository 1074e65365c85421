"""`batchroute` with its call store switched off, for bench/store_cost.py only.

No request key is hashed, nothing is looked up or written; the run's bookkeeping row (run
id, resume) is still kept. batchroute itself has no such switch: the store is what makes a
killed run resumable, and this measures what that costs.
"""

from __future__ import annotations

import sys
from typing import Any

from batchroute import store
from batchroute.cli import main

_open = store.CallCache.__init__


def _switched_off(self: store.CallCache, *args: Any, **kwargs: Any) -> None:
    _open(self, *args, **kwargs)
    self.reads = self.writes = False


store.CallCache.__init__ = _switched_off  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
