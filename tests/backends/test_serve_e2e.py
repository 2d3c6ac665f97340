"""End to end: ``qlass serve`` in a subprocess, LiteLLM over real HTTP, real episodes.

A small model trained in the fixture answers in the ``Action: ...`` format; episodes of
TextWorldExpress are driven through LiteLLM (``hosted_vllm/<name>``) against the server, with
the tree store's call cache in front. Checked: n-sampling over HTTP, token usage equal to the
server's own counts (and to the tokenizer's), parsed actions reaching the simulator, and a
rerun answered entirely from the store (no request reaches the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import litellm  # noqa: F401  (imported here, not on the event loop: it reads files)
import pytest
from transformers import AutoTokenizer

from qlass._seeding import derive_seed
from qlass.backends.cache import CachedPolicy
from qlass.backends.litellm_backend import LiteLLMPolicy
from qlass.backends.wrappers import RetryingPolicy
from qlass.envs.textworld_express import TextWorldExpressEnv
from qlass.storage import TreeStore
from qlass.types import Candidate, TaskSpec
from tests.backends.helpers import SYSTEM_PROMPT, TWX_GAME, TWX_PARAMS, episode_messages

STEPS = 4
EPISODES = (3, 4)  # dev seeds 10003 and 10004


@dataclass
class Server:
    process: subprocess.Popen[str]
    base_url: str
    model: str

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(self.base_url.removesuffix("/v1") + "/stats", timeout=10).json())


@contextlib.contextmanager
def running_server(model_dir: Path, *options: str) -> Iterator[Server]:
    """``qlass serve MODEL_DIR --port 0 OPTIONS`` in a subprocess, until the block ends."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "qlass", "serve", str(model_dir), "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"'(?P<name>[^']+)' on \S+ at (?P<url>http://\S+/v1)", line)
        if match is None:
            _, err = process.communicate(timeout=10)
            pytest.fail(f"qlass serve did not start: {line!r}\n{err[-2000:]}")
        server = Server(process, match["url"], match["name"])
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(server.base_url.removesuffix("/v1") + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail("qlass serve never became healthy")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def served_model(action_model_dir: Path) -> Iterator[Server]:
    with running_server(action_model_dir) as server:
        yield server


def test_models_endpoint_lists_the_served_model(served_model: Server) -> None:
    from openai import OpenAI

    with OpenAI(base_url=served_model.base_url, api_key="unused") as client:
        ids = [m.id for m in client.models.list()]
        assert ids == [served_model.model]
        reply = client.chat.completions.create(
            model=served_model.model,
            messages=[{"role": "user", "content": "Observation: You are in the kitchen."}],
            n=3,
            max_tokens=8,
            seed=1,
        )
    assert len(reply.choices) == 3
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 24


def conversation(turns: int) -> list[dict[str, str]]:
    """A system message, the task, then ``turns`` (action, observation) pairs."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Find the coin.\nObservation: You are in the kitchen."},
    ]
    for t in range(turns):
        messages.append({"role": "assistant", "content": f"Action: move north {t}"})
        messages.append({"role": "user", "content": "Observation: a corridor. " * 12})
    return messages


def test_the_openai_client_gets_openai_errors(served_model: Server) -> None:
    import openai
    from openai import OpenAI

    with OpenAI(base_url=served_model.base_url, api_key="unused", max_retries=0) as client:
        assert client.models.retrieve(served_model.model).id == served_model.model
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("gpt-4o")
        assert missing.value.code == "model_not_found"

        long = conversation(13)  # 28 messages, far past the context
        with pytest.raises(openai.BadRequestError) as too_long:
            client.chat.completions.create(
                model=served_model.model,
                messages=long,
                max_tokens=8,  # type: ignore[arg-type]
            )
        assert too_long.value.code == "context_length_exceeded"
        assert too_long.value.param == "messages"
        assert "maximum context length is 1024 tokens" in too_long.value.message

        with pytest.raises(openai.BadRequestError) as tools:
            client.chat.completions.create(
                model=served_model.model,
                messages=conversation(0),  # type: ignore[arg-type]
                tools=[{"type": "function", "function": {"name": "look", "parameters": {}}}],
            )
        assert (tools.value.param, tools.value.code) == ("tools", "unsupported_parameter")
        with pytest.raises(openai.BadRequestError) as extra:
            client.chat.completions.create(
                model=served_model.model,
                messages=conversation(0),  # type: ignore[arg-type]
                extra_body={"guided_json": {}},
            )
        assert extra.value.message.endswith("Unrecognized request argument supplied: guided_json")


def test_the_openai_client_gets_top_p_and_logprobs(served_model: Server) -> None:
    from openai import OpenAI

    with OpenAI(base_url=served_model.base_url, api_key="unused", max_retries=0) as client:
        messages = conversation(0)
        greedy = client.chat.completions.create(
            model=served_model.model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=12,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
        )
        narrow = client.chat.completions.create(
            model=served_model.model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=12,
            temperature=1.8,
            top_p=0.0,
            n=4,
            seed=11,
        )
    text = greedy.choices[0].message.content
    assert text and {c.message.content for c in narrow.choices} == {text}
    logprobs = greedy.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert "".join(t.token for t in logprobs.content) == text
    assert all(len(t.top_logprobs) == 3 for t in logprobs.content)
    assert all(t.logprob == max(a.logprob for a in t.top_logprobs) for t in logprobs.content)


def test_trimming_is_a_server_option_reported_in_each_response(action_model_dir: Path) -> None:
    from openai import OpenAI

    with running_server(action_model_dir, "--trim-history") as server:
        client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model=server.model,
            messages=conversation(13),  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0,
        )
        client.close()
    reply = raw.parse()
    dropped = (reply.model_extra or {})["qlass"]["dropped_messages"]
    assert dropped >= 2 and raw.headers["x-qlass-dropped-messages"] == str(dropped)
    assert reply.usage is not None and reply.usage.prompt_tokens <= 1024 - 8


def task(seed: int) -> TaskSpec:
    return TaskSpec("textworld_express", TWX_GAME, 10_000 + seed, "dev", TWX_PARAMS)


@dataclass
class EpisodeLog:
    calls: list[list[Candidate]]
    actions: list[str]
    observations: list[str]


async def play(policy: Any, seed: int) -> EpisodeLog:
    """Sample 2 candidates a step, send the first parsed one to the simulator."""
    env = TextWorldExpressEnv()
    log = EpisodeLog([], [], [])
    try:
        first = await env.reset(task(seed))
        instruction, observation = first.instruction, first.text
        for step in range(STEPS):
            messages = episode_messages(instruction, observation)
            candidates = await policy.sample(
                messages, n=2, temperature=0.8, max_tokens=24, seed=derive_seed(seed, step)
            )
            log.calls.append(candidates)
            valid = [c.action for c in candidates if c.action is not None]
            if not valid:
                continue  # an invalid step: nothing is sent to the simulator
            result = await env.step(valid[0])
            log.actions.append(valid[0])
            log.observations.append(result.observation)
            observation = result.observation
            if result.done:
                break
    finally:
        await env.close()
    return log


async def test_episodes_over_http_with_usage_and_request_cache(
    served_model: Server, action_model_dir: Path, tmp_path: Path
) -> None:
    tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, action_model_dir)
    store = await TreeStore.open(tmp_path / "store.db")
    try:
        inner = LiteLLMPolicy(f"hosted_vllm/{served_model.model}", api_base=served_model.base_url)
        policy = CachedPolicy(RetryingPolicy(inner, retries=2), store.call_cache)
        before = await asyncio.to_thread(served_model.stats)

        logs = await asyncio.gather(*(play(policy, seed) for seed in EPISODES))

        after = await asyncio.to_thread(served_model.stats)
        calls = [c for log in logs for c in log.calls]
        assert calls and all(len(c) == 2 for c in calls)  # n-sampling over HTTP
        assert after["requests"] - before["requests"] == len(calls)  # native n: 1 request
        assert after["completions"] - before["completions"] == 2 * len(calls)
        prompt = sum(c.usage.prompt_tokens for call in calls for c in call)
        completion = sum(c.usage.completion_tokens for call in calls for c in call)
        assert prompt == after["prompt_tokens"] - before["prompt_tokens"]
        assert completion == after["completion_tokens"] - before["completion_tokens"]
        first = logs[0].calls[0]
        env = TextWorldExpressEnv()
        start = await env.reset(task(EPISODES[0]))
        await env.close()
        messages = episode_messages(start.instruction, start.text)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert first[0].usage.prompt_tokens == len(tokenizer(text)["input_ids"])
        assert first[1].usage.prompt_tokens == 0  # counted once per request
        assert not any(c.cached for call in calls for c in call)
        # parsed actions reached the simulator and it answered
        assert sum(len(log.actions) for log in logs) >= 2
        assert all(len(log.actions) == len(log.observations) for log in logs)
        assert await store.call_cache.count() == 2 * len(calls)

        # A rerun (a resume after a crash) is answered from the store: no HTTP at all.
        rerun = await asyncio.gather(*(play(policy, seed) for seed in EPISODES))
        assert (await asyncio.to_thread(served_model.stats))["requests"] == after["requests"]
        for old, new in zip(logs, rerun, strict=True):
            assert new.actions == old.actions
            assert new.observations == old.observations
            assert [[c.text for c in call] for call in new.calls] == [
                [c.text for c in call] for call in old.calls
            ]
            assert all(c.cached for call in new.calls for c in call)
            assert [[c.usage for c in call] for call in new.calls] == [
                [c.usage for c in call] for call in old.calls
            ]

        # n=3 on a cached seed asks the server for the third sample only.
        seed = derive_seed(EPISODES[0], 0)
        more = await policy.sample(messages, n=3, temperature=0.8, max_tokens=24, seed=seed)
        final = await asyncio.to_thread(served_model.stats)
        assert [c.cached for c in more] == [True, True, False]
        assert final["requests"] == after["requests"] + 1
        assert final["completions"] == after["completions"] + 1
        await policy.aclose()
    finally:
        await store.aclose()


async def test_unseeded_calls_are_not_cached(served_model: Server, tmp_path: Path) -> None:
    store = await TreeStore.open(tmp_path / "store.db")
    try:
        inner = LiteLLMPolicy(f"hosted_vllm/{served_model.model}", api_base=served_model.base_url)
        policy = CachedPolicy(inner, store.call_cache)
        messages = episode_messages("Find the coin.", "You are in the kitchen.")
        before = (await asyncio.to_thread(served_model.stats))["requests"]
        for _ in range(2):
            await policy.sample(messages, n=2, max_tokens=8)
        assert (await asyncio.to_thread(served_model.stats))["requests"] == before + 2
        assert await store.call_cache.count() == 0
    finally:
        await store.aclose()
