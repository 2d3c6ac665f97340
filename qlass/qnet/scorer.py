"""``QNetScorer``: the QNet as a :class:`~qlass.qnet.base.ValueModel`, batched and cached.

Many episodes call :meth:`QNetScorer.score` at once. A :class:`~qlass._batching.MicroBatcher`
gathers their queries into one batch, which a worker thread then

1. renders each query (chat template of ``value_messages``) and looks it up in an LRU cache
   keyed by a hash of the rendered text (duplicates inside a batch are scored once);
2. tokenizes the misses, left-truncating to ``max_length``;
3. sorts them by length and cuts them into sub-batches bounded by ``max_batch`` items and a
   padded-token budget (length bucketing);
4. pads each sub-batch on the right to its longest sequence (never to ``max_length``) and
   runs one forward pass under ``torch.inference_mode``;
5. restores the callers' order.

Candidates of the same state (the M candidates of one step) share their history: with
``shared_prefix`` (the default) their common token prefix runs through the model once and
only each candidate's own tokens after it (:mod:`qlass.qnet.prefix`); where the prefix
cannot be shared (left truncation cut into it) they are scored as above, and counted.

Batched scores equal one-at-a-time scores up to float rounding: right padding with an
attention mask leaves every real token's positions and context unchanged, and so does a
cached prefix.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from qlass._batching import MicroBatcher
from qlass._torch import default_dtype, resolve_device
from qlass.errors import ValueModelError
from qlass.qnet.base import ValueQuery
from qlass.qnet.encoding import bucket_by_length, encode_texts, pad_right, render, text_key
from qlass.qnet.model import QNet, load_tokenizer
from qlass.qnet.prefix import PrefixForward, PrefixGroup, plan_shared_prefixes
from qlass.types import History

__all__ = ["QNetScorer", "ScorerStats"]

log = structlog.get_logger(__name__)


@dataclass
class ScorerStats:
    """Counters since start.

    ``queries`` asked, ``cache_hits`` answered from the cache, ``sequences`` scored by the
    model in ``forward_passes`` passes, ``tokens`` real tokens run and ``padded_tokens`` the
    tokens run including padding (their ratio is the padding overhead).
    ``shared_prefixes``: groups of candidates whose common prefix ran once, holding
    ``shared_sequences`` of the sequences; ``prefix_fallbacks``: groups of two or more
    candidates of one state scored the plain way because their prefix could not be shared.
    """

    queries: int = 0
    cache_hits: int = 0
    sequences: int = 0
    forward_passes: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    shared_prefixes: int = 0
    shared_sequences: int = 0
    prefix_fallbacks: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "queries": self.queries,
            "cache_hits": self.cache_hits,
            "sequences": self.sequences,
            "forward_passes": self.forward_passes,
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "shared_prefixes": self.shared_prefixes,
            "shared_sequences": self.shared_sequences,
            "prefix_fallbacks": self.prefix_fallbacks,
        }


class QNetScorer:
    """Scores value queries with a QNet; concurrent ``score`` calls share forward passes.

    Args:
        qnet: the model (moved to ``device`` here; put in eval mode).
        tokenizer: the checkpoint's tokenizer (its chat template renders the queries).
        device: ``'auto'``, ``'cpu'`` or ``'cuda[:n]'``.
        max_batch: queries gathered into one batch, and sequences per forward pass at most.
        token_budget: padded tokens per forward pass at most; bounds activation memory. The
            default is 4096 on CPU (small passes stay in cache, measured faster) and 32768
            on CUDA.
        max_padding: pad tokens per real token allowed in a forward pass (length bucketing).
        cache_size: rendered queries remembered (0 disables the cache).
        max_wait_s: how long the first query of a batch waits for others to join.
        shared_prefix: encode the prefix shared by the candidates of one state once (see
            :mod:`qlass.qnet.prefix`); off, or where the backbone fails its check, every
            sequence runs whole.
        cache_budget: attended tokens (candidates x (prefix + suffix)) per shared-prefix
            suffix pass at most; bounds the memory of the copied KV cache. Default: 8 x
            ``token_budget``.
    """

    def __init__(
        self,
        qnet: QNet,
        tokenizer: Any,
        *,
        device: str = "auto",
        max_batch: int = 32,
        token_budget: int | None = None,
        max_padding: float = 0.25,
        cache_size: int = 100_000,
        max_wait_s: float = 0.005,
        shared_prefix: bool = True,
        cache_budget: int | None = None,
    ) -> None:
        if max_batch < 1 or (token_budget is not None and token_budget < 1) or cache_size < 0:
            raise ValueError("max_batch and token_budget must be >= 1, cache_size >= 0")
        self.device = resolve_device(device, error=ValueModelError)
        if token_budget is None:
            token_budget = 32768 if self.device.type == "cuda" else 4096
        self.cache_budget = cache_budget if cache_budget is not None else 8 * token_budget
        self.qnet = qnet.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_length = qnet.max_length
        self.max_batch = max_batch
        self.token_budget = token_budget
        self.max_padding = max_padding
        self.cache_size = cache_size
        self.stats = ScorerStats()
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._cache: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache and stats; batches may come from threads
        self._prefix: PrefixForward | None = None
        if shared_prefix:
            prefix = PrefixForward(self.qnet, device=self.device, pad_id=self._pad_id)
            problem = prefix.probe()
            if problem is None:
                self._prefix = prefix
            else:
                log.warning("qnet shared-prefix scoring disabled", reason=problem)
        self._batcher: MicroBatcher[ValueQuery, float] = MicroBatcher(
            self.score_batch, max_batch=max_batch, max_wait_s=max_wait_s, name="qnet-scorer"
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: str = "auto", dtype: str = "auto", **options: Any
    ) -> QNetScorer:
        """Load a QNet checkpoint directory; ``dtype='auto'`` is bf16 on CUDA, fp32 on CPU."""
        resolved = resolve_device(device, error=ValueModelError)
        if dtype == "auto":
            torch_dtype = default_dtype(resolved)
        elif dtype in {"float32", "bfloat16", "float16"}:
            torch_dtype = getattr(torch, dtype)
        else:
            raise ValueModelError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16, float16")
        qnet = QNet.from_pretrained(directory, dtype=torch_dtype)
        tokenizer = load_tokenizer(Path(directory))
        return cls(qnet, tokenizer, device=str(resolved), **options)

    @classmethod
    async def aload(cls, directory: str | Path, **options: Any) -> QNetScorer:
        """:meth:`from_pretrained` in a worker thread, for use inside an event loop."""
        return await asyncio.to_thread(cls.from_pretrained, directory, **options)

    @property
    def name(self) -> str:
        return f"qnet:{self.qnet.spec.base_model or 'scratch'}"

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        """Scores for ``queries`` in order; batched with concurrent calls.

        Raises:
            ValueModelError: the forward pass failed, produced a non-finite value, or the
                scorer is closed.
        """
        if not queries:
            return []
        try:
            return await self._batcher.submit_many(queries)
        except ValueModelError:
            raise
        except RuntimeError as exc:
            raise ValueModelError(f"QNet scoring failed: {exc}") from exc

    def score_batch(self, queries: Sequence[ValueQuery]) -> list[float]:
        """Score ``queries`` synchronously in the calling thread (the batch function).

        Useful on its own in scripts and benchmarks; inside an event loop call ``score``.
        """
        window = self.qnet.spec.max_turns
        texts = [render(self.tokenizer, q.history, q.candidate_text, window) for q in queries]
        keys = [text_key(text) for text in texts]
        results: dict[str, float] = {}
        with self._lock:
            self.stats.queries += len(queries)
            if self.cache_size:
                for key in keys:
                    if key in self._cache:
                        self._cache.move_to_end(key)
                        results[key] = self._cache[key]
                        self.stats.cache_hits += 1
        todo: dict[str, tuple[str, History]] = {}
        for key, text, query in zip(keys, texts, queries, strict=True):
            if key not in results and key not in todo:
                todo[key] = (text, query.history)
        if todo:
            values = self._forward(
                [text for text, _ in todo.values()], [h for _, h in todo.values()]
            )
            results.update(zip(todo.keys(), values, strict=True))
            if self.cache_size:
                with self._lock:
                    for key, value in zip(todo.keys(), values, strict=True):
                        self._cache[key] = value
                        self._cache.move_to_end(key)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        return [results[key] for key in keys]

    @property
    def shares_prefixes(self) -> bool:
        """Whether shared-prefix scoring is on (asked for, and the backbone passed its check)."""
        return self._prefix is not None

    def _forward(self, texts: list[str], histories: list[History]) -> list[float]:
        try:
            encoded = encode_texts(self.tokenizer, texts, self.max_length)
        except ValueError as exc:
            raise ValueModelError(f"cannot tokenize a query: {exc}") from exc
        values: list[float] = [math.nan] * len(texts)
        plain = list(range(len(texts)))
        groups: list[PrefixGroup] = []
        fallbacks = 0
        if self._prefix is not None:
            groups, plain, fallbacks = plan_shared_prefixes(encoded, histories)
        passes = tokens = padded = 0
        try:
            with torch.inference_mode():
                if groups:
                    assert self._prefix is not None
                    counts = self._prefix.values(
                        groups,
                        max_items=self.max_batch,
                        token_budget=self.token_budget,
                        cache_budget=self.cache_budget,
                        max_padding=self.max_padding,
                    )
                    for index, value in counts.values.items():
                        values[index] = value
                    passes, tokens, padded = counts.passes, counts.tokens, counts.padded_tokens
                buckets = bucket_by_length(
                    [len(encoded[i]) for i in plain],
                    max_items=self.max_batch,
                    token_budget=self.token_budget,
                    max_padding=self.max_padding,
                )
                for bucket in buckets:
                    group = [plain[i] for i in bucket]
                    input_ids, mask = pad_right([encoded[i] for i in group], self._pad_id)
                    tokens += int(mask.sum())
                    padded += mask.numel()
                    out = self.qnet(input_ids.to(self.device), mask.to(self.device)).value
                    assert out is not None
                    for index, value in zip(group, out.tolist(), strict=True):
                        values[index] = float(value)
                passes += len(buckets)
        except RuntimeError as exc:  # includes torch.cuda.OutOfMemoryError
            raise ValueModelError(f"QNet forward pass failed: {exc}") from exc
        if not all(math.isfinite(v) for v in values):
            raise ValueModelError("the QNet produced a non-finite score (NaN or inf)")
        shared = sum(len(g.members) for g in groups)
        with self._lock:
            self.stats.sequences += len(texts)
            self.stats.forward_passes += passes
            self.stats.tokens += tokens
            self.stats.padded_tokens += padded
            self.stats.shared_prefixes += len(groups)
            self.stats.shared_sequences += shared
            self.stats.prefix_fallbacks += fallbacks
        log.debug(
            "qnet batch",
            sequences=len(texts),
            shared=shared,
            fallbacks=fallbacks,
            passes=passes,
            tokens=tokens,
            padded=padded,
        )
        return values

    async def aclose(self) -> None:
        """Stop the batching worker. Idempotent."""
        await self._batcher.aclose()

    async def __aenter__(self) -> QNetScorer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
