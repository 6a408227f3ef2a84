"""Chat and legacy completions: check a request against the server's limits, batch it, record it, and
answer in OpenAI's shape, whole or as server-sent events.

Streaming generates the whole reply first (in a shared batch) and then sends it as word-sized chunks:
clients see the streaming protocol, not a lower time to first token."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from tuneforge.serve.batching import SamplingKey
from tuneforge.serve.errors import APIError
from tuneforge.serve.monitoring import request_record
from tuneforge.serve.schemas import SamplingRequest

log = logging.getLogger("tuneforge.serve")

MIN_TEMPERATURE = 1e-4  # a lower temperature is greedy decoding
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for legacy completions; chat: the rest of the context
_PIECES = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class CompletionLimits:
    """The server's limits per request, in tokens."""

    max_tokens: int = 1024
    max_prompt_tokens: int = 4096


def canonical_model(models, model_names: list[str], model: str) -> str:
    """The batching key's model for a requested name (aliases share batches); 404 for a name not served."""
    try:
        target = models.target(model)
    except KeyError:
        raise APIError(404, f"The model '{model}' does not exist. Served models: {', '.join(model_names)}",
                       param="model", code="model_not_found") from None
    return "base" if target is None else target


def plan_completion(req: SamplingRequest, chat: bool, models, model_names: list[str],
                    limits: CompletionLimits) -> tuple[SamplingKey, str | list[dict], str | None]:
    """(batching key, prompt, question for the confidence estimate or None), or an APIError naming the
    parameter that breaks a limit."""
    key_model = canonical_model(models, model_names, req.model)
    asked = req.max_completion_tokens or req.max_tokens
    if asked and asked > limits.max_tokens:
        which = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        raise APIError(400, f"Invalid value for '{which}': {asked} is more than this server allows "
                            f"({limits.max_tokens}).", param=which, code="invalid_value")
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
    if prompt_tokens > limits.max_prompt_tokens:
        raise APIError(400, f"The prompt is {prompt_tokens} tokens; this server accepts at most "
                            f"{limits.max_prompt_tokens}.", param=prompt_param, code="context_length_exceeded")
    context = models.context_length
    if asked:
        max_tokens = asked
    elif chat:  # as OpenAI: up to the rest of the context (within the server's limit)
        max_tokens = max(1, min(limits.max_tokens, (context - prompt_tokens) if context else limits.max_tokens))
    else:
        max_tokens = min(COMPLETIONS_DEFAULT_MAX_TOKENS, limits.max_tokens)
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
    return key, prompt, question if want_confidence else None


async def complete(request: Request, req: SamplingRequest, chat: bool):
    """Answer one chat (`chat`) or legacy completion request, using the models, batcher, store, metrics
    and limits on `request.app.state`."""
    state = request.app.state
    record = request_record(request)
    record["model"] = req.model
    key, prompt, question = plan_completion(req, chat, state.models, state.model_names, state.limits)
    try:
        future = state.batcher.submit(key, prompt, question)
    except RuntimeError as e:
        raise APIError(503, str(e), type="server_error", code="unavailable") from None
    result = await asyncio.wrap_future(future)

    cid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    record.update(id=cid, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
    state.metrics.prompt_tokens.labels(req.model).inc(result.prompt_tokens)
    state.metrics.completion_tokens.labels(req.model).inc(result.completion_tokens)
    try:
        state.store.record_completion(cid, req.model, prompt, result.text, endpoint="chat" if chat else "completion",
                                      finish_reason=result.finish_reason, created=created)
    except Exception:  # noqa: BLE001 - the answer matters more than its record
        log.exception("could not store completion %s", cid)
    return completion_response(req, chat, cid, created, result)


def completion_response(req: SamplingRequest, chat: bool, cid: str, created: int, result):
    """`result` (a BatchResult) in OpenAI's chat.completion / text_completion shape, or its SSE stream."""
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


def _pieces(text: str) -> list[str]:
    """Word-sized pieces whose concatenation is exactly `text` (the stream's deltas)."""
    return _PIECES.findall(text)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
