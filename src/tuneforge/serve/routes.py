"""The route map: every HTTP route of the server, in one place.

Handlers are plain module-level functions; what they share (models, batcher, feedback store, metrics,
limits) lives on `request.app.state`, set by create_app, so a handler can be tested on an app holding
only what it reads."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tuneforge.serve.body import parse_body
from tuneforge.serve.completions import canonical_model, complete
from tuneforge.serve.errors import APIError
from tuneforge.serve.monitoring import request_record
from tuneforge.serve.schemas import ChatRequest, CompletionRequest, FeedbackRequest
from tuneforge.serve.store import UnknownCompletion

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    """OpenAI chat completions. With stream=true the whole reply is generated first (in a shared
    batch) and then sent as word-sized SSE chunks: clients see the streaming protocol, not a
    lower time to first token."""
    return await complete(request, await parse_body(request, ChatRequest), chat=True)


@router.post("/v1/completions")
async def completions(request: Request):
    """OpenAI legacy completions: the prompt is continued as plain text (no chat template).
    Streaming as for chat: generated whole, then sent in pieces."""
    return await complete(request, await parse_body(request, CompletionRequest), chat=False)


def _model_card(name: str, started: int) -> dict:
    return {"id": name, "object": "model", "created": started, "owned_by": "tuneforge"}


@router.get("/v1/models")
async def list_models(request: Request):
    state = request.app.state
    return {"object": "list", "data": [_model_card(n, state.started) for n in state.model_names]}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request):
    state = request.app.state
    request_record(request)["model"] = model
    canonical_model(state.models, state.model_names, model)
    return _model_card(model, state.started)


@router.post("/v1/feedback")
async def feedback(request: Request):
    """Feedback on a completion this server returned: {completion_id, rating (-1, 0, 1)?,
    preferred?, rejected?, comment?}. Feeds `export_preferences` (DPO pairs)."""
    req = await parse_body(request, FeedbackRequest)
    record = request_record(request)
    try:
        fid = request.app.state.store.record_feedback(req.completion_id, rating=req.rating, preferred=req.preferred,
                                                      rejected=req.rejected, comment=req.comment)
    except UnknownCompletion as e:
        raise APIError(404, str(e), param="completion_id", code="completion_not_found") from None
    except ValueError as e:
        raise APIError(400, str(e)) from None
    record["id"] = f"feedback-{fid}"
    return {"id": fid, "object": "feedback", "completion_id": req.completion_id}


@router.get("/health")
async def health(request: Request):
    state = request.app.state
    batcher = state.batcher
    return {"status": "ok", "models": state.model_names, "batches": batcher.batches,
            "batched_requests": batcher.requests, "queue": batcher.pending, "confidence": state.models.has_confidence}


@router.get("/metrics")
async def prometheus_metrics(request: Request):
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
