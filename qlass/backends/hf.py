"""Local transformers backend: a causal LM on disk, with concurrent calls batched together.

Many episodes each ask for one turn at a time; :class:`HFPolicy` gathers the requests that
arrive together (a :class:`~qlass._batching.MicroBatcher`: a short wait, a maximum batch)
and decodes them as one left-padded batch in a worker thread, on CPU or GPU.

Generation is an own decoding loop over the model's KV cache rather than ``generate()``, so
that requests in one batch may differ in temperature, ``max_tokens``, stop strings and seed,
and so that a seeded request produces the same text whatever else is in its batch: every
row has its own ``torch.Generator`` seeded from the request's per-sample seed
(:func:`~qlass.backends.cache.sample_seed`), its own stopping rule, and explicit position
ids that ignore the left padding. Temperature 0 is greedy. Identical prompts in a batch
(the ``n`` samples of one call) are prefilled once; prompts of similar length are prefilled
together (padding a 300-token prompt to 700 wastes more than batching gains on CPU) and
their caches joined (:mod:`qlass.backends._prefill`); rows that finish leave the batch.

Prompts that do not fit the context: with ``trim=True`` (the default for :meth:`sample`)
the oldest turns are dropped (:mod:`qlass.backends._prompt_fit`) and
:attr:`Generation.dropped_messages` says how many went; otherwise, or when even that does
not fit, the call fails with :class:`PromptTooLongError`. ``top_p`` and ``logprobs`` are
described in :mod:`qlass.backends._sampling`.

``model_dir`` is a model folder or a LoRA adapter folder in PEFT's layout (BC with
``bc.lora``): the adapter's ``base_model_name_or_path`` names its base, which is loaded with
the adapter merged in (that needs peft, ``qlass[peft]``).

This module needs torch and transformers only (GPU boxes may have nothing else).
"""

from __future__ import annotations

import inspect
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer

from qlass._batching import BatchStats, MicroBatcher
from qlass._log import adopt_library_logging
from qlass._lora import is_adapter_dir, load_model
from qlass._torch import default_dtype, dtype_argument, resolve_device
from qlass.backends._prefill import prefill
from qlass.backends._prompt_fit import fit_prompt
from qlass.backends._sampling import (
    RawLogprob,
    TokenLogprob,
    logprob_entries,
    sample_token,
    token_logprobs,
)
from qlass.backends.cache import sample_seed
from qlass.errors import ConfigError, MissingDataError, PolicyCallError, PromptTooLongError
from qlass.parsing import candidate_from_text
from qlass.types import Candidate, ChatMessage, Usage

__all__ = ["Generation", "HFPolicy", "PromptTooLongError", "TokenLogprob"]

log = structlog.get_logger(__name__)

# transformers attached its own log handler on import: hand its records to qlass's.
adopt_library_logging()


@dataclass(frozen=True, slots=True)
class Generation:
    """One generated completion with its real token counts.

    ``finish_reason`` is ``"stop"`` (end-of-turn token or a stop string) or ``"length"``.
    ``dropped_messages`` counts the messages trimmed off the prompt to fit the context;
    ``logprobs`` is set when the request asked for them.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    dropped_messages: int = 0
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True, slots=True)
class _Request:
    messages: tuple[ChatMessage, ...]
    temperature: float
    max_tokens: int
    stop: tuple[str, ...]
    seed: int
    top_p: float = 1.0
    logprobs: int | None = None  # None: none; k: the chosen token and its k best rivals
    trim: bool = True


class HFPolicy:
    """A transformers causal LM with a chat template, sampled in micro-batches.

    Loading reads the model from disk: construct it outside the event loop (or in
    ``asyncio.to_thread``). ``max_batch`` bounds the rows of one batch (a call with ``n``
    samples is ``n`` rows), ``max_wait_s`` is how long the first request waits for others.
    ``max_context`` caps prompt + completion tokens (default: the model's positions).
    ``prefill_tokens`` bounds the padded tokens prefilled together (default 2048 on CPU,
    16384 on GPU); ``dtype`` defaults to bf16 on GPU and fp32 on CPU.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        model_name: str | None = None,
        max_context: int | None = None,
        prefill_tokens: int | None = None,
    ) -> None:
        path = Path(model_dir)
        if not (path / "config.json").is_file() and not is_adapter_dir(path):
            raise MissingDataError(
                f"no model at {path} (neither config.json nor a LoRA adapter_config.json)"
            )
        self.device = resolve_device(device, error=ConfigError, field="policy.device")
        if dtype is None:
            dtype = default_dtype(self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            if not getattr(self.tokenizer, "chat_template", None):
                raise ConfigError(f"the tokenizer in {path} has no chat template")
            # A LoRA adapter folder: its base model with the adapter merged in (needs peft).
            model: Any = load_model(AutoModelForCausalLM, path, **dtype_argument(dtype))
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            # A corrupt config.json, tokenizer or weights file: one line, not a traceback.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MissingDataError(f"cannot load the model in {path}: {reason}") from exc
        self.model: Any = model.to(self.device).eval()
        config = self.model.config
        positions = getattr(config, "max_position_embeddings", None) or 2048
        self.max_context = min(max_context or positions, positions)
        pad, eos = self._token_id("pad"), self._token_id("eos")
        self._pad_id = pad if pad is not None else eos if eos is not None else 0
        self._eos_ids = self._end_ids()
        params = inspect.signature(type(self.model).forward).parameters
        # transformers 5 renamed the KV-cache argument from past_key_values to cache.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        keep_arg = "logits_to_keep" if "logits_to_keep" in params else None
        self._extra: dict[str, Any] = {keep_arg: 1} if keep_arg else {}
        if prefill_tokens is None:
            prefill_tokens = 16384 if self.device.type == "cuda" else 2048
        self.prefill_tokens = prefill_tokens
        # Group-wise prefill copies plain per-layer caches together; models with sliding
        # windows or other layer kinds are prefilled as one padded batch instead.
        layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
        self._mergeable_cache = not getattr(config, "sliding_window", None) and layer_types == {
            "full_attention"
        }
        self._model_name = model_name or path.name
        self._rng = random.SystemRandom()
        self._batcher: MicroBatcher[_Request, Generation | Exception] = MicroBatcher(
            self._run_batch, max_batch=max_batch, max_wait_s=max_wait_s, name="hf-policy"
        )
        log.info(
            "policy.loaded",
            model=self._model_name,
            device=str(self.device),
            dtype=str(dtype),
            max_context=self.max_context,
            max_batch=max_batch,
        )

    def _token_id(self, kind: str) -> int | None:
        value = getattr(self.tokenizer, f"{kind}_token_id", None)
        return int(value) if value is not None else None

    def _end_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        eos = self._token_id("eos")
        if eos is not None:
            ids.add(eos)
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(int(x) for x in configured)
        return frozenset(ids)

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def stats(self) -> BatchStats:
        """Batch counters (batches, rows, sizes) of the micro-batcher."""
        return self._batcher.stats

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of the prompt the model sees for ``messages`` (before any truncation)."""
        return len(self._encode(messages))

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        n: int = 1,
        temperature: float = 0.7,
        max_tokens: int = 256,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        top_p: float = 1.0,
        logprobs: int | None = None,
        trim: bool = True,
    ) -> list[Generation]:
        """Return ``n`` raw completions (what the OpenAI-compatible server sends back).

        ``top_p``, ``logprobs`` and ``trim`` are described in the module docstring.
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 <= top_p <= 1:
            raise ValueError("top_p must be in [0, 1]")
        if logprobs is not None and logprobs < 0:
            raise ValueError("logprobs must be >= 0")
        seeds = [
            sample_seed(seed, i) if seed is not None else self._rng.getrandbits(31)
            for i in range(n)
        ]
        frozen = tuple(ChatMessage(role=m["role"], content=m["content"]) for m in messages)
        stops = tuple(s for s in stop or () if s)
        requests = [
            _Request(
                frozen,
                float(temperature),
                int(max_tokens),
                stops,
                s,
                top_p=float(top_p),
                logprobs=logprobs,
                trim=trim,
            )
            for s in seeds
        ]
        results = await self._batcher.submit_many(requests)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return [r for r in results if isinstance(r, Generation)]

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
        """Return ``n`` candidates; the prompt's tokens are counted once, on the first."""
        started = time.perf_counter()
        generations = await self.generate(
            messages, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed
        )
        candidates = []
        for i, gen in enumerate(generations):
            usage = Usage(gen.prompt_tokens if i == 0 else 0, gen.completion_tokens)
            candidates.append(candidate_from_text(gen.text, usage))
        log.debug(
            "policy.call",
            model=self._model_name,
            n=n,
            prompt_tokens=generations[0].prompt_tokens,
            completion_tokens=sum(g.completion_tokens for g in generations),
            latency_s=round(time.perf_counter() - started, 3),
            cached=False,
        )
        return candidates

    async def aclose(self) -> None:
        await self._batcher.aclose()

    # -- worker thread ------------------------------------------------------------------

    def _encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in messages],
            add_generation_prompt=True,
            tokenize=False,
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompt_ids(self, request: _Request) -> tuple[list[int], int]:
        """The prompt's token ids and how many messages were dropped to fit the context."""
        fitted = fit_prompt(
            request.messages,
            self._encode,
            max_context=self.max_context,
            max_tokens=request.max_tokens,
            trim=request.trim,
        )
        if fitted.dropped_messages:
            log.debug(
                "policy.truncated",
                model=self._model_name,
                tokens=fitted.original_tokens,
                kept=len(fitted.ids),
                dropped_messages=fitted.dropped_messages,
            )
        return fitted.ids, fitted.dropped_messages

    def _run_batch(self, requests: list[_Request]) -> list[Generation | Exception]:
        outcomes: list[Generation | Exception | None] = [None] * len(requests)
        encoded: dict[str, tuple[list[int], int] | Exception] = {}
        rows: list[int] = []
        prompts: list[list[int]] = []
        dropped: list[int] = []
        for i, request in enumerate(requests):
            memo = json.dumps([request.messages, request.max_tokens, request.trim])
            if memo not in encoded:
                try:
                    encoded[memo] = self._prompt_ids(request)
                except PolicyCallError as exc:
                    encoded[memo] = exc
            prompt = encoded[memo]
            if isinstance(prompt, Exception):
                outcomes[i] = prompt
            else:
                rows.append(i)
                prompts.append(prompt[0])
                dropped.append(prompt[1])
        if rows:
            try:
                generated = self._decode([requests[i] for i in rows], prompts, dropped)
            except (RuntimeError, ValueError, IndexError) as exc:
                error = PolicyCallError(f"local generation failed: {exc}")
                error.__cause__ = exc
                generated = [error] * len(rows)
            for i, gen in zip(rows, generated, strict=True):
                outcomes[i] = gen
        return [o if o is not None else PolicyCallError("internal: no outcome") for o in outcomes]

    @torch.inference_mode()
    def _decode(
        self, requests: list[_Request], prompts: list[list[int]], dropped: list[int]
    ) -> list[Generation | Exception]:
        device, model = self.device, self.model
        extra = self._extra
        # Identical prompts (the n samples of one call) are prefilled once, then shared.
        distinct: dict[tuple[int, ...], int] = {}
        owner = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
        cache, logits, attention = prefill(
            list(distinct),
            self._forward_padded,
            device=device,
            max_padded_tokens=self.prefill_tokens if self._mergeable_cache else None,
        )
        index = torch.tensor(owner, dtype=torch.long, device=device)
        if len(distinct) < len(requests):
            cache.reorder_cache(index)
        logits = logits.index_select(0, index)
        attention = attention.index_select(0, index)
        position = attention.sum(-1, keepdim=True) - 1
        generators = [
            torch.Generator(device=device).manual_seed(r.seed) if r.temperature > 0 else None
            for r in requests
        ]
        tokens: list[list[int]] = [[] for _ in requests]
        # Per row that asked: (token, logprob, top alternatives) of each generated token.
        logprobs: list[list[RawLogprob]] = [[] for _ in requests]
        finish: list[str | None] = [None] * len(requests)
        texts: list[str | None] = [None] * len(requests)
        active = list(range(len(requests)))  # the request of each row of the batch
        while active:
            scores = logits.float()
            greedy = scores.argmax(dim=-1).tolist()
            kept: list[int] = []  # rows still decoding
            chosen: list[int] = []
            for slot, row in enumerate(active):
                request, generator = requests[row], generators[row]
                token = (
                    int(greedy[slot])
                    if generator is None
                    else sample_token(scores[slot], request.temperature, request.top_p, generator)
                )
                if request.logprobs is not None:
                    logprobs[row].append(token_logprobs(scores[slot], token, request.logprobs))
                tokens[row].append(token)
                finish[row], texts[row] = self._check_stop(request, tokens[row])
                if finish[row] is None:
                    kept.append(slot)
                    chosen.append(token)
            if not kept:
                break
            if len(kept) < len(active):  # finished rows leave the batch
                keep = torch.tensor(kept, dtype=torch.long, device=device)
                cache.reorder_cache(keep)
                attention, position = (
                    attention.index_select(0, keep),
                    position.index_select(0, keep),
                )
                active = [active[slot] for slot in kept]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=-1)
            position = position + 1
            out = model(
                input_ids=torch.tensor(chosen, dtype=torch.long, device=device)[:, None],
                attention_mask=attention,
                position_ids=position,
                use_cache=True,
                **{self._cache_arg: cache},
                **extra,
            )
            cache = getattr(out, self._cache_arg)
            logits = out.logits[:, -1, :]
        results: list[Generation | Exception] = []
        for row, prompt in enumerate(prompts):
            text = texts[row]
            if text is None:
                text = self._text(tokens[row])
            results.append(
                Generation(
                    text,
                    len(prompt),
                    len(tokens[row]),
                    finish[row] or "length",
                    dropped_messages=dropped[row],
                    logprobs=logprob_entries(
                        logprobs[row],
                        text,
                        end_ids=self._eos_ids,
                        decode=self._text,
                        piece=self._piece,
                    )
                    if requests[row].logprobs is not None
                    else None,
                )
            )
        return results

    def _piece(self, token: int) -> str:
        # Decoded as the text is: a special token the text leaves out is an empty string.
        return str(self.tokenizer.decode([token], skip_special_tokens=True))

    def _forward_padded(self, prompts: Sequence[Sequence[int]]) -> tuple[Any, torch.Tensor]:
        """Prefill left-padded ``prompts`` as one batch: (KV cache, last-position logits)."""
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[row, width - len(prompt) :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            **self._extra,
        )
        return getattr(out, self._cache_arg), out.logits[:, -1, :]

    def _text(self, tokens: list[int]) -> str:
        kept = [t for t in tokens if t not in self._eos_ids]
        return str(self.tokenizer.decode(kept, skip_special_tokens=True))

    def _check_stop(self, request: _Request, tokens: list[int]) -> tuple[str | None, str | None]:
        """(finish reason, final text) once the row is finished, else (None, None)."""
        if tokens[-1] in self._eos_ids:
            return "stop", self._text(tokens)
        if request.stop:
            text = self._text(tokens)
            cuts = [text.index(s) for s in request.stop if s in text]
            if cuts:
                return "stop", text[: min(cuts)]
        if len(tokens) >= request.max_tokens:
            return "length", None
        return None, None
