"""LiteLLM backend against a scripted OpenAI-compatible server over real HTTP.

Covers the fault cases of the issue: 429/500 then success is retried, a slow server times
out, is retried and raised clearly, malformed and empty contents become candidates with a
parse error (and nothing reaches an environment), a refused connection raises
PolicyCallError after retries, and the API key never reaches a log line or the cache.
"""

from __future__ import annotations

import asyncio
import logging

import litellm  # noqa: F401  (imported here, not on the event loop: it reads files)
import pytest
import structlog

from qlass.backends.cache import CachedPolicy, InMemoryCallCache
from qlass.backends.litellm_backend import LiteLLMPolicy
from qlass.backends.wrappers import RetryingPolicy
from qlass.errors import ConfigError, PolicyCallError, PolicyTimeoutError
from qlass.types import Candidate, ChatMessage, StepResult
from tests.backends.helpers import DEFAULT_TEXT, FakeServer, Reply

MESSAGES: list[ChatMessage] = [
    {"role": "system", "content": "You play a text game."},
    {"role": "user", "content": "Find the coin.\nObservation: You are in the kitchen."},
]
PLANTED_KEY = "sk-planted-secret-0123456789abcdef"


def policy_for(server: FakeServer, **options: object) -> LiteLLMPolicy:
    return LiteLLMPolicy("hosted_vllm/fake", api_base=server.base_url, **options)  # type: ignore[arg-type]


def retrying(policy: LiteLLMPolicy, retries: int = 3) -> RetryingPolicy:
    return RetryingPolicy(policy, retries=retries, initial_wait_s=0.01, max_wait_s=0.5, jitter_s=0)


async def test_native_n_is_one_request_with_n_choices(fake_server: FakeServer) -> None:
    fake_server.script.append(
        Reply(texts=["Action: go north", "Action: go south", "Action: look"], completion_tokens=10)
    )
    policy = policy_for(fake_server)
    candidates = await policy.sample(MESSAGES, n=3, temperature=0.7, max_tokens=32, seed=5)
    assert [c.action for c in candidates] == ["go north", "go south", "look"]
    assert len(fake_server.requests) == 1
    body = fake_server.requests[0]
    assert body["n"] == 3
    assert body["seed"] == 5
    assert body["max_tokens"] == 32
    assert body["messages"] == MESSAGES
    assert sum(c.usage.prompt_tokens for c in candidates) == 11
    assert candidates[0].usage.prompt_tokens == 11
    assert sum(c.usage.completion_tokens for c in candidates) == 10
    assert not any(c.cached for c in candidates)


async def test_without_native_n_each_sample_is_its_own_seeded_request(
    fake_server: FakeServer,
) -> None:
    from qlass.backends.cache import sample_seed

    policy = policy_for(fake_server, native_n=False)
    candidates = await policy.sample(MESSAGES, n=3, seed=100)
    assert len(candidates) == 3
    assert len(fake_server.requests) == 3
    assert all("n" not in body or body["n"] == 1 for body in fake_server.requests)
    seeds = sorted(body["seed"] for body in fake_server.requests)
    assert seeds == sorted(sample_seed(100, i) for i in range(3))
    assert sum(c.usage.prompt_tokens for c in candidates) == 3 * 11


async def test_fewer_choices_than_n_are_topped_up(fake_server: FakeServer) -> None:
    fake_server.script.append(Reply(texts=["Action: a"]))
    policy = policy_for(fake_server)
    candidates = await policy.sample(MESSAGES, n=3, seed=1)
    assert len(candidates) == 3
    assert len(fake_server.requests) == 3
    assert candidates[0].action == "a"


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_transient_status_then_success_is_retried(
    fake_server: FakeServer, status: int
) -> None:
    fake_server.script.append(Reply(status=status))
    policy = retrying(policy_for(fake_server))
    candidates = await policy.sample(MESSAGES, n=1, seed=0)
    assert candidates[0].action == "look around"
    assert len(fake_server.requests) == 2  # no hidden retries inside LiteLLM or the SDK


async def test_retry_after_header_is_honoured(fake_server: FakeServer) -> None:
    fake_server.script.append(Reply(status=429, headers={"retry-after": "0.3"}))
    sleeps: list[float] = []

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    policy = RetryingPolicy(
        policy_for(fake_server), retries=2, initial_wait_s=0.01, jitter_s=0, sleep=record_sleep
    )
    await policy.sample(MESSAGES)
    assert sleeps == [pytest.approx(0.3)]


async def test_client_error_is_not_retried(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_server.script.append(Reply(status=400))
    policy = retrying(policy_for(fake_server))
    with pytest.raises(PolicyCallError, match="scripted 400"):
        await policy.sample(MESSAGES)
    assert len(fake_server.requests) == 1
    assert "Give Feedback" not in capsys.readouterr().out  # LiteLLM's banner is off


async def test_persistent_429_raises_after_retries(fake_server: FakeServer) -> None:
    fake_server.script.extend(Reply(status=429) for _ in range(5))
    policy = retrying(policy_for(fake_server), retries=2)
    with pytest.raises(PolicyCallError, match="gave up after 3 attempts") as info:
        await policy.sample(MESSAGES)
    assert len(fake_server.requests) == 3
    assert isinstance(info.value.__cause__, PolicyCallError)


async def test_timeout_is_retried_then_raised(fake_server: FakeServer) -> None:
    # The server never answers: only the client's own timeout can end each attempt.
    fake_server.script.extend(Reply(hang=True) for _ in range(3))
    policy = retrying(policy_for(fake_server, timeout_s=0.3), retries=1)
    with pytest.raises(PolicyTimeoutError, match=r"no answer within 0.3 s.*gave up after 2"):
        await policy.sample(MESSAGES)
    # Each attempt hung up on the server (none waited for an answer that never came).
    assert len(fake_server.requests) <= 2
    assert await asyncio.to_thread(fake_server.wait_abandoned, len(fake_server.requests))


async def test_timeout_then_success(fake_server: FakeServer) -> None:
    # A generous timeout: the hung first attempt costs it once; the answer to the retry
    # comes well within it even on a loaded machine.
    fake_server.script.append(Reply(hang=True))
    policy = retrying(policy_for(fake_server, timeout_s=1.0))
    candidates = await policy.sample(MESSAGES)
    assert candidates[0].action == "look around"
    assert await asyncio.to_thread(fake_server.wait_abandoned, 1)  # the first one timed out


async def test_connection_refused_raises_call_error_after_retries() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    inner = LiteLLMPolicy("hosted_vllm/fake", api_base=f"http://127.0.0.1:{port}/v1")
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(PolicyCallError, match="gave up after 3 attempts") as error,
    ):
        await retrying(inner, retries=2).sample(MESSAGES)
    assert inner.should_retry(PolicyTimeoutError("x"))
    # The message names the server and the refusal; LiteLLM calls it an
    # InternalServerError with status 500, which no server sent.
    message = str(error.value)
    assert f"connection to http://127.0.0.1:{port}/v1 failed: ConnectionRefusedError" in message
    assert "InternalServerError" not in message
    failures = [e for e in logs if e["event"] == "policy.call_failed"]
    assert len(failures) == 3
    assert all(e["status"] is None and e["error"] == "ConnectionRefusedError" for e in failures)


class RecordingEnv:
    """An environment that only records the actions it is sent."""

    def __init__(self) -> None:
        self.actions: list[str] = []

    async def step(self, action: str) -> StepResult:
        self.actions.append(action)
        return StepResult(observation="ok", reward=0.0, done=False, score=0.0)


async def _run_step(policy: LiteLLMPolicy, env: RecordingEnv) -> Candidate:
    """What the runtime does with a turn: only a parsed action ever reaches the env."""
    (chosen,) = await policy.sample(MESSAGES, n=1)
    if chosen.action is not None:
        await env.step(chosen.action)
    return chosen


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("I think I will go north.", "no 'Action:' line"),
        ("Thought: hmm\nAction:   ", "empty 'Action:'"),
        ("", "empty completion"),
        (None, "empty completion"),
    ],
)
async def test_malformed_or_empty_content_is_a_parse_error_not_an_action(
    fake_server: FakeServer, content: str | None, error: str
) -> None:
    fake_server.script.extend([Reply(texts=[content]), Reply()])
    env = RecordingEnv()
    policy = policy_for(fake_server)
    chosen = await _run_step(policy, env)
    assert chosen.action is None
    assert chosen.parse_error is not None and error in chosen.parse_error
    assert chosen.text == (content or "")  # what the model said is kept for the record
    assert chosen.usage.completion_tokens == 7
    assert env.actions == []
    # the next, well-formed turn does reach the environment
    assert (await _run_step(policy, env)).action == "look around"
    assert env.actions == ["look around"]


async def test_response_without_choices_is_a_retried_call_error(fake_server: FakeServer) -> None:
    bad = {"id": "x", "object": "chat.completion", "created": 0, "model": "fake", "choices": []}
    fake_server.script.extend([Reply(raw=bad), Reply(raw=bad)])
    policy = retrying(policy_for(fake_server), retries=1)
    with pytest.raises(PolicyCallError, match="no choices"):
        await policy.sample(MESSAGES)
    assert len(fake_server.requests) == 2


async def test_api_key_is_sent_but_never_logged_or_stored(
    fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("QLASS_PLANTED", PLANTED_KEY)  # a name the redactor does not know
    fake_server.script.extend([Reply(status=401), Reply(status=500), Reply()])
    cache = InMemoryCallCache()
    inner = policy_for(fake_server, api_key_env="QLASS_PLANTED")
    assert PLANTED_KEY not in repr(inner)
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        with pytest.raises(PolicyCallError) as info:
            await retrying(inner).sample(MESSAGES)
        candidates = await CachedPolicy(retrying(inner), cache).sample(MESSAGES, n=1, seed=3)
    assert candidates[0].action == "look around"
    assert fake_server.headers[0]["authorization"] == f"Bearer {PLANTED_KEY}"
    assert PLANTED_KEY not in str(info.value)
    assert any(e["event"] == "policy.call" for e in events)
    assert PLANTED_KEY not in repr(events)
    assert PLANTED_KEY not in caplog.text
    assert len(cache) == 1
    assert PLANTED_KEY not in repr(cache.records())


def test_missing_api_key_env_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QLASS_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match="QLASS_NOT_SET is not set"):
        LiteLLMPolicy("openai/gpt-4o", api_key_env="QLASS_NOT_SET")


def test_native_n_is_decided_by_provider() -> None:
    assert LiteLLMPolicy("openai/gpt-4o").native_n
    assert LiteLLMPolicy("hosted_vllm/x", api_base="http://127.0.0.1:1/v1").native_n
    anthropic = LiteLLMPolicy("anthropic/claude-3-5-sonnet-20240620")
    assert not anthropic.native_n
    assert anthropic.requests_for(4) == 4


async def test_router_spreads_requests_over_replicas(
    fake_server: FakeServer, fake_server_2: FakeServer
) -> None:
    policy = LiteLLMPolicy(
        "hosted_vllm/fake", api_base=[fake_server.base_url, fake_server_2.base_url]
    )
    results = await asyncio.gather(*(policy.sample(MESSAGES, n=2) for _ in range(16)))
    assert all(len(r) == 2 and r[0].text == DEFAULT_TEXT for r in results)
    assert len(fake_server.requests) + len(fake_server_2.requests) == 16
    assert fake_server.requests and fake_server_2.requests


async def test_router_failures_are_translated_and_retried(
    fake_server: FakeServer, fake_server_2: FakeServer
) -> None:
    for server in (fake_server, fake_server_2):
        server.script.append(Reply(status=503))
    inner = LiteLLMPolicy(
        "hosted_vllm/fake", api_base=[fake_server.base_url, fake_server_2.base_url]
    )
    candidates = await retrying(inner, retries=3).sample(MESSAGES)
    assert candidates[0].action == "look around"
    assert len(fake_server.requests) + len(fake_server_2.requests) in (2, 3)
    fake_server.script.extend(Reply(status=400) for _ in range(3))
    fake_server_2.script.extend(Reply(status=400) for _ in range(3))
    with pytest.raises(PolicyCallError, match="400"):
        await retrying(inner, retries=3).sample(MESSAGES)
