"""The HTTP edge's shared pieces: reading a JSON body within the limits, work that stops when
its client leaves, server-sent events. Routers use these; logic lives elsewhere."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator, Awaitable, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError

from ragtune.errors import RagtuneError, RequestTimeout, RequestTooLarge, UnsupportedMediaType
from ragtune.settings import ServiceSettings
from service import errors
from service.errors import ClientDisconnected

M = TypeVar("M", bound=BaseModel)


async def parse_json(request: Request, model: type[M], service: ServiceSettings) -> M:
    """The request body as `model`, parsed and validated by pydantic-core in one pass (errors take
    the same way as FastAPI's own). JSON only, at most `service.max_body_bytes`, received within
    `service.body_timeout_seconds`."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            f"the body must be JSON, sent with Content-Type: application/json (got {media_type or 'none'!r})"
        )
    limit = service.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"the body has {declared} bytes; the limit is {limit} (setting service.max_body_bytes)")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(service.body_timeout_seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge(f"the body is over the limit of {limit} bytes (setting service.max_body_bytes)")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {service.body_timeout_seconds} s (setting service.body_timeout_seconds)"
        ) from None
    try:
        return model.model_validate_json(b"".join(chunks))
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


T = TypeVar("T")


async def unless_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, unless the client disconnects first: then the work is cancelled (a request
    still queued for the engine is dropped, a running generation stops at its next token)."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    raise ClientDisconnected()


def json_body(model: type[BaseModel]) -> dict:
    """OpenAPI for a route that reads its body with `parse_json` (the schema is added to the components)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def body():
        try:
            async for event in events:
                yield f"data: {json.dumps(event)}\n\n"
        except RagtuneError as exc:  # headers are gone: the error travels as an event
            yield f"data: {json.dumps(errors.status_and_body(exc)[1])}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
