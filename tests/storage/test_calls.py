"""The policy-call cache: round trip, first write wins, secrets never stored, protocol shape."""

from __future__ import annotations

from sqlalchemy import select

from qlass.backends.base import CallCache
from qlass.storage import TreeStore
from qlass.storage.models import PolicyCall

RESPONSE = {
    "choices": [{"text": "Thought: go\nAction: move north"}],
    "usage": {"prompt_tokens": 321, "completion_tokens": 12},
}


async def test_round_trip_and_persistence(store: TreeStore, store_url: str) -> None:
    assert isinstance(store.call_cache, CallCache)
    key = "a" * 64
    assert await store.call_cache.get(key) is None
    await store.call_cache.put(key, RESPONSE, model="hosted_vllm/tiny", request={"seed": 3})
    assert await store.call_cache.get(key) == RESPONSE
    await store.aclose()
    async with await TreeStore.open(store_url) as reopened:  # committed, survives a restart
        assert await reopened.call_cache.get(key) == RESPONSE
        assert await reopened.call_cache.count() == 1


async def test_first_response_wins(store: TreeStore) -> None:
    await store.call_cache.put("k", {"text": "first"})
    await store.call_cache.put("k", {"text": "second"})
    assert await store.call_cache.get("k") == {"text": "first"}
    assert await store.call_cache.count() == 1


async def test_credentials_never_reach_the_table(store: TreeStore) -> None:
    request = {
        "model": "openai/gpt-4o",
        "api_key": "sk-live-123456",
        "extra_headers": {"Authorization": "Bearer sk-live-123456", "X-Trace": "t1"},
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 64,
    }
    await store.call_cache.put("k2", {"text": "ok"}, model="openai/gpt-4o", request=request)
    async with store._db.read() as session:
        row = (await session.execute(select(PolicyCall).where(PolicyCall.key == "k2"))).scalar_one()
        stored_request, model = row.request, row.model
    assert model == "openai/gpt-4o"
    assert "sk-live-123456" not in repr(stored_request)
    assert stored_request == {
        "model": "openai/gpt-4o",
        "extra_headers": {"X-Trace": "t1"},
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 64,
    }
