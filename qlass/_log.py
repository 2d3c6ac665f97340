"""Logging set-up. Modules log with ``structlog.get_logger(__name__)``; only the CLI (or an
embedding app) calls :func:`configure_logging`.

structlog hands its events to the standard library's ``logging`` (one logger per module,
under ``qlass``), and one handler renders them with structlog's processors. The records of
the libraries qlass uses (LiteLLM, transformers, uvicorn, httpx, py4j) pass through the
same handler, so ``--log-json`` gives one JSON object per line for all of them.

Every line passes a redaction step *after* it is rendered, exception text included: the
values of secret environment variables (``*_API_KEY``, ``*_TOKEN``, ``*_SECRET``,
``*_PASSWORD``) are replaced by ``***``, and fields named like credentials are masked
before rendering, so an API key can never reach a log line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["adopt_library_logging", "configure_logging", "redact", "secret_values"]

_SECRET_ENV = re.compile(r"(API_KEY|_TOKEN|_SECRET|PASSWORD)$", re.IGNORECASE)
_SECRET_FIELD = re.compile(r"(api_key|authorization|password|secret|token)$", re.IGNORECASE)
_MASK = "***"
# Libraries that log a lot at INFO; they are shown from WARNING up.
_NOISY = (
    "LiteLLM",
    "LiteLLM Router",
    "LiteLLM Proxy",
    "httpx",
    "httpcore",
    "py4j",
    "uvicorn.access",
)


def secret_values() -> list[str]:
    """Values of environment variables that look like credentials (longest first)."""
    values = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 6}
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """Replace every secret value in ``text`` by ``***``."""
    for secret in secret_values() if secrets is None else secrets:
        text = text.replace(secret, _MASK)
    return text


def _mask_fields(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if _SECRET_FIELD.search(key) and value:
            event_dict[key] = _MASK
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


def _redact_line(_logger: Any, _method: str, line: Any) -> str:
    """The last step: the rendered line (message, fields, traceback) with secrets masked."""
    return redact(str(line))


class _QlassHandler(logging.StreamHandler[TextIO]):
    """qlass's one handler. It writes to whatever ``sys.stderr`` is when a record is
    emitted (test runners and embedding apps swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _ours(handler: logging.Handler) -> bool:
    return isinstance(handler, _QlassHandler)


def configure_logging(
    *, json_logs: bool = False, level: str = "INFO", route_libraries: bool | None = None
) -> None:
    """Configure structlog and qlass's log handler, for the whole process.

    Human-readable lines on a terminal, one JSON object per line with ``json_logs``. Logs go
    to stderr so that stdout stays clean for results.

    ``route_libraries``: render the standard library's records of every library (LiteLLM,
    transformers, uvicorn...) through qlass's handler too, by adding it to the root logger.
    The default does so only when the root logger has no handlers yet; an application that
    set up its own logging keeps it as it is (its handlers are never removed or replaced),
    and qlass's handler then serves qlass's own events only. Calling this again replaces
    qlass's handler, nothing else.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    handler = _QlassHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _mask_fields,
                # Tracebacks become text before the line is redacted, never after.
                structlog.processors.format_exc_info,
                renderer,
                _redact_line,
            ],
        )
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    qlass_logger = logging.getLogger("qlass")
    for logger in (root, qlass_logger):
        for old in [h for h in logger.handlers if _ours(h)]:
            logger.removeHandler(old)
    if route_libraries is None:
        route_libraries = not root.handlers
    qlass_logger.setLevel(numeric)
    if route_libraries:
        root.addHandler(handler)
        root.setLevel(max(numeric, logging.WARNING))
        qlass_logger.propagate = True
        for name in _NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)
        adopt_library_logging()
    else:
        qlass_logger.addHandler(handler)
        qlass_logger.propagate = False
    for name in _PY4J_LOGGERS:
        logger = logging.getLogger(name)
        for old_filter in [f for f in logger.filters if isinstance(f, _AsDebug)]:
            logger.removeFilter(old_filter)
        logger.addFilter(_AsDebug(keep=numeric <= logging.DEBUG))


def adopt_library_logging() -> None:
    """Let LiteLLM's and transformers' records reach qlass's handler.

    Both libraries attach a default handler of their own when they are imported
    (transformers also stops propagation), which would print their lines a second time in
    another format. Where qlass routes the libraries' logging (see
    :func:`configure_logging`), those default handlers are detached; otherwise nothing is
    changed. Called by :func:`configure_logging` and by the modules that import either
    library, so the order of imports does not matter.
    """
    if not any(_ours(h) for h in logging.getLogger().handlers):
        return
    litellm_logging = sys.modules.get("litellm._logging")
    default = getattr(litellm_logging, "handler", None)
    if isinstance(default, logging.Handler):
        for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
            logging.getLogger(name).removeHandler(default)
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        transformers_logging.disable_default_handler()
        transformers_logging.enable_propagation()
