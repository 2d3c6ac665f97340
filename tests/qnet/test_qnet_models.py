import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from qlass.errors import ConfigError, UnknownNameError, ValueModelError
from qlass.qnet import create_value_model
from qlass.qnet.base import ValueModel, ValueQuery
from qlass.qnet.constant import ConstantValueModel, RandomValueModel
from qlass.qnet.judge import LLMJudgeValueModel, judge_messages, parse_rating
from tests.qnet.qnet_helpers import make_history, varied_queries


async def test_constant_model() -> None:
    model = create_value_model("constant", value=0.25)
    assert isinstance(model, ConstantValueModel)
    assert await model.score(varied_queries(3)) == [0.25, 0.25, 0.25]


async def test_random_model_is_seeded_and_order_independent() -> None:
    queries = varied_queries(10)
    a = await RandomValueModel(seed=1).score(queries)
    b = await RandomValueModel(seed=1).score(list(reversed(queries)))
    c = await RandomValueModel(seed=2).score(queries)
    assert a == list(reversed(b))
    assert a != c
    assert all(0.0 <= x < 1.0 for x in a) and len(set(a)) == 10


def test_registry_errors() -> None:
    with pytest.raises(UnknownNameError, match="choose one of: constant, judge, qnet"):
        create_value_model("oracle")
    with pytest.raises(ConfigError, match="bad options"):
        create_value_model("constant", colour="red")


async def test_registry_builds_qnet_and_server_client(qnet_dir: Path) -> None:
    scorer = await asyncio.to_thread(create_value_model, "qnet", directory=qnet_dir, device="cpu")
    client = create_value_model("qnet-server", url="http://127.0.0.1:1")
    assert isinstance(scorer, ValueModel) and isinstance(client, ValueModel)
    assert len(await scorer.score(varied_queries(2))) == 2
    await scorer.aclose()
    await client.aclose()


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("7", 7.0),
        ("Rating: 8/10", 8.0),
        ("I'd say 9.5.", 9.5),
        ("0", 0.0),
        ("-3", None),
        ("11", None),
        ("no idea", None),
        ("", None),
    ],
)
def test_parse_rating(reply: str, rating: float | None) -> None:
    assert parse_rating(reply) == rating


def test_judge_prompt_holds_task_history_and_candidate() -> None:
    messages = judge_messages(make_history(4, 2), "Action: move north")
    assert messages[0]["role"] == "system" and "0" in messages[0]["content"]
    user = messages[1]["content"]
    assert "find the coin in house 4" in user
    assert "Step 2: Thought: step 1 of the search." in user
    assert user.index("Step 2") < user.index("Candidate next step:\nAction: move north")


@pytest.fixture(scope="module")
def judge_server(serve_app):
    """An OpenAI-compatible chat server that rates 'north' 9, 'south' 2, else babbles."""
    app = FastAPI()
    seen: list[dict] = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = json.loads(await request.body())
        seen.append(body)
        if body["model"] == "flaky" and sum(b["model"] == "flaky" for b in seen) == 1:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        prompt = body["messages"][-1]["content"]
        candidate = prompt.split("Candidate next step:")[1]
        reply = "9" if "north" in candidate else "2" if "south" in candidate else "hmm, hard to say"
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 50, "completion_tokens": 1, "total_tokens": 51},
        }

    with serve_app(app) as url:
        yield url, seen


async def test_judge_over_http(judge_server) -> None:
    url, seen = judge_server
    judge = create_value_model(
        "judge", model="openai/judge-model", api_base=f"{url}/v1", api_key="sk-local", retries=0
    )
    assert isinstance(judge, LLMJudgeValueModel)
    history = make_history(0, 1)
    scores = await judge.score(
        [
            ValueQuery(history, "Action: move north"),
            ValueQuery(history, "Action: move south"),
            ValueQuery(history, "Action: dance"),
        ]
    )
    assert scores == [pytest.approx(0.9), pytest.approx(0.2), 0.5]
    assert judge.unparsable == 1
    assert judge.usage.prompt_tokens == 150
    assert seen[-1]["model"] == "judge-model"
    assert seen[-1]["temperature"] == 0.0


async def test_judge_unreachable_raises(judge_server) -> None:
    from tests.qnet.qnet_helpers import free_port

    judge = LLMJudgeValueModel(
        "openai/judge-model",
        api_base=f"http://127.0.0.1:{free_port()}/v1",
        api_key="x",
        retries=0,
        timeout_s=5,
    )
    with pytest.raises(ValueModelError, match="LLM judge call to openai/judge-model failed"):
        await judge.score([ValueQuery(make_history(0, 0), "Action: go")])


async def test_judge_retries_a_transient_failure_through_its_policy_stack(judge_server) -> None:
    url, seen = judge_server
    judge = create_value_model(
        "judge", model="openai/flaky", api_base=f"{url}/v1", api_key="sk-local", retries=1
    )
    assert await judge.score([ValueQuery(make_history(0, 0), "Action: move north")]) == [
        pytest.approx(0.9)
    ]
    assert sum(b["model"] == "flaky" for b in seen) == 2  # a 503, then the answer
    await judge.aclose()
