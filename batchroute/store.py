"""The call store: one SQLite file (WAL) of finished calls, for resume and for a cross-run cache.

A call is keyed by a hash of everything that changes its answer: the endpoint's identity, the
model, the messages and the request parameters. Only answered calls are kept for reuse; a
failed call is not an answer. Each stored call names the run that paid for it, so a later run
can tell its own calls (resume: not cached) from another run's (cache: `cached = true`).

Reads: the keys the store holds are read once at the start, and a lookup of any other key
ends there; the rest are point lookups on the primary key, made in groups from a worker
thread by one reader task. Writes go through one writer task that commits in groups from a
worker thread. So the event loop never waits on the disk.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import sqlite3
import time
from array import array
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batchroute.errors import ConfigError, one_line

_Item = TypeVar("_Item")

# 2: mean_logprob, for logprob confidence checks on stored answers; 3: tool_calls, so that an
# answer replayed from the store carries the tool calls it was made of.
SCHEMA_VERSION = 3
_ROWS_PER_INSERT = 500  # 13 parameters a row, well under SQLite's limit per statement

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, job_key TEXT NOT NULL, started_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS runs_by_job ON runs (job_key, finished_at);
CREATE TABLE IF NOT EXISTS calls (
    key BLOB PRIMARY KEY, model TEXT NOT NULL, answer TEXT NOT NULL,
    prompt_tokens INTEGER, completion_tokens INTEGER, charge_usd REAL, cost_source TEXT,
    latency_s REAL, request_id TEXT, run_id TEXT NOT NULL, created_at REAL NOT NULL,
    mean_logprob REAL, tool_calls TEXT
);
"""


@dataclass(frozen=True, slots=True)
class StoredCall:
    """A finished, answered call as the store keeps it."""

    key: bytes
    model: str
    answer: str
    prompt_tokens: int | None
    completion_tokens: int | None
    charge_usd: float | None
    cost_source: str | None
    latency_s: float
    request_id: str | None
    run_id: str
    mean_logprob: float | None = None
    tool_calls: str | None = None  # the answer's tool calls, as JSON


def request_key(endpoint: str, model: str, messages: list[Any], params: dict[str, Any]) -> bytes:
    """A stable hash of a request: equal requests, equal keys, whatever the dict order."""
    canonical = json.dumps(
        [endpoint, model, messages, params],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.blake2b(canonical.encode(), digest_size=20).digest()


class CallStore:
    """The SQLite file. Methods are blocking: run them in a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot create the store: {one_line(exc)}") from None
        try:
            # The writer thread and the reader thread differ; SQLite serialises them itself.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process (not a power cut) and costs no fsync
            # per commit; a power cut loses at most the last commits, which are then re-paid.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._check_version()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path}: not a usable batchroute store: {one_line(exc)}") from None
        self.empty = self._db.execute("SELECT 1 FROM calls LIMIT 1").fetchone() is None

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif row[0] == "2":
            # Every call of a version 2 store is still an answer; only its tool calls were
            # not kept (they read as none). Migrated in place, in one transaction.
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute("ALTER TABLE calls ADD COLUMN tool_calls TEXT")
                self._db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )
        elif row[0] != str(SCHEMA_VERSION):
            raise ConfigError(
                f"{self.path}: store has schema version {row[0]}, this batchroute reads"
                f" {SCHEMA_VERSION}; move the file away or point [store] path elsewhere"
            )

    def open_run(self, job_key: str, *, new_run_id: str, reopen: str | None = None) -> str:
        """The run id to use: `reopen` if given (retrying an earlier run's failed rows), else
        an unfinished run of the same job (resume), else a new one."""
        if reopen is not None:
            self._db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, NULL) ON CONFLICT (run_id)"
                " DO UPDATE SET finished_at = NULL",
                (reopen, job_key, time.time()),
            )
            return reopen
        row = self._db.execute(
            "SELECT run_id FROM runs WHERE job_key = ? AND finished_at IS NULL"
            " ORDER BY started_at DESC LIMIT 1",
            (job_key,),
        ).fetchone()
        if row is not None:
            return str(row[0])
        self._db.execute(
            "INSERT INTO runs VALUES (?, ?, ?, NULL)", (new_run_id, job_key, time.time())
        )
        return new_run_id

    def finish_run(self, run_id: str) -> None:
        self._db.execute("UPDATE runs SET finished_at = ? WHERE run_id = ?", (time.time(), run_id))

    def lookup(self, key: bytes) -> StoredCall | None:
        row = self._db.execute(
            "SELECT key, model, answer, prompt_tokens, completion_tokens, charge_usd,"
            " cost_source, latency_s, request_id, run_id, mean_logprob, tool_calls"
            " FROM calls WHERE key = ?",
            (key,),
        ).fetchone()
        return StoredCall(*row) if row is not None else None

    def stored_keys(self) -> StoredKeys:
        """What the store holds now, as `StoredKeys`; one scan of the key index."""
        # The primary key's index yields the keys in order, and big-endian prefixes of
        # equal-length keys sort as the keys do: the array comes out sorted for bisect.
        rows = self._db.execute("SELECT substr(key, 1, 8) FROM calls ORDER BY key")
        return StoredKeys(array("Q", (int.from_bytes(prefix, "big") for (prefix,) in rows)))

    def lookup_many(self, keys: list[bytes]) -> dict[bytes, StoredCall]:
        """`lookup` of each key, in one trip to a worker thread; the keys found."""
        found = {}
        for key in keys:
            call = self.lookup(key)
            if call is not None:
                found[key] = call
        return found

    def put_many(self, calls: list[StoredCall]) -> None:
        """Insert and commit a group of calls.

        One multi-row INSERT rather than executemany: sqlite3 lets go of the GIL for every
        statement step, and while the event loop is busy each hand-back can wait a whole
        switch interval, so a group must cost few steps to reach the disk quickly.
        """
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            for start in range(0, len(calls), _ROWS_PER_INSERT):
                chunk = calls[start : start + _ROWS_PER_INSERT]
                values = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?,?)"] * len(chunk))
                params = [
                    value
                    for c in chunk
                    for value in (
                        c.key,
                        c.model,
                        c.answer,
                        c.prompt_tokens,
                        c.completion_tokens,
                        c.charge_usd,
                        c.cost_source,
                        c.latency_s,
                        c.request_id,
                        c.run_id,
                        now,
                        c.mean_logprob,
                        c.tool_calls,
                    )
                ]
                self._db.execute(f"INSERT OR REPLACE INTO calls VALUES {values}", params)

    def close(self) -> None:
        self._db.close()


class StoreWriter:
    """Queues finished calls and commits them in groups, off the event loop.

    A group is whatever arrived while the previous commit ran, so under load commits are
    large and rare, and when idle a call is committed milliseconds after it finished.
    """

    def __init__(self, store: CallStore) -> None:
        self._store = store
        self._send: MemoryObjectSendStream[StoredCall]
        self._receive: MemoryObjectReceiveStream[StoredCall]
        self._send, self._receive = anyio.create_memory_object_stream[StoredCall](10_000)

    async def put(self, call: StoredCall) -> None:
        try:
            # Without waiting when the queue has room: `send` always yields to the event loop
            # first, a task switch per call for nothing while the writer keeps up.
            self._send.send_nowait(call)
        except anyio.WouldBlock:
            await self._send.send(call)

    def close(self) -> None:
        """No more calls: `run` commits what is queued and returns."""
        self._send.close()

    async def run(self) -> None:
        async for group in _groups(self._receive):
            await anyio.to_thread.run_sync(self._store.put_many, group)


class StoredKeys:
    """The keys a store held when a run started, as sorted 8-byte prefixes (8 bytes a call).

    Only those calls can be reused by the run: its own are already on the rows that made
    them, which is also why a store empty at the start is not read at all. A key whose prefix
    is not here was certainly not stored, so a run over a store full of other runs' calls
    answers almost every lookup here, on the loop, without a trip to the worker thread; a
    prefix that is here still goes to the store, which has the last word.
    """

    def __init__(self, prefixes: array[int]) -> None:
        self._prefixes = prefixes

    def __len__(self) -> int:
        return len(self._prefixes)

    def may_hold(self, key: bytes) -> bool:
        prefix = int.from_bytes(key[:8], "big")
        at = bisect.bisect_left(self._prefixes, prefix)
        return at < len(self._prefixes) and self._prefixes[at] == prefix


@dataclass(slots=True)
class _Lookup:
    key: bytes
    found: StoredCall | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


class StoreReader:
    """Looks calls up in groups, off the event loop.

    A trip to a worker thread costs far more than a point lookup, and a run over a store that
    holds earlier calls looks up every call: one trip each made such a run 0.72x as fast as
    one without a store (bench/store_cost.py). A group is whatever lookups arrived while the
    previous group was being looked up, so under load a trip serves many rows.
    """

    def __init__(self, store: CallStore) -> None:
        self._store = store
        self._send: MemoryObjectSendStream[_Lookup]
        self._receive: MemoryObjectReceiveStream[_Lookup]
        # Unbounded, but never longer than the rows in flight: each waits for its answer.
        self._send, self._receive = anyio.create_memory_object_stream[_Lookup](math.inf)

    async def find(self, key: bytes) -> StoredCall | None:
        lookup = _Lookup(key)
        self._send.send_nowait(lookup)
        await lookup.done.wait()
        return lookup.found

    def close(self) -> None:
        """No more lookups: `run` answers what is queued and returns."""
        self._send.close()

    async def run(self) -> None:
        async for group in _groups(self._receive):
            keys = [lookup.key for lookup in group]
            found = await anyio.to_thread.run_sync(self._store.lookup_many, keys)
            for lookup in group:
                lookup.found = found.get(lookup.key)
                lookup.done.set()


class CallCache:
    """What the Caller sees of the store: find a stored answer, remember a new one.

    `mode` is "use" (read and write), "off" (`--no-cache`: write only, so later runs still
    benefit) or "offline" (`--offline`: read only; a call not in the store is not made).
    """

    def __init__(
        self,
        store: CallStore | None,
        writer: StoreWriter | None,
        *,
        run_id: str,
        endpoint_of: Callable[[str], str],
        mode: str = "use",
        reader: StoreReader | None = None,
    ) -> None:
        self._store = store
        self._writer = writer
        self._reader = reader
        self.run_id = run_id
        self._endpoint_of = endpoint_of  # model -> the identity of the endpoint serving it
        self.mode = mode
        # A store that was empty at the start can only hold this run's own calls, which the
        # row that made them already has: skip the lookups, and their thread hops.
        self.reads = store is not None and mode != "off" and (not store.empty or mode == "offline")
        self.writes = writer is not None and mode != "offline"
        self._known: StoredKeys | None = None  # what the store held at the start, once read

    async def open(self) -> None:
        """Read which keys the store holds, when this run looks calls up (a worker thread)."""
        if self.reads and self._store is not None:
            self._known = await anyio.to_thread.run_sync(self._store.stored_keys)

    @property
    def offline(self) -> bool:
        return self.mode == "offline"

    def key(self, model: str, messages: list[Any], params: dict[str, Any]) -> bytes:
        return request_key(self._endpoint_of(model), model, messages, params)

    async def find(self, key: bytes) -> StoredCall | None:
        if not self.reads or self._store is None:
            return None
        if self._known is not None and not self._known.may_hold(key):
            return None
        if self._reader is not None:
            return await self._reader.find(key)
        return await anyio.to_thread.run_sync(self._store.lookup, key)

    async def remember(self, call: StoredCall) -> None:
        if self._writer is not None and self.writes:
            await self._writer.put(call)


async def _groups(receive: MemoryObjectReceiveStream[_Item]) -> AsyncIterator[list[_Item]]:
    """Whatever queued while the last group was handled, as one group: under load a trip to
    the worker thread serves many calls, when idle one call goes at once."""
    async with receive:
        async for first in receive:
            group = [first]
            while True:
                try:
                    group.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            yield group
