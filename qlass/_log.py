"""Logging set-up. Modules log with ``structlog.get_logger(__name__)``; only the CLI (or an
embedding app) calls :func:`configure_logging`.

Every event passes a redaction step that replaces the values of secret environment
variables (``*_API_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``) and of fields named like
credentials, so an API key can never reach a log line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging", "redact", "secret_values"]

_SECRET_ENV = re.compile(r"(API_KEY|_TOKEN|_SECRET|PASSWORD)$", re.IGNORECASE)
_SECRET_FIELD = re.compile(r"(api_key|authorization|password|secret|token)$", re.IGNORECASE)
_MASK = "***"


def secret_values() -> list[str]:
    """Values of environment variables that look like credentials (longest first)."""
    values = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 6}
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """Replace every secret value in ``text`` by ``***``."""
    for secret in secret_values() if secrets is None else secrets:
        text = text.replace(secret, _MASK)
    return text


def _redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    secrets = secret_values()
    for key, value in list(event_dict.items()):
        if _SECRET_FIELD.search(key) and value:
            event_dict[key] = _MASK
        elif isinstance(value, str):
            event_dict[key] = redact(value, secrets)
    return event_dict


class _AsDebug(logging.Filter):
    """Turn a library's warnings and errors into DEBUG records, kept only at DEBUG.

    py4j logs a lost JVM connection as an ERROR with a traceback, once per call in flight;
    qlass reports the failure itself (one line: the env crashed, timed out or was closed),
    so py4j's records are detail for ``--log-level DEBUG``.
    """

    def __init__(self, *, keep: bool) -> None:
        super().__init__()
        self.keep = keep

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.keep


# py4j's modules that log (a filter on a parent logger does not see its children's records).
_PY4J_LOGGERS = ("py4j.java_gateway", "py4j.clientserver")


def configure_logging(*, json_logs: bool = False, level: str = "INFO") -> None:
    """Configure structlog and the stdlib root logger once, for the whole process.

    Human-readable lines on a terminal, one JSON object per line with ``json_logs``. Logs go
    to stderr so that stdout stays clean for results.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        _redact_processor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer]
        if json_logs
        else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Look sys.stderr up per logger, not once: test runners and embedding apps swap it.
        logger_factory=lambda *_args: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)
    for noisy in ("LiteLLM", "httpx", "httpcore", "uvicorn.access", "py4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in _PY4J_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _AsDebug)]:
            logger.removeFilter(old)
        logger.addFilter(_AsDebug(keep=numeric <= logging.DEBUG))
