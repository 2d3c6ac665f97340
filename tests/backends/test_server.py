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
    ("body", "status", "param", "code", "message"),
    [
        ({"model": "other", "messages": MESSAGES}, 404, "model", "model_not_found", "'other'"),
        (
            {"model": "tiny", "messages": MESSAGES, "stream": True},
            400,
            "stream",
            "unsupported_value",
            "streaming is not supported",
        ),
        ({"model": "tiny", "messages": []}, 400, "messages", "invalid_value", "at least 1"),
        ({"model": "tiny", "messages": MESSAGES, "n": 0}, 400, "n", "invalid_value", "n"),
        ({"messages": MESSAGES}, 400, "model", None, "Missing required parameter: 'model'"),
        (
            {"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]},
            400,
            "messages[0].role",
            "invalid_value",
            "'system'",
        ),
        (
            {"model": "tiny", "messages": MESSAGES, "max_tokens": 5000},
            400,
            "max_tokens",
            "context_length_exceeded",
            "leaves no room",
        ),
        (
            {"model": "tiny", "messages": MESSAGES, "temperature": 0, "bogus": 1},
            400,
            "bogus",
            None,
            "Unrecognized request argument supplied: bogus",
        ),
    ],
)
async def test_errors_use_the_openai_error_shape(
    tiny_model_dir: Path,
    body: dict[str, object],
    status: int,
    param: str,
    code: str | None,
    message: str,
) -> None:
    client, policy = await client_for(tiny_model_dir)
    async with client:
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == status
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert error["code"] == code  # a string or null, never the HTTP status
        assert message in error["message"]
        assert len(error["message"]) < 300 and "\n" not in error["message"]
        assert "{" not in error["message"]  # no Python reprs of validation errors
        assert (await client.get("/stats")).json()["errors"] == 1
    await policy.aclose()


UNSUPPORTED = [
    ("tools", [{"type": "function", "function": {"name": "look"}}]),
    ("tool_choice", "auto"),
    ("response_format", {"type": "json_object"}),
    ("frequency_penalty", 0.5),
    ("presence_penalty", -1.0),
    ("logit_bias", {"17": 5}),
    ("functions", [{"name": "look"}]),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("reasoning_effort", "low"),
]


@pytest.mark.parametrize(("field", "value"), UNSUPPORTED)
async def test_fields_it_cannot_honour_are_refused_not_ignored(
    tiny_model_dir: Path, field: str, value: object
) -> None:
    client, policy = await client_for(tiny_model_dir)
    async with client:
        body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, field: value}
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == field and error["code"] == "unsupported_parameter"
        assert f"'{field}' is not supported" in error["message"]
        assert (await client.get("/stats")).json()["completions"] == 0  # nothing generated
    await policy.aclose()


@pytest.mark.parametrize(
    ("message", "param", "text"),
    [
        (
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            "messages[1].content",
            "reads text only",
        ),
        ({"role": "tool", "content": "42", "tool_call_id": "t1"}, "messages[1].role", "tool"),
        ({"role": "user", "content": "hi", "name": "bob"}, "messages[1].name", "names"),
    ],
)
async def test_messages_it_cannot_read_are_refused(
    tiny_model_dir: Path, message: dict[str, object], param: str, text: str
) -> None:
    client, policy = await client_for(tiny_model_dir)
    async with client:
        body = {"model": "tiny", "messages": [MESSAGES[0], message], "max_tokens": 2}
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == param and text in error["message"]
    await policy.aclose()


async def test_neutral_values_and_harmless_fields_are_accepted(tiny_model_dir: Path) -> None:
    client, policy = await client_for(tiny_model_dir)
    async with client:
        body = {
            "model": "tiny",
            "messages": [
                {"role": "developer", "content": "You play a game."},
                {"role": "user", "content": [{"type": "text", "text": "Observation: kitchen"}]},
            ],
            "max_tokens": 3,
            "frequency_penalty": 0,
            "presence_penalty": 0.0,
            "response_format": {"type": "text"},
            "tool_choice": "none",
            "user": "someone",
            "metadata": {"run": "1"},
            "store": False,
            "logit_bias": {},
            "stream": False,
        }
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
    await policy.aclose()


async def test_a_body_that_is_not_json_gets_a_short_error(tiny_model_dir: Path) -> None:
    client, policy = await client_for(tiny_model_dir)
    async with client:
        junk = b"not json at all " * 12_800  # 200 KB
        response = await client.post(
            "/v1/chat/completions", content=junk, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert len(response.content) < 400
        assert "not valid JSON" in response.json()["error"]["message"]
        array = await client.post("/v1/chat/completions", json=[1, 2])
        assert array.status_code == 400 and "JSON object" in array.json()["error"]["message"]
        missing = await client.get("/v1/nothing-here")
        assert missing.status_code == 404
        assert missing.json()["error"]["message"] == "Unknown request URL: GET /v1/nothing-here."
    await policy.aclose()


async def test_model_endpoint_by_id(tiny_model_dir: Path) -> None:
    client, policy = await client_for(tiny_model_dir)
    async with client:
        card = (await client.get("/v1/models/tiny")).json()
        assert card == {"id": "tiny", "object": "model", "created": 0, "owned_by": "qlass"}
        other = await client.get("/v1/models/gpt-4o")
        assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"
    await policy.aclose()


def long_messages(turns: int) -> list[dict[str, str]]:
    messages = list(MESSAGES)
    for t in range(turns):
        messages.append({"role": "assistant", "content": f"Action: move north {t}"})
        messages.append({"role": "user", "content": f"Observation: corridor {t} " * 6})
    return messages


async def test_an_over_long_conversation_is_refused_unless_trimming_is_on(
    tiny_model_dir: Path,
) -> None:
    policy = await asyncio.to_thread(
        HFPolicy, tiny_model_dir, device="cpu", model_name="tiny", max_context=200
    )
    long = long_messages(13)  # 28 messages
    prompt = policy.count_prompt_tokens(long)  # type: ignore[arg-type]
    assert prompt > 200
    body = {"model": "tiny", "messages": long, "max_tokens": 8, "temperature": 0}
    strict = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(policy)), base_url="http://qlass"
    )
    async with strict:
        response = await strict.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "context_length_exceeded")
    assert f"requested {prompt + 8} tokens ({prompt} in the messages" in error["message"]
    assert "--trim-history" in error["message"]

    trimming = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(policy, trim_history=True)),
        base_url="http://qlass",
    )
    async with trimming:
        response = await trimming.post("/v1/chat/completions", json=body)
        assert response.status_code == 200
        reply = response.json()
        dropped = reply["qlass"]["dropped_messages"]
        assert dropped >= 2 and response.headers["x-qlass-dropped-messages"] == str(dropped)
        assert reply["usage"]["prompt_tokens"] <= 200 - 8
        short = await trimming.post("/v1/chat/completions", json={**body, "messages": MESSAGES})
        assert short.json()["qlass"] == {"dropped_messages": 0}
        assert (await trimming.get("/stats")).json()["trimmed_requests"] == 1
    await policy.aclose()


async def test_top_p_and_logprobs_reach_the_model(tiny_model_dir: Path) -> None:
    client, policy = await client_for(tiny_model_dir)
    async with client:
        base = {"model": "tiny", "messages": MESSAGES, "max_tokens": 10}
        greedy = await client.post("/v1/chat/completions", json={**base, "temperature": 0})
        nucleus = await client.post(
            "/v1/chat/completions",
            json={**base, "temperature": 1.5, "top_p": 0.0, "seed": 4, "n": 3},
        )
        texts = {c["message"]["content"] for c in nucleus.json()["choices"]}
        assert texts == {greedy.json()["choices"][0]["message"]["content"]}
        with_logprobs = await client.post(
            "/v1/chat/completions",
            json={**base, "temperature": 0, "logprobs": True, "top_logprobs": 2},
        )
        choice = with_logprobs.json()["choices"][0]
        content = choice["logprobs"]["content"]
        assert "".join(t["token"] for t in content) == choice["message"]["content"]
        for token in content:
            assert set(token) == {"token", "logprob", "bytes", "top_logprobs"}
            assert token["bytes"] == list(token["token"].encode())
            assert len(token["top_logprobs"]) == 2
            assert token["logprob"] == pytest.approx(token["top_logprobs"][0]["logprob"])
        assert greedy.json()["choices"][0]["logprobs"] is None
        lonely = await client.post("/v1/chat/completions", json={**base, "top_logprobs": 2})
        assert lonely.status_code == 400 and lonely.json()["error"]["param"] == "top_logprobs"
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
