"""Prompt templates and chat messages: `{column}` substitution only, no code from a template."""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Message = dict[str, Any]


class BadRowInput(ValueError):
    """A row's own data cannot be turned into messages; the row fails, the run goes on."""


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """A template whose placeholders each name one column, as `{column}`."""

    text: str
    parts: tuple[tuple[str, str | None], ...]  # (literal text, column or None)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(col for _, col in self.parts if col is not None))

    @classmethod
    def parse(cls, text: str) -> PromptTemplate:
        """Parse `text`; raise ValueError for anything but plain `{column}` placeholders.

        str.format would evaluate `{x.__class__}` or `{x[0]}`, so we only use its parser and
        substitute ourselves.
        """
        parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(f"prompt template {text!r}: {exc}") from None
        for literal, field, spec, conversion in parsed:
            if field is None:
                parts.append((literal, None))
                continue
            if not field or not _is_plain_name(field) or spec or conversion:
                shown = "{" + field + (f"!{conversion}" if conversion else "")
                shown += (f":{spec}" if spec else "") + "}"
                raise ValueError(
                    f"placeholder {shown} is not a plain column name;"
                    " templates only substitute columns (write {{ }} for literal braces)"
                )
            parts.append((literal, field))
        return cls(text=text, parts=tuple(parts))

    def render(self, row: Mapping[str, Any]) -> str:
        out: list[str] = []
        for literal, column in self.parts:
            out.append(literal)
            if column is not None:
                value = row[column]
                if value is None:
                    raise BadRowInput(f"column {column!r} is null")
                text = value if isinstance(value, str) else str(value)
                if not text.strip():
                    raise BadRowInput(f"column {column!r} is empty")
                out.append(text)
        return "".join(out)


def _is_plain_name(field: str) -> bool:
    # Column names may hold spaces or dashes, but never the characters str.format treats as
    # attribute access or indexing.
    return not any(ch in field for ch in ".[]!:{}")


def messages_from_json(raw: object, *, column: str) -> list[Message]:
    """Validate a JSON list of chat messages held in a column."""
    if raw is None:
        raise BadRowInput(f"column {column!r} is null")
    try:
        messages = json.loads(raw) if isinstance(raw, str | bytes) else raw
    except json.JSONDecodeError as exc:
        raise BadRowInput(f"column {column!r} is not valid JSON: {exc.msg}") from None
    if not isinstance(messages, list) or not messages:
        raise BadRowInput(f"column {column!r} must hold a non-empty JSON list of messages")
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise BadRowInput(f"column {column!r}: each message needs 'role' and 'content'")
    return messages


def build_messages(
    row: Mapping[str, Any],
    *,
    prompt: PromptTemplate | None,
    system: PromptTemplate | None,
    messages_column: str | None,
) -> list[Message]:
    """The chat messages for one row, from the template or the messages column."""
    if messages_column is not None:
        return messages_from_json(row[messages_column], column=messages_column)
    assert prompt is not None
    messages: list[Message] = []
    if system is not None:
        messages.append({"role": "system", "content": system.render(row)})
    messages.append({"role": "user", "content": prompt.render(row)})
    return messages


def estimate_prompt_tokens(messages: list[Message]) -> int:
    """A tokenizer-free estimate (about 4 characters a token) for rate budgets before a call."""
    total = 0
    for message in messages:
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        total += len(text) // 4 + 5
    return total
