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
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from tuneforge.errors import UserError
from tuneforge.models.policy import SAFE, LoadPolicy
from tuneforge.serve.auth import API_KEY_ENV, is_loopback, resolve_api_key
from tuneforge.serve.batching import MicroBatcher
from tuneforge.serve.completions import CompletionLimits
from tuneforge.serve.errors import EXCEPTION_HANDLERS
from tuneforge.serve.middleware import AuthAndObserve
from tuneforge.serve.monitoring import Metrics, RequestLog
from tuneforge.serve.routes import router
from tuneforge.serve.store import FeedbackStore

# cli, ui and tests import the key rule through serve.app; _Observe is the middleware's former name,
# still imported by tests/test_security.py.
__all__ = ["API_KEY_ENV", "create_app", "is_loopback", "resolve_api_key", "serve"]
_Observe = AuthAndObserve


@asynccontextmanager
async def _lifespan(app: FastAPI):
    state = app.state
    state.batcher.start()
    try:
        yield
    finally:
        await asyncio.to_thread(state.batcher.close)
        state.request_log.close()
        state.store.close()


def create_app(models, serve_dir: Path, api_key: str | None = None, max_tokens_limit: int = 1024,
               max_prompt_tokens: int = 4096, max_batch: int = 8, batch_wait_ms: float = 5.0) -> FastAPI:
    """The FastAPI app serving `models` (a ServedModels). State lives in `serve_dir`
    (feedback.sqlite, requests.jsonl). `api_key`: required as a bearer token on /v1 routes when set.
    Limits: max_tokens per request, prompt length in tokens; `max_batch` requests per forward pass,
    `batch_wait_ms` how long an idle server waits for company before generating.

    `app.state` holds what the routes read: models, model_names, started (unix time), limits
    (CompletionLimits), store, batcher, metrics, request_log and serve_dir."""
    serve_dir = Path(serve_dir)
    serve_dir.mkdir(parents=True, exist_ok=True)
    store = FeedbackStore(serve_dir)
    metrics = Metrics()
    batcher = MicroBatcher(models, max_batch=max_batch, max_wait_ms=batch_wait_ms, on_batch=metrics.batch)
    metrics.queue.set_function(lambda: batcher.pending)
    request_log = RequestLog(serve_dir / "requests.jsonl")

    app = FastAPI(title="tuneforge serve", version="1", lifespan=_lifespan, exception_handlers=EXCEPTION_HANDLERS)
    state = app.state
    state.models, state.model_names, state.started = models, list(models.names), int(time.time())
    state.limits = CompletionLimits(max_tokens=max_tokens_limit, max_prompt_tokens=max_prompt_tokens)
    state.store, state.batcher, state.metrics, state.request_log = store, batcher, metrics, request_log
    state.serve_dir = serve_dir
    app.include_router(router)
    app.add_middleware(AuthAndObserve, api_key=api_key, metrics=metrics, request_log=request_log,
                       model_names=set(state.model_names))
    return app


DRAIN_S = 120  # the longest a stopping server waits for requests in flight (a CPU generation can take a minute)


def serve(base: str | None, adapters: dict[str, Path], calibration: Path | None = None, host: str = "127.0.0.1",
          port: int = 8000, serve_dir: Path = Path("serve"), api_key: str | None = None,
          max_tokens_limit: int = 1024, max_prompt_tokens: int = 4096, max_batch: int = 8,
          batch_wait_ms: float = 5.0, log_level: str = "info", policy: LoadPolicy = SAFE) -> None:
    """Load the models and serve them until interrupted (blocks). Checks the host/key first, so a
    refused configuration fails before any model is loaded. `api_key` is the key itself: the CLI reads
    $TUNEFORGE_API_KEY, this function does not."""
    # Imported only when serving, so that importing this module does not load torch or uvicorn.
    import uvicorn

    from tuneforge.serve.models import ServedModels

    key = resolve_api_key(api_key, host)
    if min(max_tokens_limit, max_prompt_tokens, max_batch) < 1:
        raise UserError("max tokens, max prompt tokens and max batch must be at least 1")
    models = ServedModels(base, adapters, calibration, policy=policy)
    app = create_app(models, Path(serve_dir), api_key=key, max_tokens_limit=max_tokens_limit,
                     max_prompt_tokens=max_prompt_tokens, max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {', '.join(models.names)} at http://{shown}:{port}/v1 "
          f"({'API key required' if key else 'no API key'}); state in {serve_dir}", flush=True)
    # On SIGINT or SIGTERM (preemption, a rolling restart) uvicorn stops accepting connections and lets
    # the requests in flight finish before the batcher closes; past DRAIN_S it stops anyway.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=DRAIN_S)
