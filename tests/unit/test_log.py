"""qlass's log set-up: one format for qlass's events and every library's records, secrets
redacted in the rendered line (tracebacks included), and an embedding application's own
handlers left alone."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
import structlog

from qlass._log import adopt_library_logging, configure_logging

SECRET = "sk-planted-log-secret-4242"
LIBRARY_LOGGERS = ("LiteLLM", "transformers", "uvicorn.error", "httpx", "py4j")


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """configure_logging changes process-wide state: put every logger back afterwards."""
    monkeypatch.setenv("QLASS_TEST_API_KEY", SECRET)
    names = ["", "qlass", *LIBRARY_LOGGERS, "LiteLLM Router", "LiteLLM Proxy", "uvicorn.access"]
    saved = {
        name: (list(lg.handlers), lg.level, lg.propagate)
        for name in names
        for lg in [logging.getLogger(name)]
    }
    # A uvicorn server run by an earlier test (with uvicorn's own log config) leaves its
    # loggers with handlers of their own and propagation off; start from a fresh process's.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    structlog.reset_defaults()


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_logs_hold_libraries_too_and_redact_tracebacks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(json_logs=True, level="INFO", route_libraries=True)
    log = structlog.get_logger("qlass.tests")
    log.info("qlass.event", detail=f"key {SECRET}", api_key="plain-value")
    # The secret goes through py4j's logger: once imported, LiteLLM filters its own records
    # and uvicorn's and httpx's; qlass's redaction of foreign records is under test here.
    logging.getLogger("LiteLLM").warning("provider said: Incorrect API key")
    logging.getLogger("py4j").warning("gateway refused token %s", SECRET)
    logging.getLogger("uvicorn.error").error("uvicorn could not bind")
    logging.getLogger("httpx").info("HTTP Request: POST ... (INFO: hidden)")
    try:
        raise RuntimeError(f"request failed with key {SECRET}")
    except RuntimeError:
        log.exception("qlass.failed")
        logging.getLogger("py4j").exception("py4j lost its gateway")
    err = capsys.readouterr().err
    assert SECRET not in err
    lines = _lines(err)  # every line is one JSON object, whoever logged it
    by_event = {str(line["event"]): line for line in lines}
    assert set(by_event) == {
        "qlass.event",
        "provider said: Incorrect API key",
        "gateway refused token ***",
        "uvicorn could not bind",
        "qlass.failed",
        "py4j lost its gateway",
    }
    for line in lines:
        assert {"event", "level", "timestamp", "logger"} <= set(line)
    assert by_event["qlass.event"]["api_key"] == "***"
    assert by_event["qlass.event"]["logger"] == "qlass.tests"
    assert by_event["uvicorn could not bind"]["level"] == "error"
    for name in ("qlass.failed", "py4j lost its gateway"):
        trace = str(by_event[name]["exception"])
        assert "Traceback" in trace and "request failed with key ***" in trace


def test_console_lines_are_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="WARNING", route_libraries=True)
    structlog.get_logger("qlass.tests").info("below the level")
    try:
        raise ValueError(SECRET)
    except ValueError:
        structlog.get_logger("qlass.tests").exception("crashed")
    err = capsys.readouterr().err
    assert "crashed" in err and "ValueError: ***" in err
    assert SECRET not in err and "below the level" not in err


def test_an_applications_own_handlers_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    app_stream = io.StringIO()
    app_handler = logging.StreamHandler(app_stream)
    root.addHandler(app_handler)
    root.setLevel(logging.INFO)
    try:
        configure_logging(json_logs=True, level="INFO")
        configure_logging(json_logs=True, level="INFO")  # twice: still one qlass handler
        assert app_handler in root.handlers and root.level == logging.INFO
        structlog.get_logger("qlass.tests").info("from qlass")
        logging.getLogger("someapp").info("from the app")
        err = capsys.readouterr().err
        assert [line["event"] for line in _lines(err)] == ["from qlass"]
        assert app_stream.getvalue() == "from the app\n"  # its format, not ours
    finally:
        root.removeHandler(app_handler)


def test_transformers_and_litellm_print_each_line_once_through_qlass(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import litellm  # noqa: F401  (attaches LiteLLM's own handler)
    import transformers

    configure_logging(json_logs=True, level="INFO", route_libraries=True)
    transformers.logging.get_logger("transformers.modeling_utils").warning("weights missing")
    logging.getLogger("LiteLLM").warning("litellm warns")
    adopt_library_logging()  # a module importing them later calls it again: harmless
    err = capsys.readouterr().err
    assert [line["event"] for line in _lines(err)] == ["weights missing", "litellm warns"]
    assert logging.getLogger("transformers").propagate
    assert not _own_handlers(logging.getLogger("transformers"))
    assert not _own_handlers(logging.getLogger("LiteLLM"))


def _own_handlers(logger: logging.Logger) -> list[logging.Handler]:
    # pytest attaches its capture handlers to every logger that does not propagate when a
    # test starts (transformers' does, when a test module imported it at collection).
    return [h for h in logger.handlers if not type(h).__module__.startswith("_pytest")]


def test_the_cli_routes_library_logs_into_its_json_lines() -> None:
    """A real process: `qlass --log-json` with transformers and LiteLLM imported."""
    code = (
        "import logging, sys\n"
        "sys.argv = ['qlass', '--log-json', 'config', 'show']\n"
        "from qlass.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "import litellm, transformers\n"
        "from qlass.backends.litellm_backend import LiteLLMPolicy\n"
        "import qlass.backends.hf\n"
        "LiteLLMPolicy('openai/x')\n"
        "transformers.logging.get_logger('transformers.x').warning('from transformers')\n"
        "logging.getLogger('LiteLLM').warning('from litellm')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=True
    )
    events = [line["event"] for line in _lines(done.stderr)]
    assert events == ["from transformers", "from litellm"], done.stderr[-2000:]
