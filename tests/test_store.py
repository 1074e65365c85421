"""The call store's reader: lookups made in groups off the event loop, each answered alone."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from batchroute.store import CallStore, StoredCall, StoreReader, request_key

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
