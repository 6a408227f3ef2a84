"""The ASGI middleware around every request: API key check, request id header, metrics, request log,
and a last-resort 500 (a request must never take the server down)."""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import time
import uuid

from tuneforge.serve.errors import error_response
from tuneforge.serve.monitoring import (REQUEST_RECORD_KEY, UNLOGGED, Metrics, RequestLog, endpoint_label,
                                        new_request_record)

log = logging.getLogger("tuneforge.serve")


class AuthAndObserve:
    """Pure ASGI middleware. With an API key, /v1 routes need `Authorization: Bearer KEY`; every response
    gets an x-request-id header; every request is counted in `metrics` and (but /health and /metrics)
    written to `request_log`."""

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
        info = new_request_record()
        scope[REQUEST_RECORD_KEY] = info
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
            endpoint = endpoint_label(path)
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
