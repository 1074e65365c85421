"""Deterministic answers: a task's difficulty and right label come from a hash of its prompt.

A model with skill `s` answers a prompt correctly iff `s + noise > difficulty(prompt)`, where
`noise` is a small (±0.05) deterministic draw from (seed, model, prompt). Skill 1.0 is an
oracle and skill 0.0 is always wrong, so tests can pin both ends. Nothing here keeps state:
the same inputs always give the same answer, whatever the order requests arrive in.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "VOCABULARY",
    "Draw",
    "complete",
    "count_prompt_tokens",
    "difficulty",
    "digest_key",
    "draw",
    "expected_answer",
    "render",
    "token_logprobs",
    "unit_draw",
]

# The labels a simulated task can have; short words keep answers extractable by any check.
VOCABULARY = ("billing", "refund", "shipping", "bug", "account", "cancel", "feature", "other")
NOISE = 0.05
_TWO_64 = float(2**64)


def _digest(*parts: object, size: int) -> bytes:
    # Length-prefix every part so ("ab", "c") and ("a", "bc") never collide.
    h = hashlib.blake2b(digest_size=size)
    for part in parts:
        data = str(part).encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


def _units(digest: bytes) -> list[float]:
    """Split a digest into floats uniform in [0, 1), one per 8 bytes."""
    return [int.from_bytes(digest[i : i + 8], "little") / _TWO_64 for i in range(0, len(digest), 8)]


def digest_key(*parts: object) -> bytes:
    """A short stable key for `parts`, for counting repeats without keeping long prompts."""
    return _digest("key", *parts, size=16)


def unit_draw(*parts: object) -> float:
    """One uniform float in [0, 1) decided by `parts` alone (used for injected errors)."""
    return _units(_digest("unit", *parts, size=8))[0]


def _prompt_units(prompt: str) -> list[float]:
    return _units(_digest("prompt", prompt, size=16))


def difficulty(prompt: str) -> float:
    """How hard the task is, uniform in [0, 1) over prompts."""
    return _prompt_units(prompt)[0]


def expected_answer(prompt: str) -> str:
    """The right answer to `prompt`: a label from VOCABULARY that depends on the prompt only."""
    return VOCABULARY[int(_prompt_units(prompt)[1] * len(VOCABULARY))]


@dataclass(frozen=True, slots=True)
class Draw:
    """Everything one (seed, model, prompt) decides about an answer."""

    word: str
    correct: bool
    confidence: float
    # When wrong, half the json_schema answers break the schema; this is what a check catches.
    violates: bool
    prose: bool
    logprob_seed: int


def draw(prompt: str, *, model: str, skill: float, seed: int) -> Draw:
    """Decide whether `model` gets `prompt` right, what it says and how sure it claims to be."""
    hard, pick = _prompt_units(prompt)
    right = VOCABULARY[int(pick * len(VOCABULARY))]
    digest = _digest("model", seed, model, prompt, size=48)
    u_noise, u_wrong, u_conf, u_violate, u_prose, _ = _units(digest)
    if skill >= 1.0 or skill <= 0.0:
        correct = skill >= 1.0
    else:
        correct = skill + (2.0 * u_noise - 1.0) * NOISE > hard
    if correct:
        word, confidence = right, 0.65 + 0.34 * u_conf
    else:
        others = [w for w in VOCABULARY if w != right]
        word, confidence = others[int(u_wrong * len(others))], 0.20 + 0.55 * u_conf
    return Draw(
        word=word,
        correct=correct,
        confidence=round(confidence, 2),
        violates=not correct and u_violate < 0.5,
        prose=u_prose < 0.5,
        logprob_seed=int.from_bytes(digest[40:48], "little"),
    )


def render(d: Draw, *, mode: str, schema: Any = None) -> str:
    """The message content for `mode` "text", "json_object" or "json_schema"."""
    if mode == "text":
        return d.word
    if mode == "json_object":
        return json.dumps({"answer": d.word, "confidence": d.confidence})
    value = _fill(schema, d=d, depth=0)
    if d.violates:
        required = _required(schema)
        if d.prose or not required or not isinstance(value, dict):
            return f'I think it is "{d.word}".'
        value.pop(required[0], None)
    return json.dumps(value)


def _required(schema: Any) -> list[str]:
    req = schema.get("required") if isinstance(schema, dict) else None
    return [r for r in req if isinstance(r, str)] if isinstance(req, list) else []


def _fill(schema: Any, *, d: Draw, depth: int) -> Any:
    """A value satisfying the common parts of a JSON schema, built from the answer."""
    if not isinstance(schema, dict) or depth > 8:
        return d.word
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return d.word if d.word in enum else enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _fill(options[0], d=d, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and (depth == 0 or isinstance(schema.get("properties"), dict)):
        kind = "object"  # structured outputs always have an object at the root
    if kind == "object":
        return _fill_object(schema, d=d, depth=depth)
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1) or 1))
        return [_fill(schema.get("items", {}), d=d, depth=depth + 1) for _ in range(count)]
    if kind == "number":
        return _clamp(d.confidence, schema)
    if kind == "integer":
        return int(_clamp(round(d.confidence * 100), schema))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return d.word


def _fill_object(schema: dict[str, Any], *, d: Draw, depth: int) -> dict[str, Any]:
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    out: dict[str, Any] = {}
    for name in [*_required(schema), *props]:
        if name not in out:
            out[name] = _fill(props.get(name, {}), d=d, depth=depth + 1)
    if depth == 0 and schema.get("additionalProperties") is not False:
        # Keep the fields a confidence check reads unless the schema forbids extra keys.
        out.setdefault("answer", d.word)
        out.setdefault("confidence", d.confidence)
    return out


def _clamp(value: float, schema: dict[str, Any]) -> float:
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(low, int | float):
        value = max(value, low)
    if isinstance(high, int | float):
        value = min(value, high)
    return value


def count_prompt_tokens(texts: Iterable[str]) -> int:
    """About four characters a token, plus four tokens of framing per message."""
    return sum(math.ceil(len(t) / 4) + 4 for t in texts)


def complete(content: str, *, max_tokens: int | None) -> tuple[str, int, str]:
    """(content, completion_tokens, finish_reason), cut proportionally when over max_tokens."""
    tokens = math.ceil(len(content) / 4) + 1
    if max_tokens is None or max_tokens >= tokens:
        return content, tokens, "stop"
    return content[: len(content) * max_tokens // tokens], max_tokens, "length"


def token_logprobs(content: str, *, correct: bool, seed: int) -> list[dict[str, Any]]:
    """One entry per four-character token; right answers are near 0, wrong ones well below."""
    rng = random.Random(seed)
    entries = []
    for i in range(0, len(content), 4):
        token = content[i : i + 4]
        spread = rng.random()
        logprob = -(0.005 + 0.08 * spread) if correct else -(0.4 + 1.6 * spread)
        entries.append(
            {
                "token": token,
                "logprob": round(logprob, 4),
                "bytes": list(token.encode()),
                "top_logprobs": [],
            }
        )
    return entries
