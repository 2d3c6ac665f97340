"""The policy-call cache: request key -> stored response, so reruns and resumes are free.

:class:`PolicyCallCache` has the shape of :class:`qlass.backends.base.CallCache`
(``get``/``put``); the backends wrap a policy with it. Keys are computed by the caller (a
sha256 hex of the canonical request). The first response stored for a key wins: a seeded
request answers the same every time, so a second ``put`` changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select

from qlass.storage._db import Database, upsert
from qlass.storage.models import PolicyCall, table, utcnow

__all__ = ["PolicyCallCache", "scrub_secrets"]

_CALLS = table(PolicyCall)
_SECRET_KEY = re.compile(r"(api_key|apikey|authorization|password|secret|token)$", re.IGNORECASE)


def scrub_secrets(value: Any) -> Any:
    """A copy of JSON-like ``value`` without entries whose key names a credential.

    Defence in depth: callers must not pass keys at all, but a request dict that carries
    ``api_key`` or an ``Authorization`` header still never reaches the database.
    """
    if isinstance(value, Mapping):
        return {
            key: scrub_secrets(item)
            for key, item in value.items()
            if not (isinstance(key, str) and _SECRET_KEY.search(key))
        }
    if isinstance(value, list | tuple):
        return [scrub_secrets(item) for item in value]
    return value


class PolicyCallCache:
    """Persistent cache of policy responses in the ``policy_calls`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> dict[str, Any] | None:
        """The stored response for ``key``, or ``None``."""
        async with self._db.read() as session:
            response = await session.scalar(select(_CALLS.c.response).where(_CALLS.c.key == key))
        return None if response is None else dict(response)

    async def put(
        self,
        key: str,
        response: dict[str, Any],
        *,
        model: str = "",
        request: Mapping[str, Any] | None = None,
    ) -> None:
        """Store ``response`` under ``key`` unless the key is present (committed on return).

        ``model`` and ``request`` are optional provenance; credential-named fields of
        ``request`` are dropped.
        """
        row = {
            "key": key,
            "model": model,
            "request": None if request is None else scrub_secrets(request),
            "response": response,
            "created_at": utcnow(),
        }
        await self._db.run_write(upsert, _CALLS, [row], ("key",), ())

    async def put_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Store several ``(key, response)`` pairs in one transaction (all or none), each
        unless its key is present."""
        now = utcnow()
        rows = [
            {"key": k, "model": "", "request": None, "response": r, "created_at": now}
            for k, r in items
        ]
        if not rows:
            return
        await self._db.run_write(upsert, _CALLS, rows, ("key",), ())

    async def count(self) -> int:
        """How many responses are stored."""
        async with self._db.read() as session:
            return int(await session.scalar(select(func.count()).select_from(_CALLS)) or 0)
