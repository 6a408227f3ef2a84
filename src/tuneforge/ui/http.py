"""What every route shares: the error a route raises for an HTTP status, and how it reads a JSON body."""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.responses import JSONResponse

from tuneforge.errors import UserError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class Fail(Exception):
    """Answer the request with this status and {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(request: Request) -> dict:
    try:
        data = await request.json()
    except ValueError:
        raise Fail(400, "the body must be JSON") from None
    if not isinstance(data, dict):
        raise Fail(400, "the body must be a JSON object")
    return data


async def fail_response(request: Request, exc: Fail) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def user_error_response(request: Request, exc: UserError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=400)
