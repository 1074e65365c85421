"""The tuned job file: the original text with its route, plans, check and tune tables replaced.

The rewrite is textual, by TOML table boundaries, so every other table keeps its text and its
comments. A removed table takes its own lines with it, up to the comments and blank lines
just above the next table's header, which stay with that header. The new tables go where the
first removed one was. The result is parsed and validated as a job before it is written.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from batchroute.errors import OutputError
from batchroute.job import Job
from batchroute.tune.policies import Policy
from batchroute.tune.signals import LOGPROB

__all__ = ["policy_tables", "replace_tables", "toml_value", "write_tuned"]

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]*?)\s*\]\]?\s*(#.*)?$")
_REPLACED = re.compile(r"^(route|check|plans|tune)\s*(\.|$)")


def _is_comment(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _headers(lines: Sequence[str]) -> list[tuple[int, str]]:
    """(line index, table name) of every table header, skipping multi-line strings."""
    found, quote = [], None
    for index, line in enumerate(lines):
        if quote is None:
            match = _HEADER.match(line)
            if match:
                found.append((index, match.group(1)))
        for delimiter in ('"""', "'''"):
            if line.count(delimiter) % 2 and quote in (None, delimiter):
                quote = None if quote == delimiter else delimiter
    return found


def replace_tables(original: str, *, new_tables: str) -> str:
    """`original` without its route, check and plans tables, `new_tables` in their place."""
    lines = original.splitlines()
    headers = _headers(lines)
    starts = [i for i, _ in headers] + [len(lines)]
    keep = [True] * len(lines)
    insert_at: int | None = None
    for (start, name), end in zip(headers, starts[1:], strict=True):
        if not _REPLACED.match(name):
            continue
        stop = end
        while stop > start + 1 and end < len(lines) and _is_comment(lines[stop - 1]):
            stop -= 1  # comments just above the next header belong to it
        # This table's own leading comments go with it.
        first = start
        while first > 0 and lines[first - 1].strip().startswith("#"):
            first -= 1
        for i in range(first, stop):
            keep[i] = False
        insert_at = first if insert_at is None else insert_at
    out: list[str] = []
    for index, line in enumerate(lines):
        if index == insert_at:
            out.extend(new_tables.rstrip("\n").splitlines())
            out.append("")
        removed_before = index > 0 and not keep[index - 1]
        if keep[index] and not (removed_before and not line.strip() and out and not out[-1]):
            out.append(line)
    if insert_at is None:
        out.extend(["", *new_tables.rstrip("\n").splitlines()])
    return "\n".join(out).rstrip("\n") + "\n"


def toml_value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for any text json escapes
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def policy_tables(
    policy: Policy, *, original_check: str | None, comment: str, router_file: str | None = None
) -> str:
    """The TOML of the route (and check, plans) a policy stands for."""
    lines = [f"# {line}" for line in comment.splitlines()]
    if policy.kind == "learned":
        assert router_file is not None
        tiers = toml_value(list(policy.tiers))
        route = ["[route]", 'strategy = "learned"', f"tiers = {tiers}"]
        return "\n".join([*lines, *route, f"router = {toml_value(router_file)}"]) + "\n"
    if policy.kind == "rules":
        body = policy.detail.get("toml")
        assert isinstance(body, str)
        return "\n".join([*lines, body])
    if len(policy.tiers) == 1:
        lines += ["[route]", 'strategy = "fixed"', f"model = {toml_value(policy.tiers[0])}"]
    else:
        lines += ["[route]", 'strategy = "cascade"', f"tiers = {toml_value(list(policy.tiers))}"]
    gate = policy.gate
    if gate is not None and gate.signal is not None:
        lines += ["", "[check]", 'type = "confidence"']
        if gate.signal.name == LOGPROB:
            lines.append("logprobs = true")
        else:
            lines.append(f"path = {toml_value(gate.signal.name)}")
        lines.append(f"threshold = {toml_value(float(gate.threshold or 0.0))}")
    elif original_check:
        lines += ["", original_check.rstrip("\n")]
    return "\n".join(lines) + "\n"


def check_tables(original: str) -> str | None:
    """The text of the original `[check]` / `[[check]]` tables, to keep them as they were."""
    lines = original.splitlines()
    headers = _headers(lines)
    starts = [i for i, _ in headers] + [len(lines)]
    parts = []
    for (start, name), end in zip(headers, starts[1:], strict=True):
        if re.match(r"^check\s*(\.|$)", name):
            stop = end
            while stop > start + 1 and _is_comment(lines[stop - 1]):
                stop -= 1
            parts.append("\n".join(lines[start:stop]))
    return "\n\n".join(parts) if parts else None


def check_target(source: Path, *, target: Path, force: bool) -> None:
    """Before anything is spent: `target` may be written (beside the job, not over it)."""
    if target.resolve() == source.resolve():
        raise OutputError(f"-o {target}: that is the job file itself; write the tuned job apart")
    if target.resolve().parent != source.resolve().parent:
        raise OutputError(
            f"-o {target}: write the tuned job beside {source}: its relative paths are"
            " relative to the job file's directory"
        )
    if target.exists() and not force:
        raise OutputError(f"-o {target}: already exists; pass --force to replace it")


def write_tuned(source: Path, text: str, *, target: Path, force: bool) -> None:
    """Validate `text` as a job and write it to `target` (never over the job itself)."""
    check_target(source, target=target, force=force)
    try:
        Job.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:  # our bug, not the user's: exit 1
        raise RuntimeError(f"{target}: the tuned job does not validate: {exc}") from None
    target.write_text(text, encoding="utf-8")
