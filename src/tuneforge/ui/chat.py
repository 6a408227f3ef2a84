"""Chat with a run's model (streamed as server-sent events) and rate its answers into the same
FeedbackStore as `tuneforge serve`, which `tuneforge feedback export` reads."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from tuneforge.serve.store import UnknownCompletion
from tuneforge.ui.http import Fail, read_body
from tuneforge.ui.state import UIState, ui_state

router = APIRouter()

_ROLES = ("system", "user", "assistant")


def _messages(data: dict) -> list[dict]:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str) for m in messages):
        raise Fail(400, "messages: a list of {role: system|user|assistant, content: text}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


@router.post("/api/chat")
async def chat(request: Request, ui: UIState = Depends(ui_state)):
    data = await read_body(request)
    run = ui.run_path(str(data.get("run", "")))
    messages = _messages(data)
    max_tokens = data.get("max_tokens", 64)
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 1024:
        raise Fail(400, "max_tokens: an integer from 1 to 1024")
    text, confidence = await run_in_threadpool(ui.chat_models.answer, run, messages, max_tokens)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    ui.store().record_completion(completion_id, f"ui:{data['run']}", messages, text, endpoint="chat")

    async def events():
        for piece in re.findall(r"\s*\S+\s*", text) or [text]:
            yield f"data: {json.dumps({'delta': piece})}\n\n"
            await asyncio.sleep(0.02)
        yield f"data: {json.dumps({'done': True, 'id': completion_id, 'confidence': confidence})}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.post("/api/feedback")
async def feedback(request: Request, ui: UIState = Depends(ui_state)):
    data = await read_body(request)
    preferred = data.get("preferred") or None
    if preferred is not None and not isinstance(preferred, str):
        raise Fail(400, "preferred: text")
    try:
        fid = ui.store().record_feedback(str(data.get("id", "")), rating=data.get("rating"), preferred=preferred)
    except UnknownCompletion as e:
        raise Fail(404, str(e)) from None
    except ValueError as e:
        raise Fail(400, str(e)) from None
    return {"ok": True, "feedback_id": fid}
