"""GSM8K's "failing test": does the answer end on the reference's final number?

The final number is read the way RouteLLM's evaluation labelled these outputs: the last run
of digits in the text, thousands separators dropped, compared with the last run of digits of
the reference solution. On the 2,638 recorded answers in data/routing/routellm_gsm8k.parquet
this reproduces every recorded `correct` label, which is what makes a cascade using it the
README's oracle cascade. It ignores signs and decimals ("$7.00" reads as 00, "-15" as 15);
that is the labels' own reading, kept on purpose so the replay matches them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_DIGITS = re.compile(r"\d+")


def final_number(text: str) -> str | None:
    """The last run of digits in `text`, with thousands separators dropped."""
    runs = _DIGITS.findall(text.replace(",", ""))
    return runs[-1] if runs else None


def final_number_matches(row: Mapping[str, Any], answer: str | None) -> tuple[bool, str | None]:
    """Check (and truth scorer): the answer's final number is the reference's."""
    expected = final_number(str(row["reference_answer"]))
    got = final_number(answer or "")
    if got is not None and got == expected:
        return True, None
    return False, f"final number {got} is not the reference's {expected}"
