"""The HTTP edge's shared pieces: reading a JSON body within the limits, work that stops when
its client leaves, server-sent events, files uploaded. Routers use these; logic lives elsewhere."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from ragtune.errors import RagtuneError, RequestTimeout, RequestTooLarge, UnsupportedMediaType, UsageError
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


# OpenAPI for a route that takes files with `receive_files`.
FILES_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
}}}}}


MAX_NAME_BYTES = 255  # a file name's limit on Linux file systems


def _name_problem(name: str) -> str | None:
    """Why a file name cannot be written as it is (None: it can)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a file name may not hold control characters (NUL, newline...)"
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        return "a file name must be valid UTF-8"
    if size > MAX_NAME_BYTES:
        return f"a file name of {size} bytes; the limit is {MAX_NAME_BYTES}"
    return None


async def receive_files(
    request: Request, folder: Path, service: ServiceSettings, max_files: int, what: str, refuse: Callable[[str], str | None],
) -> list[Path]:
    """The files of a multipart upload (one `files` part each), written into a new `folder` by
    their names alone; `refuse(name)` says why a name is not taken (None: it is). At most
    `service.max_upload_bytes` in all, sent with a Content-Length, received within
    `service.upload_timeout_seconds`. On any error nothing is left behind."""
    declared, limit = request.headers.get("content-length", ""), service.max_upload_bytes
    if not declared.isdigit():
        raise UsageError("send the upload with a Content-Length (no chunked uploads)", param="files")
    if int(declared) > limit:
        raise RequestTooLarge(f"the upload has {declared} bytes; the limit is {limit} (setting service.max_upload_bytes)")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaType(f"send the {what} as multipart/form-data, one `files` part per file")
    try:
        async with asyncio.timeout(service.upload_timeout_seconds):
            return await _write_files(request, folder, max_files, refuse)
    except TimeoutError:
        shutil.rmtree(folder, ignore_errors=True)
        raise RequestTimeout(f"the upload did not arrive within {service.upload_timeout_seconds} s "
                             "(setting service.upload_timeout_seconds)") from None


async def _write_files(request: Request, folder: Path, max_files: int, refuse: Callable[[str], str | None]) -> list[Path]:
    try:
        form = await request.form(max_files=max_files, max_fields=0)
    except HTTPException as exc:  # the multipart parser's own refusals: too many files, a field that is not a file
        raise UsageError(f"the upload: {exc.detail}; send only file parts named `files` (at most {max_files})",
                         param="files") from None
    folder.mkdir(parents=True)
    paths: list[Path] = []
    try:
        for _, upload in form.multi_items():
            name = Path(getattr(upload, "filename", None) or "").name
            why = _name_problem(name) or refuse(name)
            if why is not None:
                raise UsageError(f"{name[:80]!r}: {why}", param="files")
            if (folder / name).exists():
                raise UsageError(f"{name!r} is in this upload twice", param="files")
            with open(folder / name, "wb") as target:
                await asyncio.to_thread(shutil.copyfileobj, upload.file, target)
            paths.append(folder / name)
        if not paths:
            raise UsageError("no files in the upload: send them as `files` parts", param="files")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        await form.close()
    return paths
