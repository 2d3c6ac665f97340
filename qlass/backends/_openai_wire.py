"""OpenAI's chat-completions wire format, as far as ``qlass serve`` honours it.

:class:`ChatRequest` names every field of OpenAI's request. Those the local backend
implements are used; those that cannot change what the model generates (``user``,
``metadata``, ...) are accepted; those it cannot honour (tools, response formats,
penalties, ``logit_bias``, audio, image parts...) are refused with 400 unless they hold
their neutral value, so that no request is silently answered as if they had been applied.
A field OpenAI does not know is refused as OpenAI refuses it. Errors use OpenAI's shape:
``{"error": {"message", "type", "param", "code"}}`` with a short message that never echoes
the request body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "ChatRequest",
    "WireError",
    "error_response",
    "logprobs_body",
    "validation_error",
]

_MAX_MESSAGE = 200  # characters of a value quoted in an error message at most


@dataclass(frozen=True, slots=True)
class WireError(Exception):
    """An error to send back as OpenAI's error body."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    kind: str = "invalid_request_error"


def error_response(error: WireError) -> JSONResponse:
    body = {
        "error": {
            "message": error.message,
            "type": error.kind,
            "param": error.param,
            "code": error.code,
        }
    }
    return JSONResponse(body, status_code=error.status)


def _param(loc: tuple[int | str, ...]) -> str:
    """OpenAI's way of naming a nested field: ``messages[0].content``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_error(exc: ValidationError) -> WireError:
    """The first problem of a validation error, in one short line naming the field."""
    first = exc.errors(include_url=False, include_input=False)[0]
    param = _param(tuple(first["loc"])) or None
    kind = first["type"]
    if kind == "extra_forbidden":
        return WireError(400, f"Unrecognized request argument supplied: {param}", param)
    if kind == "missing":
        return WireError(400, f"Missing required parameter: '{param}'.", param)
    message = str(first["msg"]).removeprefix("Value error, ")
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "..."
    return WireError(400, f"Invalid value for '{param}': {message}", param, "invalid_value")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Strict):
    """One chat message: text content only (a string or text parts)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Any = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    function_call: Any = None
    refusal: str | None = None
    audio: Any = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        if content is None or isinstance(content, str):
            return content
        if not isinstance(content, list):
            raise ValueError("content must be a string or a list of content parts")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                shown = repr(kind)[:40] if kind is not None else "without a 'text' string"
                raise ValueError(
                    f"content parts of type {shown} are not supported: this server's "
                    "model reads text only"
                )
        return content

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part["text"]) for part in self.content)

    def unsupported(self) -> tuple[str, str] | None:
        """(field, why) of the first thing in this message the server cannot honour."""
        if self.role in ("tool", "function"):
            return "role", f"'{self.role}' messages are not supported (no tool calling)"
        for name in ("tool_calls", "function_call", "tool_call_id", "audio"):
            if getattr(self, name):
                return name, f"'{name}' is not supported (no tool calling or audio)"
        if self.name is not None:
            return "name", "message names are not supported (the chat template has no place)"
        return None


class ChatRequest(_Strict):
    """OpenAI's chat-completions request; see the module docstring for what is honoured."""

    model: str
    messages: list[Message] = Field(min_length=1)
    # honoured
    n: int = Field(1, ge=1, le=128)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool | None = None
    # accepted: they do not change what is generated
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    parallel_tool_calls: bool | None = None
    # refused unless neutral
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    web_search_options: dict[str, Any] | None = None
    verbosity: str | None = None

    def unsupported(self) -> WireError | None:
        """The first field that asks for something this server cannot do, as a 400."""
        for index, message in enumerate(self.messages):
            problem = message.unsupported()
            if problem is not None:
                field, why = problem
                param = f"messages[{index}].{field}"
                return WireError(400, f"{param}: {why}", param, "unsupported_value")
        refused = {
            "frequency_penalty": self.frequency_penalty not in (None, 0),
            "presence_penalty": self.presence_penalty not in (None, 0),
            "logit_bias": bool(self.logit_bias),
            "tools": bool(self.tools),
            "tool_choice": self.tool_choice not in (None, "none"),
            "functions": bool(self.functions),
            "function_call": self.function_call not in (None, "none"),
            "response_format": self.response_format not in (None, {"type": "text"}),
            "audio": self.audio is not None,
            "modalities": self.modalities not in (None, ["text"]),
            "prediction": self.prediction is not None,
            "reasoning_effort": self.reasoning_effort is not None,
            "web_search_options": self.web_search_options is not None,
            "verbosity": self.verbosity is not None,
        }
        for name, asked in refused.items():
            if asked:
                return WireError(
                    400,
                    f"'{name}' is not supported by qlass serve (a plain local model); leave it out",
                    name,
                    "unsupported_parameter",
                )
        if self.stream:
            return WireError(
                400, "streaming is not supported by qlass serve", "stream", "unsupported_value"
            )
        if self.top_logprobs is not None and not self.logprobs:
            return WireError(
                400,
                "logprobs must be set to true if top_logprobs is used",
                "top_logprobs",
                "invalid_value",
            )
        return None

    @property
    def stops(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop


def logprobs_body(entries: Any) -> dict[str, Any]:
    """A choice's ``logprobs`` object from :class:`~qlass.backends.hf.TokenLogprob` entries."""

    def token(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            {
                **token(entry.token, entry.logprob),
                "top_logprobs": [token(text, value) for text, value in entry.top],
            }
            for entry in entries
        ],
        "refusal": None,
    }
