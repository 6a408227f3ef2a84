"""The request bodies, as pydantic models: what each route accepts, and the OpenAI features it refuses.

Features that would change the answer but are not implemented (tools, logprobs, penalties, logit_bias,
echo, suffix, best_of, n>1) fail validation (a 400) rather than being silently ignored; other unknown
fields are ignored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _text_content(value: Any) -> str:
    """A message's content: a string, or a list of text parts (other part types are not supported)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"only text content is supported (a string or parts of type 'text'), got {kind!r}")
            texts.append(part["text"])
        return "".join(texts)
    raise ValueError("content must be a string or a list of text parts")


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Any
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v: Any) -> str:
        return _text_content(v)

    def as_dict(self) -> dict:
        # Chat templates know system, user and assistant; developer is OpenAI's new name for system.
        return {"role": "system" if self.role == "developer" else self.role, "content": self.content}


class TuneforgeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    confidence: bool = False


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingRequest(_Body):
    """The sampling fields chat and legacy completions share."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = None
    stop: Any = None
    seed: int | None = Field(None, ge=-2**63, le=2**64 - 1)  # what torch.manual_seed accepts
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    user: str | None = None
    tuneforge: TuneforgeOptions | None = None

    @field_validator("n")
    @classmethod
    def _n(cls, v):
        if v not in (None, 1):
            raise ValueError("only n=1 is supported; send several requests instead (the server batches them)")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v):
        if v is None:
            return ()
        stops = [v] if isinstance(v, str) else v
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("stop must be a string or a list of strings")
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return tuple(s for s in stops if s)

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v):
        if v:
            raise ValueError("penalties are not supported by this server (use 0 or leave out)")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v):
        if v:
            raise ValueError("logit_bias is not supported by this server")
        return v


class ChatRequest(SamplingRequest):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list | None = None
    functions: list | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v):
        if v:
            raise ValueError("logprobs are not supported by this server")
        return v

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, v):
        if v:
            raise ValueError("tool calling is not supported by this server")
        return v


class CompletionRequest(SamplingRequest):
    prompt: Any
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, list) and len(v) == 1 and isinstance(v[0], str):
            v = v[0]
        if not isinstance(v, str):
            raise ValueError("prompt must be one string (token-id prompts and several prompts per request "
                             "are not supported; send several requests: the server batches them)")
        return v

    @model_validator(mode="after")
    def _unsupported(self):
        for name, ok in (("echo", not self.echo), ("suffix", self.suffix is None),
                         ("best_of", self.best_of in (None, 1)), ("logprobs", not self.logprobs)):
            if not ok:
                raise ValueError(f"{name} is not supported by this server")
        return self


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    completion_id: str = Field(min_length=1)
    rating: int | None = Field(None, ge=-1, le=1, description="-1 bad, 0 neutral, 1 good")
    preferred: str | None = Field(None, min_length=1, description="a better reply than the completion's")
    rejected: str | None = Field(None, min_length=1, description="a worse reply than the completion's")
    comment: str | None = None

    @model_validator(mode="after")
    def _something(self):
        if self.rating is None and not self.preferred and not self.rejected and not self.comment:
            raise ValueError("give at least one of rating (-1, 0, 1), preferred, rejected, comment")
        return self
