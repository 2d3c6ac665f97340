"""WebShop through a WebShop text-environment HTTP server (AgentGym's ``agentenv-webshop``).

The product data (about 1 GB) cannot be bundled, so qlass talks to a server the user runs
and names by URL (``url=`` option, ``env.server_url`` in the config). The interface is the
one of AgentGym's env servers:

    POST /create                               -> env id (int)
    POST /reset  {"env_idx", "session_id"}     -> [observation, info]   (any JSON accepted)
    GET  /observation?env_idx=                 -> page text
    GET  /instruction_text?env_idx=            -> instruction (optional; else parsed)
    GET  /available_actions?env_idx=           -> {"has_search_bar", "clickables"}
    POST /step   {"env_idx", "action"}         -> {"state" | "observation", "reward", "done", "info"}
    POST /close  {"env_idx"}                   -> {"closed": bool}

A task's variation is the WebShop session (goal) index. Splits follow the WebShop paper:
test = goals 0-499 (QLASS/ETO evaluate on the first 200), dev = 500-1499, train = the rest.
WebShop's reward is given when the agent buys: ``score`` is that reward, ``success`` means
a reward of 1.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import structlog

from qlass.envs.base import require_action
from qlass.envs.family import BaseEnvFamily
from qlass.errors import ConfigError, EnvCrashedError, EnvError, EnvTimeoutError, UnknownNameError
from qlass.types import Observation, StepResult, TaskSpec

__all__ = ["FAMILY", "WebShopEnv", "WebShopFamily"]

log = structlog.get_logger(__name__)

_TEST, _DEV = range(0, 500), range(500, 1500)
_HUMAN_GOALS = 12087  # goals in WebShop's human-instruction set
_INSTRUCTION = re.compile(r"Instruction:\s*(?:\[SEP\]\s*)?(?P<text>.*?)\s*\[SEP\]", re.DOTALL)
_RETRIES_503 = 5


def _split_range(split: str, goals: int) -> range:
    if split == "test":
        return _TEST
    if split == "dev":
        return _DEV
    if split == "train":
        return range(_DEV.stop, goals)
    raise UnknownNameError(f"unknown split {split!r}; choose train, dev or test")


class WebShopEnv:
    """A client of one env instance on a WebShop env server."""

    family = "webshop"

    def __init__(
        self,
        *,
        url: str | None = None,
        step_timeout_s: float | None = 30.0,
        valid_actions: bool = True,
    ) -> None:
        if not url:
            raise ConfigError(
                "webshop needs the URL of a running WebShop env server (AgentGym's "
                "agentenv-webshop, e.g. http://127.0.0.1:36001): set env.server_url or url="
            )
        self.url = url.rstrip("/")
        self.step_timeout_s = step_timeout_s
        self.valid_actions = valid_actions
        self._client: httpx.AsyncClient | None = None
        self._env_id: Any = None
        self._task: TaskSpec | None = None
        self._score = 0.0
        self._moves = 0
        self._closed = False

    async def _http(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._closed:
            raise RuntimeError("webshop env is closed")
        if self._client is None:
            # Building the client loads TLS certificates (file I/O): not on the loop.
            self._client = await asyncio.to_thread(
                httpx.AsyncClient, base_url=self.url, timeout=self.step_timeout_s
            )
        what = f"{method} {self.url}{path}"
        try:
            for _attempt in range(_RETRIES_503):
                response = await self._client.request(method, path, **kwargs)
                if response.status_code != 503:
                    break
                await asyncio.sleep(0.1)
        except httpx.TimeoutException as exc:
            raise EnvTimeoutError(
                f"WebShop server did not answer {what} within {self.step_timeout_s} s"
            ) from exc
        except httpx.TransportError as exc:
            raise EnvCrashedError(f"WebShop server unreachable for {what}: {exc}") from exc
        if response.status_code == 404 and path.startswith("/instruction_text"):
            return None
        if response.status_code >= 400:
            raise EnvError(
                f"WebShop server answered {what} with HTTP {response.status_code}: "
                f"{response.text[:200]}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise EnvError(
                f"WebShop server sent non-JSON for {what}: {response.text[:200]}"
            ) from exc

    async def _ensure_env(self) -> None:
        if self._env_id is None:
            created = await self._http("POST", "/create")
            self._env_id = (
                created.get("env_idx", created.get("id")) if isinstance(created, dict) else created
            )
            log.debug("webshop_env_created", url=self.url, env_idx=self._env_id)

    async def _get(self, path: str) -> Any:
        return await self._http("GET", path, params={"env_idx": self._env_id})

    async def _available(self) -> tuple[str, ...] | None:
        if not self.valid_actions:
            return None
        data = await self._get("/available_actions")
        actions = ["search[<keywords>]"] if data.get("has_search_bar") else []
        actions += [f"click[{c}]" for c in data.get("clickables", [])]
        return tuple(actions)

    async def reset(self, task: TaskSpec) -> Observation:
        await self._ensure_env()
        await self._http(
            "POST", "/reset", json={"env_idx": self._env_id, "session_id": task.variation}
        )
        page = await self._get("/observation")
        instruction = await self._get("/instruction_text")
        if not instruction:
            match = _INSTRUCTION.search(page)
            instruction = match.group("text") if match else ""
        self._task, self._score, self._moves = task, 0.0, 0
        return Observation(
            text=str(page).strip(),
            instruction=str(instruction).strip(),
            valid_actions=await self._available(),
            info={"session": task.variation},
        )

    async def step(self, action: str) -> StepResult:
        action = require_action(action)
        if self._task is None:
            raise RuntimeError("webshop: step() before reset()")
        data = await self._http("POST", "/step", json={"env_idx": self._env_id, "action": action})
        if isinstance(data, list):  # some servers answer (state, reward, done, info)
            data = dict(zip(("state", "reward", "done", "info"), data, strict=False))
        text = str(data.get("state", data.get("observation", "")))
        reward = float(data.get("reward") or 0.0)
        done = bool(data.get("done"))
        self._moves += 1
        previous = self._score
        self._score = max(self._score, min(1.0, max(0.0, reward)))
        return StepResult(
            observation=text.strip(),
            reward=self._score - previous,
            done=done,
            score=self._score,
            success=done and reward >= 1.0,
            valid_actions=None if done else await self._available(),
            info={"moves": self._moves, "reward_raw": reward},
        )

    async def close(self) -> None:
        if self._closed:
            return
        try:
            if self._env_id is not None and self._client is not None:
                try:
                    await self._http("POST", "/close", json={"env_idx": self._env_id})
                except EnvError as exc:
                    log.debug("webshop_close_failed", error=str(exc))
        finally:
            self._closed = True
            if self._client is not None:
                await self._client.aclose()


class WebShopFamily(BaseEnvFamily):
    """Registry entry for WebShop (tasks are goal indices; no gold paths)."""

    name = "webshop"
    description = "WebShop via an AgentGym-style env server (needs --url / env.server_url)"
    extra = "webshop"

    def games(self) -> tuple[str, ...]:
        return ("webshop",)

    def config_options(
        self, *, data_dir: Path | None, server_url: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``env.server_url``: the WebShop env server the envs talk to."""
        if data_dir is not None:
            raise ConfigError("env.data_dir: the webshop env does not use it")
        return ({} if server_url is None else {"url": server_url}), {}

    def create(self, **options: Any) -> WebShopEnv:
        return WebShopEnv(**options)

    def split_sizes(self, *, goals: int = _HUMAN_GOALS, **_options: Any) -> dict[str, int]:
        return {s: len(_split_range(s, goals)) for s in ("train", "dev", "test")}

    def list_tasks(
        self,
        split: str,
        *,
        games: Sequence[str] | None = None,
        params: Any = None,
        limit: int | None = None,
        goals: int = _HUMAN_GOALS,
        **options: Any,
    ) -> list[TaskSpec]:
        """Goal indices of ``split`` in order (``goals``: how many goals the server has)."""
        if options:
            raise ConfigError(f"webshop takes no options {sorted(options)}")
        if games and tuple(games) != ("webshop",):
            raise UnknownNameError(f"webshop has one game, 'webshop'; got {list(games)}")
        indices = _split_range(split, goals)
        if limit is not None:
            indices = indices[:limit]
        return [TaskSpec(self.name, "webshop", i, split, params or "") for i in indices]  # type: ignore[arg-type]


FAMILY = WebShopFamily()
