"""What the server records about requests: Prometheus metrics, the request log (serve_dir/requests.jsonl)
and the per-request record the routes fill in for both (id, model, token counts; never the prompt or
the reply)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.requests import Request

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/feedback", "/health", "/metrics")
UNLOGGED = ("/health", "/metrics")
# The record travels in the ASGI scope: the middleware creates it, routes fill it in, the middleware writes it.
REQUEST_RECORD_KEY = "tuneforge"


def new_request_record() -> dict:
    return {"id": None, "model": None, "prompt_tokens": None, "completion_tokens": None}


def request_record(request: Request) -> dict:
    """This request's record; a fresh one where no middleware made it (a route called on its own)."""
    return request.scope.setdefault(REQUEST_RECORD_KEY, new_request_record())


def endpoint_label(path: str) -> str:
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return path if path in ENDPOINTS else "other"


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
