"""``qlass serve-qnet``: a batched HTTP scoring server around any :class:`ValueModel`.

    POST /v1/score   {"queries": [{"history": {...}, "candidate_text": "..."}]}
                     -> {"scores": [0.42, ...], "model": "..."}
    GET  /health     -> {"status": "ok", "model": "...", "stats": {...}}

Every request's queries go through the same value model; with a :class:`QNetScorer` the
queries of concurrent requests are micro-batched into shared forward passes. The history
format is the one in :mod:`qlass.qnet._wire`. A failed scoring answers 500 with the reason;
a malformed body answers 422; more than ``max_queries`` in one request answers 413.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from qlass.errors import ValueModelError
from qlass.qnet.base import ValueModel, ValueQuery
from qlass.types import History, Turn

__all__ = ["ScoreRequest", "ScoreResponse", "create_app", "serve"]

log = structlog.get_logger(__name__)


class _TurnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    action: str | None = None
    observation: str


class _HistoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instruction: str
    initial_observation: str
    turns: list[_TurnIn] = Field(default_factory=list)


class _QueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: _HistoryIn
    candidate_text: str

    def to_query(self) -> ValueQuery:
        h = self.history
        turns = tuple(Turn(t.text, t.action, t.observation) for t in h.turns)
        return ValueQuery(History(h.instruction, h.initial_observation, turns), self.candidate_text)


class ScoreRequest(BaseModel):
    """Body of ``POST /v1/score``."""

    model_config = ConfigDict(extra="forbid")
    queries: list[_QueryIn]


class ScoreResponse(BaseModel):
    """Answer of ``POST /v1/score``: one score per query, in order."""

    scores: list[float]
    model: str


def create_app(
    model: ValueModel, *, name: str = "qnet", max_queries: int = 4096, close_model: bool = True
) -> FastAPI:
    """The FastAPI app serving ``model``; it closes the model on shutdown if ``close_model``."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_model:
            await model.aclose()

    app = FastAPI(title="qlass value model server", lifespan=lifespan)

    @app.post("/v1/score", response_model=ScoreResponse)
    async def score(request: ScoreRequest) -> Any:
        if len(request.queries) > max_queries:
            raise HTTPException(413, f"at most {max_queries} queries per request")
        try:
            scores = await model.score([q.to_query() for q in request.queries])
        except ValueModelError as exc:
            log.error("scoring failed", error=str(exc))
            return JSONResponse({"detail": f"scoring failed: {exc}"}, status_code=500)
        return ScoreResponse(scores=scores, model=name)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats = getattr(model, "stats", None)
        as_dict = getattr(stats, "as_dict", None)
        return {"status": "ok", "model": name, "stats": as_dict() if callable(as_dict) else {}}

    return app


def serve(
    checkpoint: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    device: str = "auto",
    max_batch: int = 32,
    token_budget: int | None = None,
    max_wait_s: float = 0.005,
    cache_size: int = 100_000,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Load a QNet checkpoint and serve it until interrupted (blocking).

    ``on_ready`` is called once the checkpoint has loaded, before the server starts: the
    place to print its URL (a checkpoint that fails to load never gets that far).
    """
    import uvicorn

    from qlass.qnet.scorer import QNetScorer

    scorer = QNetScorer.from_pretrained(
        checkpoint,
        device=device,
        max_batch=max_batch,
        token_budget=token_budget,
        max_wait_s=max_wait_s,
        cache_size=cache_size,
    )
    app = create_app(scorer, name=f"qnet:{checkpoint.name}")
    if on_ready is not None:
        on_ready()
    log.info(
        "serving qnet", checkpoint=str(checkpoint), host=host, port=port, device=str(scorer.device)
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
