"""The money guard: no call starts that could take the run's new spend past its budget."""

from __future__ import annotations

import anyio

from batchroute.control import RunControl
from batchroute.errors import BudgetReached
from batchroute.job import Job


class Budget:
    """Counts new spend and what calls in flight may still cost; stops the run at the limit.

    Cached calls cost nothing now, so they never pass through here. A call is admitted only if
    spend so far, plus the estimates of calls in flight, plus its own estimate stay within the
    budget; so the run can end over budget by no more than the estimates were wrong.
    """

    def __init__(self, job: Job, *, control: RunControl) -> None:
        self._job = job
        self._limit = job.run.budget_usd
        self._min_balance = job.run.min_balance_usd
        self._control = control
        self._largest_seen: dict[str, float] = {}
        self._probing = False
        self._price_known = anyio.Event()
        self.spent_usd = 0.0
        self.in_flight_usd = 0.0

    def estimate(self, model: str, *, prompt_tokens: int, max_tokens: int) -> float | None:
        """Worst-case charge of one call: the price table, else the dearest call seen so far."""
        prices = self._job.model(model).usd_per_mtok
        if prices is not None:
            return prices.cost(prompt_tokens, max_tokens)
        if model in self._largest_seen:
            return self._largest_seen[model]
        return max(self._largest_seen.values(), default=None)

    async def admit(self, model: str, *, prompt_tokens: int, max_tokens: int) -> float | None:
        """Reserve a call's estimate; None means the call must not start (the run stops).

        Without a price table, nothing is known before the first charge arrives: one call goes
        alone to learn it, so a fresh run cannot overshoot by `concurrency` calls.
        """
        estimate = self.estimate(model, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
        if estimate is None and self._limit is not None:
            if self._probing:
                await self._price_known.wait()
                estimate = self.estimate(model, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
            else:
                self._probing = True
        estimate = estimate or 0.0
        if self._control.stopped:
            return None
        if self._limit is not None:
            if self.spent_usd + self.in_flight_usd + estimate > self._limit:
                self._control.stop(
                    BudgetReached(
                        f"budget ${self._limit:g} reached: ${self.spent_usd:.4f} spent,"
                        f" ${self.in_flight_usd:.4f} in flight, the next call could cost"
                        f" ${estimate:.4f}"
                    )
                )
                return None
        self.in_flight_usd += estimate
        return estimate

    def release(self, estimate_usd: float) -> None:
        """The call is over (answered, failed or cancelled): its estimate leaves the books."""
        self.in_flight_usd -= estimate_usd
        # Whatever the probe learnt (even "no charge"), the calls waiting on it may now go.
        self._price_known.set()

    def add_spend(self, model: str, charge_usd: float) -> None:
        self.spent_usd += charge_usd
        if charge_usd > self._largest_seen.get(model, 0.0):
            self._largest_seen[model] = charge_usd

    def add_doubtful_spend(self, model: str, priced_usd: float | None) -> None:
        """A call whose charge header was not a usable amount: count the larger of its price
        and the dearest call seen, so a lying header can never widen the budget."""
        dearest = max(self._largest_seen.values(), default=0.0)
        self.add_spend(model, max(priced_usd or 0.0, dearest))

    def note_balance(self, balance_usd: float | None) -> None:
        if balance_usd is None or self._min_balance is None:
            return
        if balance_usd < self._min_balance:
            self._control.stop(
                BudgetReached(
                    f"provider balance ${balance_usd:.4f} fell below run.min_balance_usd"
                    f" ${self._min_balance:g}"
                )
            )
