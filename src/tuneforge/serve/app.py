"""The HTTP API: OpenAI-compatible routes, monitoring, feedback.

Routes (all /v1 routes need `Authorization: Bearer KEY` when the server has an API key):

- POST /v1/chat/completions, POST /v1/completions: OpenAI request and response shapes, with
  `stream: true` answered as server-sent events (OpenAI's chunk shape, then `data: [DONE]`).
  Chat prompts are rendered with the model's chat template; /v1/completions continues the prompt
  as plain text (no template), as OpenAI's legacy completions do.
- GET /v1/models (and /v1/models/{id}), POST /v1/feedback, GET /health, GET /metrics (Prometheus).

Supported sampling: max_tokens (or max_completion_tokens; default: chat up to the rest of the
context within the server's limit, completions 16), temperature (default 1), top_p, stop, seed. One
choice per request (n=1): concurrent requests are batched by the server instead, which is both
simpler and faster. Features that would change the answer but are not implemented (tools,
logprobs, penalties, logit_bias, echo, suffix, best_of, n>1) are refused with a 400 rather than
silently ignored; other unknown fields are ignored.

Extension: with a calibration run loaded, `"tuneforge": {"confidence": true}` in the request body
(the openai client's `extra_body`) adds `"confidence": p` to the choice: the calibration run's
estimate that the answer is correct (see ServedModels.confidence_many for what it means).

Every error, including malformed JSON, validation errors, unknown routes and internal failures,
is answered in OpenAI's shape {"error": {"message", "type", "param", "code"}}; an exception in a
request is logged and answered with 500, never taken down the server.

Each request (except /health and /metrics) appends one JSON line to serve_dir/requests.jsonl:
time, id, endpoint, model, status, latency_ms, prompt_tokens, completion_tokens; never the prompt
or the reply (those go to the feedback store, serve_dir/feedback.sqlite, for preference data).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import ipaddress
import json
import logging
import os
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.errors import UserError
from tuneforge.serve.batching import MicroBatcher, SamplingKey
from tuneforge.serve.store import FeedbackStore, UnknownCompletion

log = logging.getLogger("tuneforge.serve")

API_KEY_ENV = "TUNEFORGE_API_KEY"
MAX_BODY_BYTES = 4 * 1024 * 1024
MIN_TEMPERATURE = 1e-4  # a lower temperature is greedy decoding
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for legacy completions; chat: the rest of the context
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/feedback", "/health", "/metrics")
UNLOGGED = ("/health", "/metrics")


# ---- errors ----------------------------------------------------------------------------------

class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code)


def error_response(status: int, message: str, type: str | None = None, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    if type is None:
        type = "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status)


def _param_name(loc) -> str | None:
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def validation_error(errors: list[dict]) -> APIError:
    """The first problem, naming the field (as `param` and in the message)."""
    if not errors:
        return APIError(400, "invalid request")
    e = errors[0]
    if e.get("type") == "json_invalid":
        detail = (e.get("ctx") or {}).get("error", "")
        return APIError(400, f"We could not parse the JSON body of your request ({detail}). "
                             "The body must be a JSON object.", code="invalid_json")
    param = _param_name(e.get("loc", ()))
    msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
    if e.get("type") == "missing":
        text = f"Missing required parameter: '{param}'."
    elif param:
        text = f"Invalid value for '{param}': {msg}"
    else:
        text = f"Invalid request body: {msg}"
    if len(errors) > 1:
        text += f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} in the request)"
    return APIError(400, text, param=param, code="missing_required_parameter" if e.get("type") == "missing" else "invalid_value")


# ---- request bodies --------------------------------------------------------------------------

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


class _Sampling(_Body):
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


class ChatRequest(_Sampling):
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


class CompletionRequest(_Sampling):
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


async def _parse(request: Request, cls: type[BaseModel]):
    """JSON body -> model, whatever the content type says (curl -d sends form encoding)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise APIError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    # Read in pieces and stop at the limit: a chunked upload has no content-length to refuse up front.
    pieces, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        pieces.append(piece)
    raw = b"".join(pieces)
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"We could not parse the JSON body of your request ({e}). "
                            "The body must be a JSON object.", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:  # JSON may escape a lone UTF-16 surrogate ("\\ud800"): no tokenizer or database takes one
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the request body holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff); "
                            "send valid Unicode text", code="invalid_json") from None
    info = request.scope.get("tuneforge")
    if info is not None and isinstance(obj.get("model"), str):
        info["model"] = obj["model"][:200]  # for the request log, even if the rest is invalid
    try:
        return cls.model_validate(obj)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


# ---- monitoring ------------------------------------------------------------------------------

class Metrics:
    """Prometheus metrics in a registry of their own (several apps can live in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tuneforge_requests_total", "HTTP requests", ["endpoint", "model", "status"],
                                registry=r)
        self.errors = Counter("tuneforge_errors_total", "requests answered with an error (status >= 400)",
                              ["endpoint", "status"], registry=r)
        self.latency = Histogram("tuneforge_request_latency_seconds", "request latency, to the last byte",
                                 ["endpoint"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.prompt_tokens = Counter("tuneforge_prompt_tokens_total", "prompt tokens", ["model"], registry=r)
        self.completion_tokens = Counter("tuneforge_completion_tokens_total", "generated tokens", ["model"],
                                         registry=r)
        self.batch_size = Histogram("tuneforge_batch_size", "requests per forward batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batches = Counter("tuneforge_batches_total", "forward batches (one generate call each)", registry=r)
        self.batched = Counter("tuneforge_batched_requests_total", "requests served by those batches", registry=r)
        self.queue = Gauge("tuneforge_queue_depth", "requests waiting for a batch", registry=r)

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.batches.inc()
        self.batched.inc(size)


class RequestLog:
    """serve_dir/requests.jsonl, one JSON object per request, appended and flushed."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed on shutdown

    def write(self, record: dict) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write(json.dumps(record) + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _endpoint_label(path: str) -> str:
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return path if path in ENDPOINTS else "other"


class _Observe:
    """Pure ASGI middleware: API key check, request id, metrics, request log, last-resort 500."""

    def __init__(self, app, api_key: str | None, metrics: Metrics, request_log: RequestLog, model_names: set[str]):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.metrics = metrics
        self.request_log = request_log
        self.model_names = model_names

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        info: dict[str, Any] = {"id": None, "model": None, "prompt_tokens": None, "completion_tokens": None}
        scope["tuneforge"] = info
        state = {"status": None}
        start = time.perf_counter()

        async def send_observed(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                info["id"] = info["id"] or f"req-{uuid.uuid4().hex[:24]}"
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", info["id"].encode())]}
            await send(message)

        try:
            if self.api_key and path.startswith("/v1") and not self._authorized(scope):
                await error_response(401, "Incorrect or missing API key: send the header "
                                          "'Authorization: Bearer YOUR_KEY'.",
                                     code="invalid_api_key")(scope, receive, send_observed)
            else:
                await self.app(scope, receive, send_observed)
        except Exception as e:  # noqa: BLE001 - a request must never take the server down
            log.exception("unhandled error in %s %s", scope.get("method"), path)
            if state["status"] is None:
                await error_response(500, f"internal server error: {type(e).__name__}: {e}")(
                    scope, receive, send_observed)
            else:
                state["status"] = 500  # the response had started (a stream): it is cut short
        finally:
            self._record(path, info, state["status"] or 500, time.perf_counter() - start)

    def _record(self, path: str, info: dict, status: int, seconds: float) -> None:
        try:
            endpoint = _endpoint_label(path)
            model = info["model"] if info["model"] in self.model_names else ("" if info["model"] is None else "unknown")
            self.metrics.requests.labels(endpoint, model, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            if status >= 400:
                self.metrics.errors.labels(endpoint, str(status)).inc()
            if path not in UNLOGGED:
                self.request_log.write({
                    "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                    "id": info["id"], "endpoint": endpoint, "model": info["model"], "status": status,
                    "latency_ms": round(seconds * 1000, 2), "prompt_tokens": info["prompt_tokens"],
                    "completion_tokens": info["completion_tokens"]})
        except Exception:  # noqa: BLE001 - monitoring must not break serving
            log.exception("could not record request metrics/log")


# ---- the app ---------------------------------------------------------------------------------

_PIECES = re.compile(r"\S+\s*|\s+")


def _pieces(text: str) -> list[str]:
    """Word-sized pieces whose concatenation is exactly `text` (the stream's deltas)."""
    return _PIECES.findall(text)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(models, serve_dir: Path, api_key: str | None = None, max_tokens_limit: int = 1024,
               max_prompt_tokens: int = 4096, max_batch: int = 8, batch_wait_ms: float = 5.0) -> FastAPI:
    """The FastAPI app serving `models` (a ServedModels). State lives in `serve_dir`
    (feedback.sqlite, requests.jsonl). `api_key`: required as a bearer token on /v1 routes when set.
    Limits: max_tokens per request, prompt length in tokens; `max_batch` requests per forward pass,
    `batch_wait_ms` how long an idle server waits for company before generating.

    `app.state` holds models, store, batcher, metrics and serve_dir."""
    serve_dir = Path(serve_dir)
    serve_dir.mkdir(parents=True, exist_ok=True)
    store = FeedbackStore(serve_dir)
    metrics = Metrics()
    batcher = MicroBatcher(models, max_batch=max_batch, max_wait_ms=batch_wait_ms, on_batch=metrics.batch)
    metrics.queue.set_function(lambda: batcher.pending)
    request_log = RequestLog(serve_dir / "requests.jsonl")
    names = list(models.names)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)
            request_log.close()
            store.close()

    app = FastAPI(title="tuneforge serve", version="1", lifespan=lifespan)
    app.state.models, app.state.store, app.state.batcher = models, store, batcher
    app.state.metrics, app.state.serve_dir = metrics, serve_dir
    app.add_middleware(_Observe, api_key=api_key, metrics=metrics, request_log=request_log, model_names=set(names))

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see GET /v1/models and the OpenAI API"
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, message, code=code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal server error: {type(exc).__name__}: {exc}")

    def _info(request: Request) -> dict:
        return request.scope.setdefault("tuneforge", {"id": None, "model": None, "prompt_tokens": None,
                                                      "completion_tokens": None})

    def _canonical(model: str) -> str:
        try:
            target = models.target(model)
        except KeyError:
            raise APIError(404, f"The model '{model}' does not exist. Served models: {', '.join(names)}",
                           param="model", code="model_not_found") from None
        return "base" if target is None else target

    async def _complete(request: Request, req: _Sampling, chat: bool):
        info = _info(request)
        info["model"] = req.model
        key_model = _canonical(req.model)
        asked = req.max_completion_tokens or req.max_tokens
        if asked and asked > max_tokens_limit:
            which = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            raise APIError(400, f"Invalid value for '{which}': {asked} is more than this server allows "
                                f"({max_tokens_limit}).", param=which, code="invalid_value")
        if chat:
            prompt = [m.as_dict() for m in req.messages]
            question = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), prompt[-1]["content"])
            prompt_param = "messages"
        else:
            prompt = question = req.prompt
            prompt_param = "prompt"
        prompt_tokens = models.count_tokens(prompt, raw=not chat)
        if prompt_tokens == 0:
            raise APIError(400, "The prompt is empty: there is nothing to continue.", param=prompt_param,
                           code="invalid_value")
        if prompt_tokens > max_prompt_tokens:
            raise APIError(400, f"The prompt is {prompt_tokens} tokens; this server accepts at most "
                                f"{max_prompt_tokens}.", param=prompt_param, code="context_length_exceeded")
        context = models.context_length
        if asked:
            max_tokens = asked
        elif chat:  # as OpenAI: up to the rest of the context (within the server's limit)
            max_tokens = max(1, min(max_tokens_limit, (context - prompt_tokens) if context else max_tokens_limit))
        else:
            max_tokens = min(COMPLETIONS_DEFAULT_MAX_TOKENS, max_tokens_limit)
        if context and prompt_tokens + max_tokens > context:
            raise APIError(400, f"This model's maximum context length is {context} tokens; the prompt "
                                f"({prompt_tokens}) plus max_tokens ({max_tokens}) is more. Shorten the prompt or "
                                "lower max_tokens.", param=prompt_param, code="context_length_exceeded")
        want_confidence = bool(req.tuneforge and req.tuneforge.confidence)
        if want_confidence and not models.has_confidence:
            raise APIError(400, "confidence needs a calibration run: start the server with one "
                                "(tuneforge serve --calibration RUN)", param="tuneforge.confidence")

        temperature = 1.0 if req.temperature is None else req.temperature
        # Below MIN_TEMPERATURE sampling is argmax anyway, and logits / temperature would overflow to inf.
        greedy = temperature < MIN_TEMPERATURE
        if greedy:
            temperature = 0.0
        key = SamplingKey(model=key_model, max_tokens=max_tokens, temperature=temperature,
                          top_p=1.0 if greedy or req.top_p is None else req.top_p, stop=req.stop,
                          seed=None if greedy else req.seed, raw=not chat)
        try:
            future = batcher.submit(key, prompt, question if want_confidence else None)
        except RuntimeError as e:
            raise APIError(503, str(e), type="server_error", code="unavailable") from None
        result = await asyncio.wrap_future(future)

        cid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        info.update(id=cid, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
        metrics.prompt_tokens.labels(req.model).inc(result.prompt_tokens)
        metrics.completion_tokens.labels(req.model).inc(result.completion_tokens)
        try:
            store.record_completion(cid, req.model, prompt, result.text, endpoint="chat" if chat else "completion",
                                    finish_reason=result.finish_reason, created=created)
        except Exception:  # noqa: BLE001 - the answer matters more than its record
            log.exception("could not store completion %s", cid)

        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                 "total_tokens": result.prompt_tokens + result.completion_tokens}
        extra = {} if result.confidence is None else {"confidence": result.confidence}
        head = {"id": cid, "created": created, "model": req.model, "system_fingerprint": None}
        if not req.stream:
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": result.text, "refusal": None},
                          "logprobs": None, "finish_reason": result.finish_reason, **extra}
                return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": usage})
            choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason,
                      **extra}
            return JSONResponse({**head, "object": "text_completion", "choices": [choice], "usage": usage})

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: dict | None, text: str | None = None, finish: str | None = None, more: dict | None = None):
            if chat:
                c = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **(more or {})}
            else:
                c = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, **(more or {})}
            return _sse({**head, "object": obj, "choices": [c]})

        async def events():
            if chat:
                yield chunk({"role": "assistant", "content": ""})
            for piece in _pieces(result.text):
                yield chunk({"content": piece}, text=piece)
            yield chunk({}, text="", finish=result.finish_reason, more=extra)
            if include_usage:
                yield _sse({**head, "object": obj, "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        """OpenAI chat completions. With stream=true the whole reply is generated first (in a shared
        batch) and then sent as word-sized SSE chunks: clients see the streaming protocol, not a
        lower time to first token."""
        return await _complete(request, await _parse(request, ChatRequest), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        """OpenAI legacy completions: the prompt is continued as plain text (no chat template).
        Streaming as for chat: generated whole, then sent in pieces."""
        return await _complete(request, await _parse(request, CompletionRequest), chat=False)

    def _model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": started, "owned_by": "tuneforge"}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [_model_card(n) for n in names]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request):
        _info(request)["model"] = model
        _canonical(model)
        return _model_card(model)

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        """Feedback on a completion this server returned: {completion_id, rating (-1, 0, 1)?,
        preferred?, rejected?, comment?}. Feeds `export_preferences` (DPO pairs)."""
        req = await _parse(request, FeedbackRequest)
        info = _info(request)
        try:
            fid = store.record_feedback(req.completion_id, rating=req.rating, preferred=req.preferred,
                                        rejected=req.rejected, comment=req.comment)
        except UnknownCompletion as e:
            raise APIError(404, str(e), param="completion_id", code="completion_not_found") from None
        except ValueError as e:
            raise APIError(400, str(e)) from None
        info["id"] = f"feedback-{fid}"
        return {"id": fid, "object": "feedback", "completion_id": req.completion_id}

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": names, "batches": batcher.batches, "batched_requests": batcher.requests,
                "queue": batcher.pending, "confidence": models.has_confidence}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


# ---- running it ------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def resolve_api_key(api_key: str | None, host: str) -> str | None:
    """The key given, else $TUNEFORGE_API_KEY; refuses a non-loopback host without one (UserError)."""
    key = api_key or os.environ.get(API_KEY_ENV) or None
    if not key and not is_loopback(host):
        raise UserError(f"refusing to listen on {host} without an API key: anyone who can reach it could use the "
                        f"models. Give --api-key KEY (or set {API_KEY_ENV}), or listen on 127.0.0.1")
    return key


def serve(base: str | None, adapters: dict[str, Path], calibration: Path | None = None, host: str = "127.0.0.1",
          port: int = 8000, serve_dir: Path = Path("serve"), api_key: str | None = None,
          max_tokens_limit: int = 1024, max_prompt_tokens: int = 4096, max_batch: int = 8,
          batch_wait_ms: float = 5.0, log_level: str = "info") -> None:
    """Load the models and serve them until interrupted (blocks). Checks the host/key first, so a
    refused configuration fails before any model is loaded."""
    import uvicorn

    from tuneforge.serve.models import ServedModels

    key = resolve_api_key(api_key, host)
    if min(max_tokens_limit, max_prompt_tokens, max_batch) < 1:
        raise UserError("max tokens, max prompt tokens and max batch must be at least 1")
    models = ServedModels(base, adapters, calibration)
    app = create_app(models, Path(serve_dir), api_key=key, max_tokens_limit=max_tokens_limit,
                     max_prompt_tokens=max_prompt_tokens, max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {', '.join(models.names)} at http://{shown}:{port}/v1 "
          f"({'API key required' if key else 'no API key'}); state in {serve_dir}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
