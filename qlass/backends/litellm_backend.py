"""LiteLLM backend: any chat model LiteLLM can reach, from a local vLLM server to GPT-4o.

The model string picks the provider (``hosted_vllm/<name>`` with ``api_base`` for a vLLM or
``qlass serve`` server, ``openai/gpt-4o``, ``anthropic/...``). Several ``api_base`` values
(replicas serving one model) go through LiteLLM's ``Router``.

This module makes one attempt per call and translates every failure into
:class:`~qlass.errors.PolicyCallError` or :class:`~qlass.errors.PolicyTimeoutError` (the
original kept as ``__cause__``). Retries, concurrency and rate limits are the wrappers' job
(:mod:`qlass.backends.wrappers`), driven by this backend's hooks; LiteLLM's and the OpenAI
SDK's own retries are switched off so that the two never multiply.

``n`` samples: providers that implement ``n`` (OpenAI, vLLM, ``qlass serve``) get one request;
others get ``n`` parallel requests, sample ``i`` seeded with ``sample_seed(seed, i)``.
Token usage comes from the provider; a response's prompt tokens are put on its first
candidate and its completion tokens (and cost) are shared among its candidates in
proportion to their text length, so that candidates' usages always sum to what was billed.

API keys are read from the environment variable named by ``api_key_env`` (never from config)
and never logged, stored, or put into an error message.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import structlog

from qlass._log import adopt_library_logging, redact, secret_values
from qlass.backends.base import BasePolicy
from qlass.backends.cache import sample_seed
from qlass.errors import (
    ConfigError,
    MissingDependencyError,
    PolicyCallError,
    PolicyTimeoutError,
)
from qlass.parsing import candidate_from_text
from qlass.types import Candidate, ChatMessage, Usage

__all__ = ["NATIVE_N_PROVIDERS", "LiteLLMPolicy"]

log = structlog.get_logger(__name__)

NATIVE_N_PROVIDERS = frozenset({"openai", "hosted_vllm", "azure", "custom_openai"})
_RETRY_STATUS = frozenset({408, 409, 425, 429})
T = TypeVar("T")


def _import_litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as exc:  # pragma: no cover - litellm is a core dependency
        raise MissingDependencyError("litellm", "litellm", "the LiteLLM policy backend") from exc
    # LiteLLM prints a "Give Feedback / Get Help" banner to stdout on every failed call;
    # stdout is for results, and failures are logged (and raised) by this module.
    litellm.suppress_debug_info = True
    adopt_library_logging()  # its records go through qlass's handler, not its own
    try:
        # Load the CA bundle into LiteLLM's process-wide SSL context cache now, so that the
        # first request (on the event loop) does not read it from disk.
        from litellm.llms.custom_httpx.http_handler import get_ssl_configuration

        get_ssl_configuration()
    except Exception:  # an internal of LiteLLM: if it moved, the first call just reads it
        log.debug("policy.ssl_warmup_skipped")
    return litellm


class _BadResponse(Exception):
    """The provider answered 2xx with something that is not a chat completion."""


def _connection_failure(exc: BaseException) -> BaseException | None:
    """The root cause of ``exc`` if it is a failed connection (refused, reset, dropped,
    unknown host), else None. Searched along the chain of causes, which LiteLLM builds
    as: its error, the OpenAI SDK's ``APIConnectionError``, the HTTP client's, the OS's."""
    import openai  # a dependency of LiteLLM, imported with it

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    connection = (openai.APIConnectionError, ConnectionError, OSError)
    timeouts = (openai.APITimeoutError, TimeoutError)
    if any(isinstance(e, timeouts) for e in chain):
        return None
    if not any(isinstance(e, connection) for e in chain):
        return None
    return chain[-1]


def _split(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder)."""
    if not weights:
        return []
    weight_sum = sum(weights)
    if weight_sum == 0:
        weights, weight_sum = [1] * len(weights), len(weights)
    exact = [total * w / weight_sum for w in weights]
    parts = [int(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: exact[i] - parts[i], reverse=True)
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


async def _gather_or_cancel(*coros: Awaitable[T]) -> list[T]:
    """Like ``asyncio.gather``, but the first failure cancels the requests still running."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class LiteLLMPolicy(BasePolicy):
    """A policy behind ``litellm.acompletion`` (or a ``Router`` over several servers).

    Args:
        model: LiteLLM model string, e.g. ``hosted_vllm/llama-7b-bc`` or ``openai/gpt-4o``.
        api_base: an OpenAI-compatible base URL (``http://host:8000/v1``), or several for
            replicas of one model (then LiteLLM's Router spreads the requests).
        api_key_env: name of the environment variable holding the API key. Without it the
            provider's usual variable (``OPENAI_API_KEY``...) is used by LiteLLM.
        timeout_s: per-request timeout.
        native_n: use the provider's ``n`` (one request for ``n`` samples); ``None`` decides
            from the provider (:data:`NATIVE_N_PROVIDERS`).
        model_name: the name recorded in the DB (default: ``model``).
        extra_params: more keyword arguments for ``acompletion`` (e.g. ``top_p``).
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | Sequence[str] | None = None,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        native_n: bool | None = None,
        model_name: str | None = None,
        extra_params: dict[str, Any] | None = None,
    ) -> None:
        self._litellm = _import_litellm()
        self.model = model
        self._model_name = model_name or model
        try:
            _, provider, _, _ = self._litellm.get_llm_provider(model)
        except Exception as exc:
            raise ConfigError(
                f"policy.model: LiteLLM cannot tell the provider of {model!r}; use a "
                "'provider/model' string such as 'hosted_vllm/NAME' or 'openai/gpt-4o'"
            ) from exc
        self.provider: str = provider
        self.native_n = provider in NATIVE_N_PROVIDERS if native_n is None else native_n
        self.timeout_s = timeout_s
        self._api_key: str | None = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ConfigError(
                    f"policy.api_key_env: environment variable {api_key_env} is not set"
                )
            self._api_key = key
        bases = [api_base] if isinstance(api_base, str) else list(api_base or ())
        self.api_bases = bases
        self._params: dict[str, Any] = {
            "timeout": timeout_s,
            "num_retries": 0,  # retries are RetryingPolicy's job
            "max_retries": 0,  # ... and not the OpenAI SDK's either
            "drop_params": True,  # e.g. seed for providers that do not take one
            **(extra_params or {}),
        }
        self._router: Any = None
        if len(bases) > 1:
            self._router = self._litellm.Router(
                model_list=[
                    {"model_name": self._model_name, "litellm_params": self._deployment(base)}
                    for base in bases
                ],
                num_retries=0,
                routing_strategy="simple-shuffle",
                timeout=timeout_s,
            )

    def __repr__(self) -> str:
        return f"LiteLLMPolicy(model={self.model!r}, api_bases={self.api_bases!r})"

    def _deployment(self, base: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.model}
        if base:
            params["api_base"] = base
        if self._api_key:
            params["api_key"] = self._api_key
        return params

    @property
    def model_name(self) -> str:
        return self._model_name

    # -- hooks read by the wrappers ------------------------------------------------------

    def requests_for(self, n: int) -> int:
        return 1 if self.native_n else n

    def should_retry(self, exc: BaseException) -> bool:
        """Timeouts, connection failures, 408/409/425/429 and 5xx are worth another try."""
        if isinstance(exc, PolicyTimeoutError):
            return True
        if not isinstance(exc, PolicyCallError):
            return False
        cause = exc.__cause__
        if isinstance(cause, _BadResponse):
            return True
        litellm = self._litellm
        if isinstance(cause, litellm.APIConnectionError | litellm.Timeout):
            return True
        status = getattr(cause, "status_code", None)
        return isinstance(status, int) and (status in _RETRY_STATUS or status >= 500)

    def retry_after(self, exc: BaseException) -> float | None:
        """Seconds asked for by the provider's ``Retry-After`` header, if any."""
        cause = exc.__cause__
        headers: Any = None
        for source in (cause, getattr(cause, "response", None)):
            for name in ("headers", "litellm_response_headers"):
                found = getattr(source, name, None)
                if found:
                    headers = found
                    break
            if headers:
                break
        if not headers:
            return None
        value = headers.get("retry-after") or headers.get("Retry-After")
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    # -- calls ---------------------------------------------------------------------------

    def _where(self) -> str:
        """The server(s) this policy calls, for error messages."""
        if not self.api_bases:
            return f"the {self.provider} API"
        return " or ".join(self.api_bases)

    def _translate(self, exc: Exception, latency: float) -> Exception:
        secrets = [s for s in (self._api_key,) if s] + secret_values()
        litellm = self._litellm
        timed_out = isinstance(exc, litellm.Timeout | TimeoutError)
        # LiteLLM reports a refused or dropped connection as an InternalServerError with
        # status 500, which no server sent: name the server and the real cause instead.
        lost = None if timed_out else _connection_failure(exc)
        log.info(
            "policy.call_failed",
            model=self._model_name,
            error=type(lost or exc).__name__,
            status=None if lost else getattr(exc, "status_code", None),
            latency_s=round(latency, 3),
        )
        if lost is not None:
            detail = redact(f"{type(lost).__name__}: {lost}", secrets)[:500]
            return PolicyCallError(
                f"{self._model_name}: connection to {self._where()} failed: {detail}"
            )
        detail = redact(str(exc), secrets)[:500]
        if timed_out:
            return PolicyTimeoutError(
                f"{self._model_name}: no answer within {self.timeout_s:g} s ({detail})"
            )
        return PolicyCallError(f"{self._model_name}: {type(exc).__name__}: {detail}")

    async def _request(
        self,
        messages: Sequence[ChatMessage],
        n: int,
        temperature: float,
        max_tokens: int,
        stop: Sequence[str] | None,
        seed: int | None,
    ) -> tuple[list[str | None], Usage]:
        kwargs: dict[str, Any] = {
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": temperature,
            "max_tokens": max_tokens,
            **self._params,
        }
        if n > 1:
            kwargs["n"] = n
        if stop:
            kwargs["stop"] = list(stop)
        if seed is not None:
            kwargs["seed"] = seed
        started = time.perf_counter()
        try:
            if self._router is not None:
                response = await self._router.acompletion(model=self._model_name, **kwargs)
            else:
                response = await self._litellm.acompletion(
                    **self._deployment(self.api_bases[0] if self.api_bases else None), **kwargs
                )
            texts = [choice.message.content for choice in response.choices]
            if not texts:
                raise _BadResponse("the response holds no choices")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._translate(exc, time.perf_counter() - started) from exc
        latency = time.perf_counter() - started
        usage_obj = getattr(response, "usage", None)
        prompt = int(getattr(usage_obj, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage_obj, "completion_tokens", 0) or 0)
        cost = self._cost(response)
        log.debug(
            "policy.call",
            model=self._model_name,
            n=n,
            choices=len(texts),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=round(cost, 6),
            latency_s=round(latency, 3),
            cached=False,
        )
        return texts, Usage(prompt, completion, cost)

    def _cost(self, response: Any) -> float:
        try:
            return float(self._litellm.completion_cost(completion_response=response) or 0.0)
        except Exception:  # unknown model (a local server): no price to charge
            return 0.0

    def _candidates(
        self, texts: list[str | None], usage: Usage, stop: Sequence[str]
    ) -> list[Candidate]:
        cleaned = []
        for text in texts:
            if text:
                for s in stop:
                    if s and s in text:
                        text = text[: text.index(s)]
            cleaned.append(text)
        lengths = [len(t or "") for t in cleaned]
        completions = _split(usage.completion_tokens, lengths)
        total = usage.completion_tokens or 1
        candidates = []
        for i, (text, completion) in enumerate(zip(cleaned, completions, strict=True)):
            share = Usage(
                usage.prompt_tokens if i == 0 else 0,
                completion,
                usage.cost_usd
                * (completion / total if usage.completion_tokens else 1 / len(cleaned)),
            )
            if not text or not text.strip():
                candidates.append(
                    Candidate(
                        text=text or "",
                        action=None,
                        usage=share,
                        parse_error="the provider returned an empty completion",
                    )
                )
            else:
                candidates.append(candidate_from_text(text, share))
        return candidates

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
        """Return ``n`` candidates; raise ``PolicyCallError``/``PolicyTimeoutError`` on failure."""
        if n < 1:
            raise ValueError("n must be at least 1")
        stops = list(stop or ())
        candidates: list[Candidate] = []
        if self.native_n or n == 1:
            texts, usage = await self._request(messages, n, temperature, max_tokens, stop, seed)
            candidates = self._candidates(texts[:n], usage, stops)
        if len(candidates) < n:
            # One request per missing sample (no native n, or the provider gave fewer).
            missing = range(len(candidates), n)
            results = await _gather_or_cancel(
                *(
                    self._request(
                        messages,
                        1,
                        temperature,
                        max_tokens,
                        stop,
                        None if seed is None else sample_seed(seed, i),
                    )
                    for i in missing
                )
            )
            for texts, usage in results:
                candidates.extend(self._candidates(texts[:1], usage, stops))
        return candidates

    async def aclose(self) -> None:
        """Nothing of ours to release: LiteLLM owns (and reuses) its HTTP clients."""
