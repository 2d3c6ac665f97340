"""Helpers for backend tests: a programmable OpenAI-compatible server, a tiny action model.

:class:`FakeServer` runs a real uvicorn server in a thread; each test scripts its answers
(status codes, hangs, contents) and reads back what it received, so LiteLLM is exercised
over real HTTP with no mocked transport. :func:`train_action_model` behaviour-clones a tiny
model on TextWorldExpress gold paths so that it answers in the ``Action: ...`` format.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from qlass.parsing import format_turn
from qlass.types import ChatMessage, TaskSpec

DEFAULT_TEXT = "Thought: I should look around.\nAction: look around"


@dataclass
class Reply:
    """One scripted answer. ``status`` != 200 sends an OpenAI-style error body."""

    status: int = 200
    texts: list[str | None] | None = None  # one per choice; None: DEFAULT_TEXT
    hang: bool = False  # answer only once the client has given up (and then not at all)
    headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 11
    completion_tokens: int = 7
    raw: Any = None  # a body sent as is (malformed responses)


class FakeServer:
    """A scripted chat-completions server. Unscripted requests get a default 200 answer."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.abandoned = 0  # requests whose client hung up before the answer was sent
        self._abandoned_changed = threading.Condition()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._complete)
        self.app.get("/v1/models")(self._models)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def wait_abandoned(self, count: int, timeout_s: float = 60.0) -> bool:
        """Block until ``count`` requests were abandoned by their client (False: never)."""
        with self._abandoned_changed:
            return self._abandoned_changed.wait_for(lambda: self.abandoned >= count, timeout_s)

    async def _models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fake", "object": "model"}]}

    async def _complete(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        reply = self.script.pop(0) if self.script else Reply()
        # A hanging server waits for its client to give up (bounded, so that a client that
        # never gives up fails its test rather than hangs it).
        deadline = time.monotonic() + 300.0
        while reply.hang and time.monotonic() < deadline:
            if await request.is_disconnected():
                with self._abandoned_changed:
                    self.abandoned += 1
                    self._abandoned_changed.notify_all()
                return JSONResponse({}, status_code=499)
            await asyncio.sleep(0.02)
        if reply.raw is not None:
            return JSONResponse(reply.raw, status_code=reply.status, headers=reply.headers)
        if reply.status != 200:
            error = {"error": {"message": f"scripted {reply.status}", "type": "scripted"}}
            return JSONResponse(error, status_code=reply.status, headers=reply.headers)
        n = int(body.get("n") or 1)
        texts = reply.texts if reply.texts is not None else [DEFAULT_TEXT] * n
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
            for i, text in enumerate(texts)
        ]
        return JSONResponse(
            {
                "id": f"cmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": choices,
                "usage": {
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                },
            },
            headers=reply.headers,
        )


# -- a tiny policy that answers in the "Action: ..." format ------------------------------

TWX_GAME = "coin"
TWX_PARAMS = "numLocations=3,includeDoors=0"
SYSTEM_PROMPT = "You play a text game. Answer with 'Action: <command>'."


def episode_messages(instruction: str, observation: str) -> list[ChatMessage]:
    """A short prompt (task + the end of the observation) keeps training and tests cheap."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{instruction}\nObservation: {observation[-200:]}"},
    ]


async def _gold_examples_async(seeds: range) -> list[tuple[list[ChatMessage], str]]:
    from qlass.envs.textworld_express import TextWorldExpressEnv

    examples: list[tuple[list[ChatMessage], str]] = []
    env = TextWorldExpressEnv()
    try:
        for seed in seeds:
            task = TaskSpec("textworld_express", TWX_GAME, seed, "train", TWX_PARAMS)
            gold = await env.gold_actions(task)
            first = await env.reset(task)
            observation = first.text
            for action in gold:
                messages = episode_messages(first.instruction, observation)
                examples.append((messages, format_turn(action)))
                result = await env.step(action)
                observation = result.observation
                if result.done:
                    break
    finally:
        await env.close()
    return examples


def gold_examples(seeds: range) -> list[tuple[list[ChatMessage], str]]:
    """(messages, target turn) pairs from TextWorldExpress gold paths."""
    return asyncio.run(_gold_examples_async(seeds))


def train_action_model(directory: Path, *, steps: int = 30, seed: int = 0) -> Path:
    """Behaviour-clone a 2-layer model on a few gold paths, enough to answer in format."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors on a shared 2-core box: threads only thrash
    try:
        return _train(directory, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(directory: Path, steps: int, seed: int) -> Path:
    import torch

    from qlass.backends.tiny import new_tiny_model, save_model, train_tokenizer

    examples = gold_examples(range(8))
    texts = [m["content"] for messages, _ in examples for m in messages] + [t for _, t in examples]
    tokenizer = train_tokenizer(texts, vocab_size=512)
    model = new_tiny_model(tokenizer, layers=2, width=64, heads=2, max_positions=1024, seed=seed)
    rows = []
    for messages, target in examples:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(target + "<|end|>", add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        picks = torch.randint(len(rows), (8,), generator=generator).tolist()
        width = max(len(rows[i][0]) for i in picks)
        ids = torch.full((8, width), tokenizer.pad_token_id)
        labels = torch.full((8, width), -100)
        mask = torch.zeros((8, width), dtype=torch.long)
        for r, i in enumerate(picks):
            seq, lab = rows[i]
            ids[r, : len(seq)] = torch.tensor(seq)
            labels[r, : len(lab)] = torch.tensor(lab)
            mask[r, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return save_model(model, tokenizer, directory)
