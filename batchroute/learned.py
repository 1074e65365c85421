"""The learned router's model: plain JSON, read and applied per row before any call is made.

`route.strategy = "learned"` with `route.router = "x.router.json"` (written by `batchroute
tune`) and `route.tiers = [cheap, top]`: a logistic regression predicts, from a row's own
columns, the chance that the cheaper model's answer will do; at or above the file's
threshold the row goes to the cheaper model, else to the top model. No check is needed.

Features (version 1), each present-or-absent, hashed into `buckets` slots by BLAKE2b so the
same text gives the same slot in every process:

- `t:<word>` and `t:<word> <word>`: lower-cased word unigrams and bigrams (`\\w+`) of each
  text column (the prompt template's columns), scaled by 1/sqrt(number of n-grams) so long
  texts do not shout;
- `c:<column>=<value>`: each categorical column's value;
- a bias weight.

The file holds no code (no pickle): `{"format": "batchroute.router", "version": 1, ...}`
with the weights as a sparse map from slot to value.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "VERSION", "RouterModel", "features"]

FORMAT, VERSION = "batchroute.router", 1
_WORDS = re.compile(r"\w+")


def _slot(feature: str, *, buckets: int) -> int:
    digest = hashlib.blake2b(feature.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


def features(
    row: Mapping[str, Any],
    *,
    text_columns: Sequence[str],
    categorical_columns: Sequence[str],
    buckets: int,
) -> dict[int, float]:
    """The row's hashed features: slot -> value."""
    out: dict[int, float] = {}
    grams: list[str] = []
    for column in text_columns:
        words = _WORDS.findall(str(row.get(column) or "").lower())
        grams += [f"t:{w}" for w in words]
        grams += [f"t:{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    if grams:
        weight = 1.0 / math.sqrt(len(grams))
        for gram in grams:
            slot = _slot(gram, buckets=buckets)
            out[slot] = out.get(slot, 0.0) + weight
    for column in categorical_columns:
        slot = _slot(f"c:{column}={row.get(column)}", buckets=buckets)
        out[slot] = out.get(slot, 0.0) + 1.0
    return out


@dataclass(frozen=True)
class RouterModel:
    """A trained router: the features it reads, its weights and its threshold."""

    cheap: str
    top: str
    threshold: float
    text_columns: tuple[str, ...]
    categorical_columns: tuple[str, ...]
    buckets: int
    bias: float
    weights: dict[int, float]
    trained_on: int = 0  # rows
    from_runs: int = 0  # of those, rows of earlier runs (`tune --from-runs`), not the sample

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.text_columns, *self.categorical_columns)

    def probability(self, row: Mapping[str, Any]) -> float:
        """The predicted chance that the cheaper model's answer will do for `row`."""
        found = features(
            row,
            text_columns=self.text_columns,
            categorical_columns=self.categorical_columns,
            buckets=self.buckets,
        )
        score = self.bias + sum(self.weights.get(s, 0.0) * v for s, v in found.items())
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, score))))

    def picks_cheap(self, row: Mapping[str, Any]) -> bool:
        return self.probability(row) >= self.threshold

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "cheap": self.cheap,
                "top": self.top,
                "threshold": self.threshold,
                "features": {
                    "text_columns": list(self.text_columns),
                    "categorical_columns": list(self.categorical_columns),
                    "buckets": self.buckets,
                    "ngrams": [1, 2],
                    "hash": "blake2b-64 mod buckets",
                },
                "bias": self.bias,
                "weights": {str(k): round(v, 6) for k, v in sorted(self.weights.items()) if v},
                "trained_on": self.trained_on,
                "from_runs": self.from_runs,
            },
            indent=1,
        )

    @classmethod
    def read(cls, path: Path) -> RouterModel:
        """Read a router file; raises ValueError saying what is wrong with it."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"no such file {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a router file: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f'{path}: not a router file (no "format": "{FORMAT}")')
        if data.get("version") != VERSION:
            found = data.get("version")
            raise ValueError(f"{path}: router version {found!r}; this batchroute reads {VERSION}")
        try:
            spec = data["features"]
            model = cls(
                cheap=str(data["cheap"]),
                top=str(data["top"]),
                threshold=float(data["threshold"]),
                text_columns=tuple(str(c) for c in spec["text_columns"]),
                categorical_columns=tuple(str(c) for c in spec["categorical_columns"]),
                buckets=int(spec["buckets"]),
                bias=float(data["bias"]),
                weights={int(k): float(v) for k, v in dict(data["weights"]).items()},
                trained_on=int(data.get("trained_on", 0)),
                from_runs=int(data.get("from_runs", 0)),
            )
            if model.buckets < 1 or not 0.0 <= model.threshold <= 1.0:
                raise ValueError("buckets must be positive and the threshold within [0, 1]")
            return model
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: a router file with a bad field: {exc}") from None
