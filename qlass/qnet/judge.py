"""``LLMJudgeValueModel``: ask an LLM (through LiteLLM) to rate each candidate 0..10.

A baseline value model with no training: the judge sees the task, the history so far and
the candidate turn, and answers with a number. The score is ``rating / 10`` (so it is on
the same 0..1 scale as normalised Q labels). A reply with no number in 0..10 gets
``fallback`` (0.5 by default, the middle of the scale) and a warning in the log.

The judge asks its LLM through the same stack as a policy
(:func:`qlass.backends.registry.build_policy` with the ``litellm`` backend), so retries of
transient failures, the concurrency limit and LiteLLM's error translation are the policy
wrappers'. The stack is built on first use, in a worker thread (importing LiteLLM reads
files).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence

import structlog

from qlass.backends.base import Policy
from qlass.backends.registry import build_policy
from qlass.chat import OBSERVATION_PREFIX
from qlass.config import PolicyConfig
from qlass.errors import PolicyError, ValueModelError
from qlass.qnet.base import BaseValueModel, ValueQuery
from qlass.types import ChatMessage, History, Usage

__all__ = ["JUDGE_SYSTEM_PROMPT", "LLMJudgeValueModel", "judge_messages", "parse_rating"]

log = structlog.get_logger(__name__)

JUDGE_SYSTEM_PROMPT = (
    "You judge the next step of an agent acting in a text environment. Given the task, "
    "what happened so far and one candidate next step, rate how much the candidate helps "
    "to complete the task, from 0 (useless or harmful) to 10 (certainly the right step). "
    "Answer with the number only."
)

_NUMBER = re.compile(r"(?<![\w.-])(\d+(?:\.\d+)?)")


def judge_messages(history: History, candidate_text: str) -> list[ChatMessage]:
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


class LLMJudgeValueModel(BaseValueModel):
    """Scores queries by asking an LLM judge, up to ``max_concurrency`` calls at once.

    Args:
        model: a LiteLLM model string (``openai/gpt-4o-mini``, ``hosted_vllm/...``).
        api_base: OpenAI-compatible base URL for local servers.
        api_key: key for that server (provider keys are read from the environment otherwise).
        fallback: the score of an unparsable reply (default 0.5).
        temperature, max_tokens: of each judge call.
        timeout_s, retries, max_concurrency: per request, as for a ``litellm`` policy
            (``policy.timeout_s``, ``policy.retries``, ``policy.max_concurrency``).
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
        self.fallback = float(fallback)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.usage = Usage()
        self.unparsable = 0
        self._config = PolicyConfig(
            backend="litellm",
            model=model,
            api_base=api_base,
            timeout_s=timeout_s,
            retries=retries,
            max_concurrency=max_concurrency,
            cache=False,
        )
        self._options = {"extra_params": {"api_key": api_key}} if api_key else {}
        self._policy: Policy | None = None
        self._policy_lock = asyncio.Lock()

    async def _llm(self) -> Policy:
        async with self._policy_lock:
            if self._policy is None:
                self._policy = await asyncio.to_thread(
                    build_policy, self._config, options=self._options
                )
            return self._policy

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        """Ask the judge about every query concurrently.

        Raises:
            ValueModelError: a call failed (after the policy stack's retries).
        """
        if not queries:
            return []
        llm = await self._llm()
        return list(await asyncio.gather(*(self._score_one(llm, q) for q in queries)))

    async def _score_one(self, llm: Policy, query: ValueQuery) -> float:
        try:
            (reply,) = await llm.sample(
                judge_messages(query.history, query.candidate_text),
                temperature=self.temperature,
                max_tokens=self.max_tokens,
            )
        except PolicyError as exc:
            raise ValueModelError(f"LLM judge call to {self.model} failed: {exc}") from exc
        self.usage = self.usage + reply.usage
        rating = parse_rating(reply.text)
        if rating is None or not math.isfinite(rating):
            self.unparsable += 1
            log.warning("judge reply has no 0-10 rating; using the fallback", reply=reply.text[:80])
            return self.fallback
        return rating / 10.0

    async def aclose(self) -> None:
        """Close the judge's policy stack. Idempotent."""
        policy, self._policy = self._policy, None
        if policy is not None:
            await policy.aclose()
