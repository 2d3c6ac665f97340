"""``QNetClient``: a :class:`ValueModel` that scores through a ``qlass serve-qnet`` server.

An agent anywhere (one driving an API model such as GPT-4o, say) is guided by a QNet that
runs on another machine. Each call makes one attempt; a failure raises
:class:`ValueModelError` saying why, and the client's ``should_retry`` hook calls
connection errors, timeouts and 5xx answers transient, so that
:class:`~qlass.qnet.wrappers.RetryingValueModel` (which ``create_value_model("qnet-server",
...)`` puts around it) retries them with exponential backoff.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import httpx

from qlass.errors import ValueModelError
from qlass.qnet._wire import query_to_json
from qlass.qnet.base import BaseValueModel, ValueQuery

__all__ = ["QNetClient"]


class _ServerError(Exception):
    """The server answered 5xx (it may recover)."""


class QNetClient(BaseValueModel):
    """Scores queries by ``POST {url}/v1/score``.

    Args:
        url: the server's base URL, e.g. ``http://gpu-box:8765``.
        timeout_s: per-request timeout.
        max_queries_per_request: larger score calls are split into several requests.
    """

    def __init__(
        self, url: str, *, timeout_s: float = 30.0, max_queries_per_request: int = 1024
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_queries_per_request = max_queries_per_request
        self._client: httpx.AsyncClient | None = None
        self._client_lock = asyncio.Lock()

    async def _http(self) -> httpx.AsyncClient:
        async with self._client_lock:  # concurrent first calls must share one client
            if self._client is None:
                # Building a client loads CA certificates from disk: do it off the loop.
                self._client = await asyncio.to_thread(
                    httpx.AsyncClient, base_url=self.url, timeout=self.timeout_s
                )
            return self._client

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        """Scores for ``queries`` in order.

        Raises:
            ValueModelError: the server is unreachable, too slow, or answered an error or a
                malformed body.
        """
        size = self.max_queries_per_request
        scores: list[float] = []
        for start in range(0, len(queries), size):
            scores.extend(await self._score_chunk(queries[start : start + size]))
        return scores

    async def _score_chunk(self, queries: Sequence[ValueQuery]) -> list[float]:
        body = {"queries": [query_to_json(q) for q in queries]}
        data = await self._request("POST", "/v1/score", body)
        scores = data.get("scores") if isinstance(data, dict) else None
        if (
            not isinstance(scores, list)
            or len(scores) != len(queries)
            or not all(isinstance(s, int | float) and math.isfinite(s) for s in scores)
        ):
            raise ValueModelError(f"{self.url} answered a malformed score list")
        return [float(s) for s in scores]

    async def health(self) -> dict[str, Any]:
        """The server's ``/health`` answer (raises ValueModelError if it is down)."""
        data = await self._request("GET", "/health", None)
        if not isinstance(data, dict):
            raise ValueModelError(f"{self.url}/health answered a malformed body")
        return data

    def should_retry(self, exc: BaseException) -> bool:
        """Unreachable, timed out or a 5xx answer: the server may recover."""
        transient = (httpx.TimeoutException, httpx.TransportError, _ServerError)
        return isinstance(exc, ValueModelError) and isinstance(exc.__cause__, transient)

    async def _request(self, method: str, path: str, body: Any) -> Any:
        client = await self._http()
        failed = f"value model server {self.url} failed"
        try:
            response = await client.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            reason = f"timed out after {self.timeout_s:g} s ({type(exc).__name__})"
            raise ValueModelError(f"{failed}: {reason}") from exc
        except httpx.TransportError as exc:
            reason = f"unreachable ({type(exc).__name__}: {exc})"
            raise ValueModelError(f"{failed}: {reason}") from exc
        if response.status_code >= 500:
            reason = f"server error {response.status_code}: {_detail(response)}"
            raise ValueModelError(f"{failed}: {reason}") from _ServerError(reason)
        if response.status_code >= 400:
            raise ValueModelError(
                f"{self.url}{path} refused the request ({response.status_code}): "
                f"{_detail(response)}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise ValueModelError(f"{self.url}{path} answered non-JSON") from exc

    async def aclose(self) -> None:
        """Close the HTTP connection pool. Idempotent."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])[:500]
    return str(data)[:200]
