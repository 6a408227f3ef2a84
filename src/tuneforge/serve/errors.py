"""Errors answered in OpenAI's shape {"error": {"message", "type", "param", "code"}}, and the app's
exception handlers that turn every failure (validation, unknown route, internal) into that shape."""

from __future__ import annotations

import json
import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("tuneforge.serve")


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
    code = "missing_required_parameter" if e.get("type") == "missing" else "invalid_value"
    return APIError(400, text, param=param, code=code)


# ---- exception handlers ----------------------------------------------------------------------

async def handle_api_error(request: Request, exc: APIError):
    return exc.response()


async def handle_validation_error(request: Request, exc: RequestValidationError):
    return validation_error(list(exc.errors())).response()


async def handle_http_error(request: Request, exc: StarletteHTTPException):
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}; see GET /v1/models and the OpenAI API"
    code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(exc.status_code, message, code=code)


async def handle_internal_error(request: Request, exc: Exception):
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal server error: {type(exc).__name__}: {exc}")


EXCEPTION_HANDLERS = {
    APIError: handle_api_error,
    RequestValidationError: handle_validation_error,
    StarletteHTTPException: handle_http_error,
    Exception: handle_internal_error,
}
