"""The OpenAI-compatible server (in process): schema, errors, batching of concurrent requests.

Real HTTP against a ``qlass serve`` subprocess is in test_serve_e2e.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from qlass.backends.hf import HFPolicy
from qlass.backends.server import create_app

MESSAGES = [
    {"role": "system", "content": "You play a game."},
    {"role": "user", "content": "Observation: You are in the kitchen."},
]


async def client_for(model_dir: Path, **options: object) -> tuple[httpx.AsyncClient, HFPolicy]:
    policy = await asyncio.to_thread(
        HFPolicy,
        model_dir,
        device="cpu",
        model_name="tiny",
        **options,  # type: ignore[arg-type]
    )
    app = create_app(policy)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://qlass")
    return client, policy


async def test_chat_completion_schema_and_usage(tiny_model_dir: Path) -> None:
    client, policy = await client_for(tiny_model_dir)
    async with client:
        body = {"model": "tiny", "messages": MESSAGES, "n": 3, "max_tokens": 6, "seed": 2}
        reply = (await client.post("/v1/chat/completions", json=body)).json()
        assert reply["object"] == "chat.completion" and reply["model"] == "tiny"
        assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
        assert all(c["message"]["role"] == "assistant" for c in reply["choices"])
        assert all(c["finish_reason"] in {"stop", "length"} for c in reply["choices"])
        usage = reply["usage"]
        prompt = policy.count_prompt_tokens(MESSAGES)  # type: ignore[arg-type]
        assert usage["prompt_tokens"] == prompt
        assert 3 <= usage["completion_tokens"] <= 18
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        again = (await client.post("/v1/chat/completions", json=body)).json()
        assert [c["message"] for c in again["choices"]] == [c["message"] for c in reply["choices"]]
        stats = (await client.get("/stats")).json()
        assert stats["requests"] == 2 and stats["completions"] == 6
        assert stats["prompt_tokens"] == 2 * prompt
        models = (await client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
        assert (await client.get("/health")).json()["status"] == "ok"
    await policy.aclose()


async def test_concurrent_requests_are_batched(tiny_model_dir: Path) -> None:
    client, policy = await client_for(tiny_model_dir, max_wait_s=0.1, max_batch=16)
    async with client:
        bodies = [
            {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "seed": i, "n": 2}
            for i in range(6)
        ]
        replies = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=b) for b in bodies)
        )
        assert all(r.status_code == 200 for r in replies)
        assert policy.stats.items == 12
        assert policy.stats.batches < 6
    await policy.aclose()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "other", "messages": MESSAGES}, 404, "not served here"),
        ({"model": "tiny", "messages": MESSAGES, "stream": True}, 400, "streaming"),
        ({"model": "tiny", "messages": []}, 400, "invalid request"),
        ({"model": "tiny", "messages": MESSAGES, "n": 0}, 400, "invalid request"),
        ({"model": "tiny", "messages": MESSAGES, "max_tokens": 5000}, 400, "leaves no room"),
    ],
)
async def test_errors_use_the_openai_error_shape(
    tiny_model_dir: Path, body: dict[str, object], status: int, message: str
) -> None:
    client, policy = await client_for(tiny_model_dir)
    async with client:
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == status
        assert message in response.json()["error"]["message"]
        assert (await client.get("/stats")).json()["errors"] == 1
    await policy.aclose()


async def test_stop_and_max_completion_tokens(tiny_model_dir: Path) -> None:
    client, policy = await client_for(tiny_model_dir)
    async with client:
        base = {"model": "tiny", "messages": MESSAGES, "seed": 5, "temperature": 1.0}
        free = (await client.post("/v1/chat/completions", json={**base, "max_tokens": 20})).json()
        text = free["choices"][0]["message"]["content"]
        stop = text[3:5]
        cut = await client.post(
            "/v1/chat/completions", json={**base, "max_completion_tokens": 20, "stop": stop}
        )
        choice = cut.json()["choices"][0]
        assert choice["message"]["content"] == text[: text.index(stop)]
        assert choice["finish_reason"] == "stop"
        short = await client.post("/v1/chat/completions", json={**base, "max_tokens": 2})
        assert short.json()["usage"]["completion_tokens"] <= 2
    await policy.aclose()
