"""The call store's reader: lookups made in groups off the event loop, each answered alone."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from batchroute.store import CallCache, CallStore, StoredCall, StoreReader, request_key

pytestmark = pytest.mark.timeout(30)


def _call(key: bytes, answer: str) -> StoredCall:
    return StoredCall(
        key=key,
        model="m",
        answer=answer,
        prompt_tokens=3,
        completion_tokens=1,
        charge_usd=0.001,
        cost_source="header",
        latency_s=0.01,
        request_id=None,
        run_id="earlier",
    )


def _key(i: int) -> bytes:
    return request_key("e", "m", [{"role": "user", "content": f"q{i}"}], {})


def test_lookup_many_returns_the_keys_found(tmp_path: Path) -> None:
    store = CallStore(tmp_path / "store.sqlite")
    store.put_many([_call(_key(i), f"a{i}") for i in range(0, 10, 2)])
    found = store.lookup_many([_key(i) for i in range(10)])
    assert {call.answer for call in found.values()} == {"a0", "a2", "a4", "a6", "a8"}
    assert found[_key(4)] == store.lookup(_key(4))
    store.close()


def test_reader_answers_each_of_many_concurrent_lookups(tmp_path: Path) -> None:
    store = CallStore(tmp_path / "store.sqlite")
    store.put_many([_call(_key(i), f"a{i}") for i in range(0, 200, 3)])
    trips: list[int] = []
    lookup_many = store.lookup_many

    def counted(keys: list[bytes]) -> dict[bytes, StoredCall]:
        trips.append(len(keys))
        return lookup_many(keys)

    store.lookup_many = counted  # type: ignore[method-assign]
    answers: dict[int, str | None] = {}

    async def scenario() -> None:
        reader = StoreReader(store)

        async def one(i: int) -> None:
            found = await reader.find(_key(i))
            answers[i] = None if found is None else found.answer

        async with anyio.create_task_group() as outer:
            outer.start_soon(reader.run)
            async with anyio.create_task_group() as rows:
                for i in range(200):
                    rows.start_soon(one, i)
            reader.close()

    anyio.run(scenario)
    assert answers == {i: (f"a{i}" if i % 3 == 0 else None) for i in range(200)}
    assert sum(trips) == 200
    assert len(trips) < 200  # grouped: lookups that queued together took one trip
    store.close()


def test_stored_keys_tell_which_keys_may_be_in_the_store(tmp_path: Path) -> None:
    store = CallStore(tmp_path / "store.sqlite")
    store.put_many([_call(_key(i), f"a{i}") for i in range(0, 1000, 2)])
    known = store.stored_keys()
    assert len(known) == 500
    assert all(known.may_hold(_key(i)) for i in range(0, 1000, 2))  # never a false "no"
    assert sum(known.may_hold(_key(i)) for i in range(1, 1000, 2)) == 0  # 8-byte prefixes
    store.close()


def test_a_run_looks_up_only_what_the_store_held_when_it_started(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    earlier_run = CallStore(path)
    earlier_run.put_many([_call(_key(1), "earlier")])
    earlier_run.close()
    store = CallStore(path)  # reopened: not empty at the start, so the run reads it
    looked_up: list[bytes] = []
    lookup = store.lookup

    def counted(key: bytes) -> StoredCall | None:
        looked_up.append(key)
        return lookup(key)

    store.lookup = counted  # type: ignore[method-assign]

    async def scenario() -> tuple[StoredCall | None, StoredCall | None]:
        cache = CallCache(store, None, run_id="now", endpoint_of=lambda model: "e")
        await cache.open()
        store.put_many([_call(_key(2), "this run's own")])  # stored after the start
        return await cache.find(_key(1)), await cache.find(_key(2))

    earlier, own = anyio.run(scenario)
    assert earlier is not None and earlier.answer == "earlier"
    assert own is None and looked_up == [_key(1)]  # the other key never left the loop
    store.close()


def test_a_version_2_store_is_migrated_in_place_and_keeps_its_answers(tmp_path: Path) -> None:
    # A store written before tool calls were kept: its table has no tool_calls column.
    path = tmp_path / "store.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '2');
            CREATE TABLE calls (
                key BLOB PRIMARY KEY, model TEXT NOT NULL, answer TEXT NOT NULL,
                prompt_tokens INTEGER, completion_tokens INTEGER, charge_usd REAL,
                cost_source TEXT, latency_s REAL, request_id TEXT, run_id TEXT NOT NULL,
                created_at REAL NOT NULL, mean_logprob REAL
            );
            """
        )
        db.execute(
            "INSERT INTO calls VALUES (?, 'm', 'old answer', 3, 1, 0.001, 'header', 0.01,"
            " NULL, 'earlier', 0, NULL)",
            (_key(1),),
        )
    store = CallStore(path)
    old = store.lookup(_key(1))
    assert old is not None and old.answer == "old answer" and old.tool_calls is None
    store.put_many([replace(_call(_key(2), "new"), tool_calls='[{"type": "function"}]')])
    assert store.lookup(_key(2)) == replace(
        _call(_key(2), "new"), tool_calls='[{"type": "function"}]'
    )
    store.close()
    with sqlite3.connect(path) as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == ("3",)
    CallStore(path).close()  # and it opens again as the current version
