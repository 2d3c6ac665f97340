"""The request cache: answer a seeded policy call from a :class:`~qlass.backends.base.CallCache`.

A sampled completion is stored under a key that hashes everything that determines it: the
model, the messages, the sampling parameters, the call's seed and the sample's index
(:func:`cache_key`). On a rerun or a resume, the same call is answered from the store, so an
interrupted run never pays for a completion twice. Calls without a seed are never cached
(their result is not meant to be reproducible).

Keys are per sample: a call with ``n=4`` whose first two samples are stored asks the backend
for the two missing ones only. The backends follow one seeding rule that makes this work
(:func:`sample_seed`): sample ``i`` of a call with seed ``s`` is the sample ``0`` of the same
call with ``n=1`` and seed ``sample_seed(s, i)``, where ``sample_seed(s, 0) == s``. The
local transformers and scripted backends honour it exactly; the LiteLLM backend honours it
when it makes one request per sample, while a provider's native ``n`` returns ``n`` samples
of one request seeded with ``s`` (see docs/backends.md).

No API key or provider credential is part of a key or of a stored response.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import structlog

from qlass._seeding import derive_seed
from qlass.backends.base import CallCache, Policy
from qlass.backends.wrappers import PolicyWrapper
from qlass.parsing import candidate_from_text
from qlass.types import Candidate, ChatMessage, Usage

__all__ = ["CachedPolicy", "InMemoryCallCache", "cache_key", "sample_seed"]

log = structlog.get_logger(__name__)


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a call seeded with ``seed`` (``seed`` itself for 0)."""
    return seed if index == 0 else derive_seed(seed, "sample", index)


def cache_key(
    model: str,
    messages: Sequence[ChatMessage],
    *,
    temperature: float,
    max_tokens: int,
    stop: Sequence[str] | None,
    seed: int,
    sample_index: int,
) -> str:
    """sha256 (hex) over a canonical JSON of everything that determines one sample."""
    payload = {
        "model": model,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "temperature": float(temperature),
        "max_tokens": int(max_tokens),
        "stop": list(stop or ()),
        "seed": int(seed),
        "sample_index": int(sample_index),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _record(candidate: Candidate, model: str) -> dict[str, Any]:
    usage = candidate.usage
    return {
        "model": model,
        "text": candidate.text,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost_usd": usage.cost_usd,
    }


def _from_record(record: dict[str, Any]) -> Candidate:
    usage = Usage(
        int(record.get("prompt_tokens", 0)),
        int(record.get("completion_tokens", 0)),
        float(record.get("cost_usd", 0.0)),
    )
    return candidate_from_text(str(record["text"]), usage, cached=True)


class InMemoryCallCache:
    """A :class:`CallCache` in a dict: for tests and for embedding without a database."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}
        self.gets = 0
        self.hits = 0

    async def get(self, key: str) -> dict[str, Any] | None:
        self.gets += 1
        record = self._data.get(key)
        if record is not None:
            self.hits += 1
            return dict(record)
        return None

    async def put(self, key: str, response: dict[str, Any]) -> None:
        self._data[key] = dict(response)

    async def put_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        for key, response in items:
            self._data[key] = dict(response)

    def __len__(self) -> int:
        return len(self._data)

    def records(self) -> list[dict[str, Any]]:
        """Copies of every stored response (for inspection in tests)."""
        return [dict(r) for r in self._data.values()]


class CachedPolicy(PolicyWrapper):
    """Wrap a policy so that seeded samples are read from and written to ``cache``.

    Cached candidates come back with ``cached=True`` and the usage of the call that first
    produced them, so accounting can count them apart from fresh ones.
    """

    def __init__(self, policy: Policy, cache: CallCache) -> None:
        super().__init__(policy)
        self.cache = cache

    async def sample(
        self,
        messages: Sequence[ChatMessage],
        *,
        n: int = 1,
        temperature: float = 0.7,
        max_tokens: int = 256,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[Candidate]:
        """Return ``n`` candidates, asking the wrapped policy only for those not stored."""
        if seed is None:
            return await self.inner.sample(
                messages, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop
            )
        model = self.model_name
        keys = [
            cache_key(
                model,
                messages,
                temperature=temperature,
                max_tokens=max_tokens,
                stop=stop,
                seed=seed,
                sample_index=i,
            )
            for i in range(n)
        ]
        stored = [await self.cache.get(key) for key in keys]
        missing = [i for i, record in enumerate(stored) if record is None]
        fresh: dict[int, Candidate] = {}
        if len(missing) == n:
            got = await self.inner.sample(
                messages, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed
            )
            fresh = dict(enumerate(got))
        elif missing:
            # Ask for each missing sample on its own, with the seed it has in a full call.
            parts = await asyncio.gather(
                *(
                    self.inner.sample(
                        messages,
                        n=1,
                        temperature=temperature,
                        max_tokens=max_tokens,
                        stop=stop,
                        seed=sample_seed(seed, i),
                    )
                    for i in missing
                )
            )
            fresh = {i: part[0] for i, part in zip(missing, parts, strict=True)}
        items = [(keys[i], _record(candidate, model)) for i, candidate in fresh.items()]
        put_many = getattr(self.cache, "put_many", None)
        if put_many is not None and items:  # one transaction: a kill leaves all or none
            await put_many(items)
        else:
            for key, record in items:
                await self.cache.put(key, record)
        hits = n - len(missing)
        if hits:
            log.debug("policy.cache", model=model, n=n, cached=hits, fresh=len(missing))
        return [
            fresh[i] if record is None else _from_record(record) for i, record in enumerate(stored)
        ]
