"""An OpenAI-compatible chat-completions server over the local transformers backend.

``qlass serve MODEL_DIR`` runs :func:`create_app` under uvicorn, so that LiteLLM
(``hosted_vllm/<name>`` with ``api_base=http://HOST:PORT/v1``), the ``openai`` client or any
OpenAI-compatible tool can use a model on disk. Concurrent requests are micro-batched by
:class:`~qlass.backends.hf.HFPolicy`. For large models use vLLM's own server instead
(``vllm serve``); qlass reaches both the same way.

Endpoints: ``POST /v1/chat/completions`` (``messages``, ``n``, ``temperature``,
``max_tokens``/``max_completion_tokens``, ``stop``, ``seed``; no streaming), ``GET /v1/models``,
``GET /health`` and ``GET /stats`` (request, token and batch counters).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from qlass.backends.hf import HFPolicy, PromptTooLongError
from qlass.errors import PolicyError
from qlass.types import ChatMessage

__all__ = ["ChatRequest", "ServerStats", "bind", "create_app", "serve"]

log = structlog.get_logger(__name__)


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content)


class ChatRequest(BaseModel):
    """The part of OpenAI's chat-completions request this server honours."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[_Message] = Field(min_length=1)
    n: int = Field(1, ge=1, le=128)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False


@dataclass
class ServerStats:
    """Counters served at ``/stats`` (tests use them to see what reached the model)."""

    requests: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": status}},
        status_code=status,
    )


def create_app(
    policy: HFPolicy, *, model_name: str | None = None, default_max_tokens: int = 256
) -> FastAPI:
    """A FastAPI app serving ``policy`` under ``model_name`` (default: its own name).

    The app owns the policy: it is closed when the app shuts down.
    """
    name = model_name or policy.model_name
    stats = ServerStats()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await policy.aclose()

    app = FastAPI(title="qlass policy server", lifespan=lifespan)
    app.state.stats = stats

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        stats.errors += 1
        return _error(400, f"invalid request: {exc.errors()}")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": name}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "qlass"}],
        }

    @app.get("/stats")
    async def get_stats() -> dict[str, Any]:
        batches = policy.stats
        return {**asdict(stats), "batches": batches.batches, "mean_batch": batches.mean_batch}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest) -> JSONResponse | dict[str, Any]:
        stats.requests += 1
        if body.model != name:
            stats.errors += 1
            return _error(404, f"model {body.model!r} is not served here (serving {name!r})")
        if body.stream:
            stats.errors += 1
            return _error(400, "streaming is not supported by qlass serve")
        messages: list[ChatMessage] = [{"role": m.role, "content": m.text()} for m in body.messages]
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
        try:
            generations = await policy.generate(
                messages,
                n=body.n,
                temperature=body.temperature,
                max_tokens=max_tokens,
                stop=stop,
                seed=body.seed,
            )
        except PromptTooLongError as exc:
            stats.errors += 1
            return _error(400, str(exc))
        except PolicyError as exc:
            stats.errors += 1
            log.error("serve.generation_failed", error=str(exc))
            return _error(500, str(exc), "server_error")
        prompt_tokens = generations[0].prompt_tokens
        completion_tokens = sum(g.completion_tokens for g in generations)
        stats.completions += len(generations)
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": g.text},
                    "finish_reason": g.finish_reason,
                    "logprobs": None,
                }
                for i, g in enumerate(generations)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: a free port the OS picks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def serve(app: FastAPI, sock: socket.socket, *, access_log: bool = False) -> None:
    """Run ``app`` on the bound socket until interrupted (blocking; for the CLI).

    uvicorn's records go to the standard library's logging as they are (``log_config``
    None, no levels of its own), where qlass's handler renders them.
    """
    import logging

    import uvicorn

    if access_log:  # its lines are INFO records of "uvicorn.access"
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    config = uvicorn.Config(
        app, log_level=None, access_log=access_log, log_config=None, lifespan="on"
    )
    uvicorn.Server(config).run(sockets=[sock])
