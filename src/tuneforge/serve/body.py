"""Reading a request's JSON body into one of the request models, with the size limit and OpenAI-shaped
errors for every way a body can be wrong."""

from __future__ import annotations

import json

from fastapi import Request
from pydantic import BaseModel, ValidationError

from tuneforge.serve.errors import APIError, validation_error
from tuneforge.serve.monitoring import REQUEST_RECORD_KEY

MAX_BODY_BYTES = 4 * 1024 * 1024


async def parse_body(request: Request, cls: type[BaseModel]):
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
    record = request.scope.get(REQUEST_RECORD_KEY)
    if record is not None and isinstance(obj.get("model"), str):
        record["model"] = obj["model"][:200]  # for the request log, even if the rest is invalid
    try:
        return cls.model_validate(obj)
    except ValidationError as e:
        raise validation_error(e.errors()) from None
