"""``LLMJudgeValueModel``: ask an LLM (through LiteLLM) to rate each candidate 0..10.

A baseline value model with no training: the judge sees the task, the history so far and
the candidate turn, and answers with a number. The score is ``rating / 10`` (so it is on
the same 0..1 scale as normalised Q labels). A reply with no number in 0..10 gets
``fallback`` (0.5 by default, the middle of the scale) and a warning in the log.

LiteLLM is imported on first use, in a worker thread (its import reads files), with
``LITELLM_LOCAL_MODEL_COST_MAP=True`` so that importing it never touches the network.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import structlog

from qlass.chat import OBSERVATION_PREFIX
from qlass.errors import MissingDependencyError, ValueModelError
from qlass.qnet.base import BaseValueModel, ValueQuery
from qlass.types import History, Usage

__all__ = ["JUDGE_SYSTEM_PROMPT", "LLMJudgeValueModel", "judge_messages", "parse_rating"]

log = structlog.get_logger(__name__)

JUDGE_SYSTEM_PROMPT = (
    "You judge the next step of an agent acting in a text environment. Given the task, "
    "what happened so far and one candidate next step, rate how much the candidate helps "
    "to complete the task, from 0 (useless or harmful) to 10 (certainly the right step). "
    "Answer with the number only."
)

_NUMBER = re.compile(r"(?<![\w.-])(\d+(?:\.\d+)?)")


def judge_messages(history: History, candidate_text: str) -> list[dict[str, str]]:
    """The chat the judge answers: system instructions, then one user message."""
    lines = [f"Task: {history.instruction}", f"{OBSERVATION_PREFIX}{history.initial_observation}"]
    for number, turn in enumerate(history.turns, start=1):
        lines.append(f"Step {number}: {turn.text}")
        lines.append(f"{OBSERVATION_PREFIX}{turn.observation}")
    lines.append("")
    lines.append(f"Candidate next step:\n{candidate_text}")
    lines.append("")
    lines.append("Rating (0-10):")
    return [
        {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]


def parse_rating(text: str) -> float | None:
    """The first number in ``text`` if it lies in 0..10 (``"7"``, ``"Rating: 8/10"``), else None."""
    match = _NUMBER.search(text or "")
    if match is None:
        return None
    value = float(match.group(1))
    return value if 0.0 <= value <= 10.0 else None


def _import_litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        litellm = importlib.import_module("litellm")
    except ImportError as exc:  # pragma: no cover - litellm is a core dependency
        raise MissingDependencyError("litellm", "litellm", "the LLM judge") from exc
    try:
        # Load the CA bundle into LiteLLM's SSL context cache here, off the event loop, so
        # the first request does not read it from disk on the loop.
        from litellm.llms.custom_httpx.http_handler import get_ssl_configuration

        get_ssl_configuration()
    except Exception:  # a LiteLLM internal: if it moved, the first call just reads it
        log.debug("judge ssl warm-up skipped")
    return litellm


class LLMJudgeValueModel(BaseValueModel):
    """Scores queries by asking an LLM judge, up to ``max_concurrency`` calls at once.

    Args:
        model: a LiteLLM model string (``openai/gpt-4o-mini``, ``hosted_vllm/...``).
        api_base: OpenAI-compatible base URL for local servers.
        api_key: key for that server (provider keys are read from the environment otherwise).
        fallback: the score of an unparsable reply (default 0.5).
        temperature, max_tokens, timeout_s, retries: passed to LiteLLM.
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        fallback: float = 0.5,
        temperature: float = 0.0,
        max_tokens: int = 8,
        timeout_s: float = 60.0,
        retries: int = 2,
        max_concurrency: int = 8,
    ) -> None:
        self.model = model
        self.api_base = api_base
        self.api_key = api_key
        self.fallback = float(fallback)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.retries = retries
        self.usage = Usage()
        self.unparsable = 0
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._litellm: Any = None

    async def _module(self) -> Any:
        if self._litellm is None:
            self._litellm = await asyncio.to_thread(_import_litellm)
        return self._litellm

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        """Ask the judge about every query concurrently.

        Raises:
            ValueModelError: a call failed after LiteLLM's retries.
        """
        if not queries:
            return []
        litellm = await self._module()
        return list(await asyncio.gather(*(self._score_one(litellm, q) for q in queries)))

    async def _score_one(self, litellm: Any, query: ValueQuery) -> float:
        options: dict[str, Any] = {}
        if self.api_base:
            options["api_base"] = self.api_base
        if self.api_key:
            options["api_key"] = self.api_key
        async with self._semaphore:
            try:
                response = await litellm.acompletion(
                    model=self.model,
                    messages=judge_messages(query.history, query.candidate_text),
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                    timeout=self.timeout_s,
                    num_retries=self.retries,
                    **options,
                )
            except Exception as exc:  # LiteLLM raises many provider-specific types
                raise ValueModelError(f"LLM judge call to {self.model} failed: {exc}") from exc
        usage = getattr(response, "usage", None)
        if usage is not None:
            self.usage = self.usage + Usage(
                int(getattr(usage, "prompt_tokens", 0) or 0),
                int(getattr(usage, "completion_tokens", 0) or 0),
            )
        try:
            text = response.choices[0].message.content or ""
        except (AttributeError, IndexError):
            text = ""
        rating = parse_rating(text)
        if rating is None or not math.isfinite(rating):
            self.unparsable += 1
            log.warning("judge reply has no 0-10 rating; using the fallback", reply=text[:80])
            return self.fallback
        return rating / 10.0
