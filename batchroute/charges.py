"""What a call cost: the provider's charge header, else the price table times usage.

The figure is booked on the run's budget here, once per call; a balance header updates the
run's view of the account. Header values are hostile until validated: a charge that is not a
finite, non-negative number is never summed (warned about once per endpoint and header).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from batchroute.budget import Budget
from batchroute.completion import Completion
from batchroute.control import RunControl
from batchroute.errors import one_line
from batchroute.job import Job
from batchroute.records import HEADER, INVALID_HEADER, PRICE_TABLE, UNKNOWN

log = logging.getLogger("batchroute")


class _Invalid:
    """A header that was sent but is not a usable amount."""


_INVALID = _Invalid()


@dataclass(frozen=True, slots=True)
class Charge:
    """What one call cost and where that figure came from; the balance it reported."""

    usd: float | None
    source: str
    balance_usd: float | None = None


class Charges:
    """Reads and books the charge of each call of one run."""

    def __init__(self, job: Job, *, control: RunControl, budget: Budget) -> None:
        self._job = job
        self._control = control
        self._budget = budget
        self._endpoints = job.all_endpoints()
        self._warned: set[tuple[str, str]] = set()  # (endpoint, header) warned about this run

    def of(
        self,
        model: str,
        headers: Mapping[str, str],
        completion: Completion | None,
        *,
        factor: float = 1.0,
    ) -> Charge:
        """The provider's charge header when sent, else the price table times usage (times a
        batch tier's `factor`); booked on the budget once, here."""
        endpoint_name = self._job.endpoint_name(model)
        endpoint = self._endpoints[endpoint_name]
        charged = self._money_header(headers, endpoint.charge_header, endpoint_name)
        # A balance that is not a number is ignored: it must neither stop nor unstop the run.
        sent_balance = self._money_header(headers, endpoint.balance_header, endpoint_name)
        balance = sent_balance if isinstance(sent_balance, float) else None
        self._control.note_balance(endpoint_name, balance)
        self._budget.note_balance(balance)
        if isinstance(charged, float):
            self._budget.add_spend(model, charged)
            return Charge(charged, HEADER, balance)
        prices = self._job.model(model).usd_per_mtok
        usd = None
        if prices is not None and completion is not None and completion.prompt_tokens is not None:
            usd = prices.cost(
                completion.prompt_tokens, completion.completion_tokens or 0, factor=factor
            )
        if charged is _INVALID:
            # Summing a NaN or a negative charge would blind the budget or widen it: count the
            # call as the dearest seen (or its price, if dearer), and say where it came from.
            self._budget.add_doubtful_spend(model, usd)
            return Charge(usd, INVALID_HEADER, balance)
        if usd is not None:
            self._budget.add_spend(model, usd)
            return Charge(usd, PRICE_TABLE, balance)
        return Charge(None, UNKNOWN, balance)

    def _money_header(
        self, headers: Mapping[str, str], name: str, endpoint: str
    ) -> float | _Invalid | None:
        """An amount in USD from a header: None when absent, _INVALID (warned about once per
        run and header) when it is not a finite, non-negative number."""
        raw = headers.get(name)
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
        if (endpoint, name) not in self._warned:
            self._warned.add((endpoint, name))
            log.warning(
                "endpoint %s sent %s: %r, not an amount in USD; such values are ignored (a"
                " charge is taken from the price table, else unknown, and the budget counts"
                " the call as the dearest seen)",
                endpoint,
                name,
                one_line(raw, whole=True)[:40],
            )
        return _INVALID
