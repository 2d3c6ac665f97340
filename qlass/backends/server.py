"""An OpenAI-compatible chat-completions server over the local transformers backend.

``qlass serve MODEL_DIR`` runs :func:`create_app` under uvicorn, so that LiteLLM
(``hosted_vllm/<name>`` with ``api_base=http://HOST:PORT/v1``), the ``openai`` client or any
OpenAI-compatible tool can use a model on disk. Concurrent requests are micro-batched by
:class:`~qlass.backends.hf.HFPolicy`. For large models use vLLM's own server instead
(``vllm serve``); qlass reaches both the same way.

Endpoints: ``POST /v1/chat/completions`` (``messages``, ``n``, ``temperature``, ``top_p``,
``max_tokens``/``max_completion_tokens``, ``stop``, ``seed``, ``logprobs``/``top_logprobs``;
no streaming), ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` and
``GET /stats`` (request, token and batch counters). What else OpenAI's request may hold,
and which of it is refused, is in :mod:`qlass.backends._openai_wire`.

A conversation that does not fit the model's context is refused (400,
``context_length_exceeded``), as OpenAI refuses it. With ``trim_history=True`` the oldest
turns are dropped instead (see :class:`~qlass.backends.hf.HFPolicy`) and every response
says how many: ``"qlass": {"dropped_messages": k}`` in the body and the
``x-qlass-dropped-messages`` header.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from qlass.backends._openai_wire import (
    ChatRequest,
    WireError,
    error_response,
    logprobs_body,
    validation_error,
)
from qlass.backends.hf import Generation, HFPolicy, PromptTooLongError
from qlass.errors import PolicyError
from qlass.types import ChatMessage

__all__ = ["ChatRequest", "ServerStats", "bind", "create_app", "serve"]

log = structlog.get_logger(__name__)

TRIM_HEADER = "x-qlass-dropped-messages"


@dataclass
class ServerStats:
    """Counters served at ``/stats`` (tests use them to see what reached the model)."""

    requests: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    trimmed_requests: int = 0


def create_app(
    policy: HFPolicy,
    *,
    model_name: str | None = None,
    default_max_tokens: int = 256,
    trim_history: bool = False,
) -> FastAPI:
    """A FastAPI app serving ``policy`` under ``model_name`` (default: its own name).

    ``trim_history``: drop the oldest turns of a conversation that does not fit the
    context (reported in the response) instead of refusing it with 400.
    The app owns the policy: it is closed when the app shuts down.
    """
    name = model_name or policy.model_name
    stats = ServerStats()
    model_card = {"id": name, "object": "model", "created": 0, "owned_by": "qlass"}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await policy.aclose()

    app = FastAPI(title="qlass policy server", lifespan=lifespan)
    app.state.stats = stats

    def fail(error: WireError) -> JSONResponse:
        stats.errors += 1
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return fail(WireError(400, f"invalid request: {len(exc.errors())} problem(s)"))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
        else:
            message = str(exc.detail)[:200]
        return fail(WireError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def _crash(_request: Request, exc: Exception) -> JSONResponse:
        log.error("serve.internal_error", error=f"{type(exc).__name__}: {exc}")
        return fail(WireError(500, "internal server error", kind="server_error"))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": name}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}", response_model=None)
    async def model(model_id: str) -> JSONResponse | dict[str, Any]:
        if model_id != name:
            return fail(_unknown_model(model_id, name))
        return model_card

    @app.get("/stats")
    async def get_stats() -> dict[str, Any]:
        batches = policy.stats
        return {**asdict(stats), "batches": batches.batches, "mean_batch": batches.mean_batch}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse:
        stats.requests += 1
        try:
            body = _parse(await request.body())
            if body.model != name:
                raise _unknown_model(body.model, name)
            problem = body.unsupported()
            if problem is not None:
                raise problem
            generations = await _generate(body)
        except WireError as error:
            return fail(error)
        completion_tokens = sum(g.completion_tokens for g in generations)
        prompt_tokens = generations[0].prompt_tokens
        stats.completions += len(generations)
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        reply: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": [_choice(i, g) for i, g in enumerate(generations)],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        headers = {}
        if trim_history:
            dropped = generations[0].dropped_messages
            stats.trimmed_requests += dropped > 0
            reply["qlass"] = {"dropped_messages": dropped}
            headers[TRIM_HEADER] = str(dropped)
        return JSONResponse(reply, headers=headers)

    async def _generate(body: ChatRequest) -> list[Generation]:
        messages: list[ChatMessage] = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}  # type: ignore[typeddict-item]
            for m in body.messages
        ]
        max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
        try:
            return await policy.generate(
                messages,
                n=body.n,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                max_tokens=max_tokens,
                stop=body.stops,
                seed=body.seed,
                logprobs=(body.top_logprobs or 0) if body.logprobs else None,
                trim=trim_history,
            )
        except PromptTooLongError as exc:
            if max_tokens >= policy.max_context:
                raise WireError(400, str(exc), "max_tokens", "context_length_exceeded") from exc
            prompt = policy.count_prompt_tokens(messages)
            hint = (
                " (even with the oldest turns dropped)"
                if trim_history
                else " (qlass serve drops no messages unless started with --trim-history)"
            )
            raise WireError(
                400,
                f"This model's maximum context length is {policy.max_context} tokens. "
                f"However, you requested {prompt + max_tokens} tokens ({prompt} in the "
                f"messages, {max_tokens} in the completion). Please reduce the length of the "
                f"messages or completion{hint}.",
                "messages",
                "context_length_exceeded",
            ) from exc
        except PolicyError as exc:
            log.error("serve.generation_failed", error=str(exc))
            raise WireError(500, str(exc)[:200], kind="server_error") from exc

    return app


def _parse(raw: bytes) -> ChatRequest:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError(
            400, "We could not parse the JSON body of your request: it is not valid JSON."
        ) from None
    if not isinstance(data, dict):
        raise WireError(400, "The request body must be a JSON object.")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _unknown_model(asked: object, served: str) -> WireError:
    shown = str(asked)[:100]
    return WireError(
        404,
        f"The model '{shown}' does not exist: this server serves '{served}'.",
        "model",
        "model_not_found",
    )


def _choice(index: int, generation: Generation) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": generation.text},
        "finish_reason": generation.finish_reason,
        "logprobs": logprobs_body(generation.logprobs) if generation.logprobs is not None else None,
    }


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
