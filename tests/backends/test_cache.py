"""The request cache: per-sample keys, partial hits, no caching without a seed."""

from __future__ import annotations

import pytest

from qlass.backends.cache import CachedPolicy, InMemoryCallCache, cache_key, sample_seed
from qlass.backends.scripted import ScriptedPolicy
from qlass.errors import PolicyCallError
from qlass.storage import TreeStore
from qlass.types import ChatMessage

MESSAGES: list[ChatMessage] = [{"role": "user", "content": "Observation: a kitchen"}]
TEXTS = [f"Action: act {i}" for i in range(50)]


def key(**overrides: object) -> str:
    params: dict[str, object] = {
        "temperature": 0.7,
        "max_tokens": 64,
        "stop": None,
        "seed": 1,
        "sample_index": 0,
    }
    params.update(overrides)
    model = str(params.pop("model", "m"))
    messages = params.pop("messages", MESSAGES)
    return cache_key(model, messages, **params)  # type: ignore[arg-type]


def test_cache_key_is_stable_and_covers_every_parameter() -> None:
    # A golden value: changing the key format silently invalidates every stored cache.
    assert key() == "74ca0a0591e2eb2a4539a5a874de98313ec340008ccf6a598f4f890678ccc5eb"
    variants = [
        key(model="other"),
        key(messages=[{"role": "user", "content": "Observation: a hall"}]),
        key(temperature=0.8),
        key(max_tokens=65),
        key(stop=["\n"]),
        key(seed=2),
        key(sample_index=1),
    ]
    assert len({key(), *variants}) == 1 + len(variants)
    assert key(temperature=1) == key(temperature=1.0)
    assert key(stop=None) == key(stop=[])


def test_sample_seed_keeps_sample_zero_and_spreads_the_rest() -> None:
    assert sample_seed(1234, 0) == 1234
    seeds = {sample_seed(1234, i) for i in range(100)}
    assert len(seeds) == 100
    assert all(0 <= s < 2**31 for s in seeds)
    assert sample_seed(1234, 5) == sample_seed(1234, 5)


async def test_seeded_call_is_answered_from_the_cache() -> None:
    inner = ScriptedPolicy(TEXTS)
    cache = InMemoryCallCache()
    policy = CachedPolicy(inner, cache)
    first = await policy.sample(MESSAGES, n=3, seed=9)
    second = await policy.sample(MESSAGES, n=3, seed=9)
    assert len(inner.calls) == 1
    assert [c.text for c in second] == [c.text for c in first]
    assert [c.usage for c in second] == [c.usage for c in first]
    assert not any(c.cached for c in first)
    assert all(c.cached for c in second)
    assert [c.action for c in second] == [c.action for c in first]
    assert len(cache) == 3


async def test_partial_hit_asks_only_for_missing_samples_with_their_seeds() -> None:
    inner = ScriptedPolicy(TEXTS)
    policy = CachedPolicy(inner, InMemoryCallCache())
    two = await policy.sample(MESSAGES, n=2, seed=9)
    four = await policy.sample(MESSAGES, n=4, seed=9)
    assert [c.cached for c in four] == [True, True, False, False]
    assert [c.text for c in four[:2]] == [c.text for c in two]
    later = inner.calls[1:]
    assert [(c.n, c.seed) for c in later] == [(1, sample_seed(9, 2)), (1, sample_seed(9, 3))]
    fresh = await ScriptedPolicy(TEXTS).sample(MESSAGES, n=4, seed=9)
    assert [c.text for c in four] == [c.text for c in fresh]  # the seeding rule holds


async def test_unseeded_calls_bypass_the_cache() -> None:
    inner = ScriptedPolicy(TEXTS)
    cache = InMemoryCallCache()
    policy = CachedPolicy(inner, cache)
    await policy.sample(MESSAGES, n=2)
    await policy.sample(MESSAGES, n=2)
    assert len(inner.calls) == 2
    assert cache.gets == 0 and len(cache) == 0


async def test_different_parameters_are_different_entries() -> None:
    inner = ScriptedPolicy(TEXTS)
    policy = CachedPolicy(inner, InMemoryCallCache())
    await policy.sample(MESSAGES, seed=1, temperature=0.7)
    await policy.sample(MESSAGES, seed=1, temperature=0.9)
    await policy.sample(MESSAGES, seed=1, temperature=0.7, max_tokens=10)
    assert len(inner.calls) == 3


async def test_a_failed_call_stores_nothing() -> None:
    cache = InMemoryCallCache()
    policy = CachedPolicy(ScriptedPolicy(TEXTS, errors=[PolicyCallError("boom")]), cache)
    with pytest.raises(PolicyCallError):
        await policy.sample(MESSAGES, n=2, seed=4)
    assert len(cache) == 0
    assert len(await policy.sample(MESSAGES, n=2, seed=4)) == 2


async def test_parse_errors_are_cached_as_what_the_model_said() -> None:
    cache = InMemoryCallCache()
    policy = CachedPolicy(ScriptedPolicy(["no action here"]), cache)
    first = await policy.sample(MESSAGES, seed=1)
    again = await policy.sample(MESSAGES, seed=1)
    assert first[0].action is None and again[0].action is None
    assert again[0].parse_error == first[0].parse_error
    assert cache.records()[0]["text"] == "no action here"


async def test_the_samples_of_one_call_are_stored_in_one_transaction(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With the tree store's cache, a kill cannot store one sample of a call and not the
    other (the resume then asked for the missing one alone and charged its whole prompt)."""
    async with await TreeStore.open(tmp_path / "c.db") as store:
        writes: list[int] = []
        cache = store.call_cache
        put_many = cache.put_many

        async def recording_put_many(items):  # type: ignore[no-untyped-def]
            writes.append(len(items))
            await put_many(items)

        cache.put_many = recording_put_many  # type: ignore[method-assign]
        policy = CachedPolicy(ScriptedPolicy(TEXTS), cache)
        first = await policy.sample(MESSAGES, n=3, seed=9)
        again = await CachedPolicy(ScriptedPolicy(["Action: other"]), cache).sample(
            MESSAGES, n=3, seed=9
        )
        assert writes == [3]  # one write of the whole call
        assert [c.text for c in again] == [c.text for c in first] and all(c.cached for c in again)
        await cache.put_many([(key(), {"text": "Action: x"})])  # a present key is kept
        assert await cache.count() == 4
        await cache.put_many([(key(), {"text": "Action: y"})])
        assert (await cache.get(key())) == {"text": "Action: x"}
