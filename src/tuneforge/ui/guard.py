"""Who may call the UI: the API key (bearer header or the login cookie), the page's POST header, and
loopback-only answers when there is no key (no DNS rebinding)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tuneforge.ui.http import Fail, read_body

COOKIE = "tuneforge_ui_key"
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}

router = APIRouter()


async def guard(request: Request, call_next):
    key: bytes | None = request.app.state.ui.key
    path = request.url.path
    if key is None and request.url.hostname not in _LOOPBACK_HOSTS:
        return JSONResponse({"error": "this UI answers loopback addresses only"}, status_code=403)
    # A cross-site page cannot send a custom header without a CORS preflight, which is never granted.
    if request.method == "POST" and request.headers.get("x-tuneforge-ui") != "1":
        return JSONResponse({"error": "missing X-Tuneforge-UI header"}, status_code=403)
    if key is not None and path.startswith("/api") and path != "/api/login":
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(given.encode(), key):
            return JSONResponse({"error": "API key required"}, status_code=401)
    return await call_next(request)


@router.post("/api/login")
async def login(request: Request):
    key: bytes | None = request.app.state.ui.key
    given = str((await read_body(request)).get("key", ""))
    if key is None or not hmac.compare_digest(given.encode(), key):
        raise Fail(401, "wrong API key")
    response = JSONResponse({"ok": True})
    response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
    return response
