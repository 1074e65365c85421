"""What a run records: one CallRecord per HTTP call, one RowResult per input row."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import polars as pl

from batchroute.parsed import PARSED, AnswerParser

# cost_source values: where a charge came from
HEADER = "header"
PRICE_TABLE = "price_table"
UNKNOWN = "unknown"  # no charge header and no price for the model
# The charge header was not a finite, non-negative number: the price table's charge, if any.
INVALID_HEADER = "invalid_header"
MIXED = "mixed"  # a row whose calls were charged from different sources

OK, FAILED, SKIPPED = "ok", "failed", "skipped"

# purpose values: why a call was made. Every purpose is charged to the row, except calls
# made for shadow sampling (`shadow = true`), which are kept apart in `shadow_cost_usd`.
ANSWER, CLASSIFIER, JUDGE = "answer", "classifier", "judge"
REPAIR = "repair"  # another turn for an answer that failed a format check (repair.py)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One HTTP call (or a stored one replayed), built once when its facts are all known."""

    row_id: object
    tier: int
    model: str
    attempt: int
    started_at: datetime
    latency_s: float
    status_code: int | None = None
    error_kind: str | None = None
    error: str | None = None
    retry_after_s: float | None = None  # what the server asked us to wait, when it said
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    charge_usd: float | None = None
    cost_source: str = UNKNOWN
    balance_usd: float | None = None
    request_id: str | None = None
    cached: bool = False
    purpose: str = ANSWER
    shadow: bool = False
    mean_logprob: float | None = None  # of the answer's tokens, when logprobs were asked for
    # The limits per minute the answer's rate-limit headers named (requests, tokens, input
    # tokens, output tokens), when it named them.
    limit_requests: int | None = None
    limit_tokens: int | None = None
    limit_input_tokens: int | None = None
    limit_output_tokens: int | None = None
    # Another row's identical request answered this one (run.dedupe): no call was made for
    # this row; the charge of the shared call is in `shared_charge_usd`, not `charge_usd`.
    deduped: bool = False
    shared_charge_usd: float | None = None
    tool_calls: str | None = None  # the answer's tool calls, as JSON

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def unpriced(self) -> bool:
        """Answered (2xx), but with no known charge: what it cost is unknown. A refused call
        without a charge header is not counted so: providers do not charge refusals."""
        code = self.status_code
        return self.charge_usd is None and code is not None and 200 <= code < 300


@dataclass(slots=True)
class RowResult:
    row_id: object
    plan: str
    status: str = OK
    answer: str | None = None
    model: str | None = None
    escalated: bool = False
    escalation_reason: str | None = None  # the first failed check's reason
    check_reasons: list[str] = field(default_factory=list)  # every failed check's, in tier order
    tiers_tried: list[str] = field(default_factory=list)
    fallback_used: bool = False
    check_passed: bool | None = None
    error: str | None = None
    calls: list[CallRecord] = field(default_factory=list)
    label: str | None = None
    rule: str | None = None  # the rule that picked the plan (rules strategy)
    route_key: str | None = None  # rule, label or plan: what the summary groups rows by
    label_unknown: bool = False  # the classifier's label picked no target: the default did
    past_cheapest: bool = False  # the router sent the row past the cheapest tier
    shadow_passed: bool | None = None  # sampled: would the cheapest tier have passed?
    repairs: int = 0  # repair turns asked for (`run.repair_attempts`)
    repaired: bool = False  # a repair turn's answer passed the check

    @property
    def tool_calls(self) -> str | None:
        """The tool calls of the call that gave the final answer, as JSON."""
        answered = [c for c in self.calls if c.purpose == ANSWER and not c.shadow and c.ok]
        return answered[-1].tool_calls if answered and self.answer is not None else None

    @property
    def answer_calls(self) -> list[CallRecord]:
        """The calls of the plan's tiers: no classifier, judge or shadow calls."""
        return [c for c in self.calls if c.purpose == ANSWER and not c.shadow]

    def totals(self) -> RowTotals:
        """The row's calls summed in one pass: what the results, the progress bar and the
        summary read of them (each row is summed once per reader, not once per column)."""
        charged = made = rate_limited = prompt_tokens = completion_tokens = 0
        known = classifier = repair = shadow = shared = cached_usd = latency = 0.0
        priced = partly_unknown = any_classifier = any_shadow = deduped = False
        all_cached = bool(self.calls)
        sources: set[str] = set()
        for c in self.calls:
            charge = c.charge_usd
            made += not c.deduped
            rate_limited += c.status_code == 429
            all_cached = all_cached and c.cached
            if c.cached:
                cached_usd += charge or 0.0
            if c.shadow:
                any_shadow = True
                shadow += charge or 0.0
                continue
            if c.deduped:
                deduped = True
                shared += c.shared_charge_usd or 0.0
                continue
            charged += 1
            prompt_tokens += c.prompt_tokens or 0
            completion_tokens += c.completion_tokens or 0
            latency += c.latency_s
            if charge is not None:
                priced = True
                known += charge
                sources.add(c.cost_source)
            elif c.unpriced:
                partly_unknown = True
            if c.purpose == CLASSIFIER:
                any_classifier = True
                classifier += charge or 0.0
            elif c.purpose == REPAIR:
                repair += charge or 0.0
        if not sources:
            source = UNKNOWN if charged else None
        elif partly_unknown or len(sources) > 1:
            source = MIXED  # known charges and unknown ones, or several sources
        else:
            source = sources.pop()
        sampled = any_shadow or self.shadow_passed is not None
        return RowTotals(
            charged_calls=charged,
            calls_made=made,
            # None (not 0.0) when no charge is known and some answered call's is not.
            cost_usd=None if not priced and partly_unknown else known,
            priced=priced,
            cost_partly_unknown=partly_unknown,
            cost_source=source,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=latency,
            classifier_cost_usd=classifier if any_classifier else None,
            repair_cost_usd=repair,
            shadow_cost_usd=shadow if sampled else None,
            deduped=deduped,
            shared_cost_usd=shared if deduped else None,
            cached_usd=cached_usd,
            all_cached=all_cached,
            rate_limited=rate_limited,
        )


class RowTotals(NamedTuple):
    """A row's calls summed (RowResult.totals). "Charged" calls are all but shadow
    sampling's and answers shared from another row's identical call (which that row paid)."""

    charged_calls: int
    calls_made: int  # not shared from another row; shadow sampling's included
    cost_usd: float | None  # the known charges of the charged calls
    priced: bool  # some charged call's charge is known
    cost_partly_unknown: bool  # some answered charged call's is not: cost_usd is a floor
    cost_source: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    classifier_cost_usd: float | None  # None: no classifier call
    repair_cost_usd: float
    shadow_cost_usd: float | None  # what shadow sampling spent; None: the row was not sampled
    deduped: bool  # the row's answer came from another row's identical call
    shared_cost_usd: float | None  # what those shared calls cost the rows that made them
    cached_usd: float  # the original charges of answers taken from the store
    all_cached: bool  # every call of the row came from the store
    rate_limited: int  # calls answered 429


def call_schema(id_dtype: pl.DataType) -> dict[str, pl.DataType]:
    return {
        "row_id": id_dtype,
        "tier": pl.Int32(),
        "model": pl.String(),
        "attempt": pl.Int32(),
        "status_code": pl.Int32(),
        "error_kind": pl.String(),
        "error": pl.String(),
        "retry_after_s": pl.Float64(),
        "latency_s": pl.Float64(),
        "prompt_tokens": pl.Int64(),
        "completion_tokens": pl.Int64(),
        "charge_usd": pl.Float64(),
        "cost_source": pl.String(),
        "balance_usd": pl.Float64(),
        "request_id": pl.String(),
        "cached": pl.Boolean(),
        "started_at": pl.Datetime("us", "UTC"),
        # routing strategies
        "purpose": pl.String(),
        "shadow": pl.Boolean(),
        "mean_logprob": pl.Float64(),
        # learned limits
        "limit_requests": pl.Int64(),
        "limit_tokens": pl.Int64(),
        "limit_input_tokens": pl.Int64(),
        "limit_output_tokens": pl.Int64(),
        "deduped": pl.Boolean(),
        "shared_charge_usd": pl.Float64(),
        "tool_calls": pl.String(),
    }


def result_schema(
    id_dtype: pl.DataType, *, parser: AnswerParser | None = None
) -> dict[str, pl.DataType]:
    """The results' columns; `parsed` after them when the job has a JSON schema."""
    schema: dict[str, pl.DataType] = {
        "row_id": id_dtype,
        "answer": pl.String(),
        "model": pl.String(),
        "plan": pl.String(),
        "escalated": pl.Boolean(),
        "escalation_reason": pl.String(),
        "check_reasons": pl.List(pl.String()),
        "tiers_tried": pl.List(pl.String()),
        "fallback_used": pl.Boolean(),
        "check_passed": pl.Boolean(),
        "status": pl.String(),
        "error": pl.String(),
        "calls": pl.Int32(),
        "cost_usd": pl.Float64(),
        "cost_source": pl.String(),
        "prompt_tokens": pl.Int64(),
        "completion_tokens": pl.Int64(),
        "latency_s": pl.Float64(),
        "label": pl.String(),
        "cached": pl.Boolean(),
        # routing strategies
        "rule": pl.String(),
        "classifier_cost_usd": pl.Float64(),
        "shadow_passed": pl.Boolean(),
        "shadow_cost_usd": pl.Float64(),
        # repair turns
        "repairs": pl.Int32(),
        "repaired": pl.Boolean(),
        # identical requests shared
        "deduped": pl.Boolean(),
        "shared_cost_usd": pl.Float64(),
        "tool_calls": pl.String(),  # the final answer's tool calls, as JSON
    }
    if parser is not None:
        schema[PARSED] = parser.dtype
    return schema


def calls_frame(calls: list[CallRecord], *, id_dtype: pl.DataType) -> pl.DataFrame:
    schema = call_schema(id_dtype)
    columns = {name: [getattr(c, name) for c in calls] for name in schema}
    return pl.DataFrame(columns, schema=schema)


def results_frame(
    results: list[RowResult], *, id_dtype: pl.DataType, parser: AnswerParser | None = None
) -> pl.DataFrame:
    """The results of rows; with a parser, each answer read into the typed `parsed` column
    (here, in the batch writer's thread: parsing is the writer's work, not the loop's)."""
    schema = result_schema(id_dtype)
    columns: dict[str, list[object]] = {name: [] for name in schema}
    for r in results:
        t = r.totals()
        columns["row_id"].append(r.row_id)
        columns["answer"].append(r.answer)
        columns["model"].append(r.model)
        columns["plan"].append(r.plan)
        columns["escalated"].append(r.escalated)
        columns["escalation_reason"].append(r.escalation_reason)
        columns["check_reasons"].append(r.check_reasons)
        columns["tiers_tried"].append(r.tiers_tried)
        columns["fallback_used"].append(r.fallback_used)
        columns["check_passed"].append(r.check_passed)
        columns["status"].append(r.status)
        columns["error"].append(r.error)
        columns["calls"].append(t.charged_calls)
        columns["cost_usd"].append(t.cost_usd)
        columns["cost_source"].append(t.cost_source)
        columns["prompt_tokens"].append(t.prompt_tokens)
        columns["completion_tokens"].append(t.completion_tokens)
        columns["latency_s"].append(t.latency_s)
        columns["label"].append(r.label)
        columns["cached"].append(t.all_cached)
        columns["rule"].append(r.rule)
        columns["classifier_cost_usd"].append(t.classifier_cost_usd)
        columns["shadow_passed"].append(r.shadow_passed)
        columns["shadow_cost_usd"].append(t.shadow_cost_usd)
        columns["repairs"].append(r.repairs)
        columns["repaired"].append(r.repaired)
        columns["deduped"].append(t.deduped)
        columns["shared_cost_usd"].append(t.shared_cost_usd)
        columns["tool_calls"].append(r.tool_calls)
    frame = pl.DataFrame(columns, schema=schema)
    if parser is not None:
        frame = frame.with_columns(parser.parse([r.answer for r in results]))
    return frame
