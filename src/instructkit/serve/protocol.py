"""The wire format: OpenAI's request bodies (validated here), its error object, its response shapes.

Only what the server implements is accepted: an unknown or unsupported field is a 400 naming
it, never silently ignored, so a client never believes a knob it set took effect when it did not.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class APIError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.extra = extra or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          **self.extra}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


# ----------------------------------------------------------------------------- requests


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    """An extension (as in vLLM): keep the k most likely tokens; 0 = off."""
    ignore_eos: bool = False
    """An extension (as in vLLM): keep sampling past EOS until max_tokens (benchmarks)."""
    n: int = Field(1, ge=1)
    stop: Union[str, list[str], None] = Field(None, validate_default=True)
    seed: Union[int, None] = None
    stream: bool = False
    stream_options: Union[dict, None] = None
    user: Union[str, None] = None
    # accepted only at their neutral values (OpenAI clients may send them explicitly)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Union[dict, None] = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if v is None:
            return []
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, v):
        if v is not None and set(v) - {"include_usage", "include_obfuscation"}:
            raise ValueError(f"unsupported stream_options {sorted(set(v) - {'include_usage', 'include_obfuscation'})}")
        return v

    def unsupported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise APIError(400, f"'{name}' is not supported by this server (only 0)", param=name,
                               code="unsupported_parameter")
        if self.logit_bias:
            raise APIError(400, "'logit_bias' is not supported by this server", param="logit_bias",
                           code="unsupported_parameter")


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int = Field(16, ge=1)
    echo: bool = False
    suffix: Union[str, None] = None
    best_of: Union[int, None] = None
    logprobs: Union[int, None] = None

    def unsupported(self) -> None:
        super().unsupported()
        for name in ("suffix", "logprobs"):
            if getattr(self, name) is not None:
                raise APIError(400, f"'{name}' is not supported by this server", param=name, code="unsupported_parameter")
        if self.best_of not in (None, self.n):
            raise APIError(400, "'best_of' is not supported by this server (use n, or `instructkit bon`)",
                           param="best_of", code="unsupported_parameter")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict], None] = None
    name: Union[str, None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise APIError(400, "only text content parts are supported", param="messages", code="unsupported_content")
            parts.append(p["text"])
        return "".join(parts)


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: Union[int, None] = Field(None, ge=1)
    max_completion_tokens: Union[int, None] = Field(None, ge=1)
    logprobs: Union[bool, None] = None
    top_logprobs: Union[int, None] = None
    response_format: Union[dict, None] = None
    tools: Union[list, None] = None
    tool_choice: Union[str, dict, None] = None
    parallel_tool_calls: Union[bool, None] = None

    def unsupported(self) -> None:
        super().unsupported()
        if self.logprobs or self.top_logprobs:
            raise APIError(400, "'logprobs' is not supported by this server", param="logprobs", code="unsupported_parameter")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise APIError(400, "only response_format {'type': 'text'} is supported", param="response_format",
                           code="unsupported_parameter")
        if self.tools or self.tool_choice not in (None, "none"):
            raise APIError(400, "tools are not supported by this server", param="tools", code="unsupported_parameter")

    @property
    def budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_body(raw: bytes, cls: type[BaseModel]) -> Any:
    """Bytes -> a validated request, or an APIError (400) that names the field and the problem."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"We could not parse the JSON body of your request ({e}). The body must be one JSON "
                            "object, sent with Content-Type: application/json.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"The request body must be a JSON object, got {type(data).__name__}.", code="invalid_json")
    try:
        req = cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(x) for x in err["loc"]]
        # pydantic names every member of a Union it tried: keep the field path, drop the type names
        path = ".".join(x for x in loc if not any(c in x for c in "[]") and x not in ("str", "int", "list"))
        param = path or None
        if err["type"] == "extra_forbidden":
            raise APIError(400, f"Unrecognized request argument supplied: {param}", param=param,
                           code="unknown_parameter") from None
        if err["type"] == "missing":
            raise APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter") from None
        got = err.get("input")
        got_s = json.dumps(got)[:80] if not isinstance(got, (dict, list)) or len(json.dumps(got)) < 80 else "..."
        msg = err["msg"].removeprefix("Value error, ")
        raise APIError(400, f"Invalid '{param}': {msg} (got {got_s}).", param=param, code="invalid_value") from None
    req.unsupported()
    return req


# ----------------------------------------------------------------------------- responses


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
