"""The one place exceptions become HTTP answers, in OpenAI's error shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ragtune.registry import AdapterNotFound
from ragtune import errors
from service.responses import ErrorResponse, error_body

log = logging.getLogger("ragtune.service")

class ClientDisconnected(Exception):
    """The client went away before its answer was ready; nobody reads the response."""


# exception type -> (status, OpenAI error type, code, param); the first match wins.
_MAPPING: list[tuple[type[Exception], int, str, str | None, str | None]] = [
    (errors.UnknownModel, 404, "invalid_request_error", "model_not_found", "model"),
    (AdapterNotFound, 404, "invalid_request_error", "adapter_not_found", None),
    (errors.Unauthorized, 401, "invalid_request_error", "invalid_api_key", None),
    (errors.Forbidden, 403, "invalid_request_error", "forbidden", None),
    (errors.IndexNotFound, 404, "invalid_request_error", "index_not_found", None),
    (errors.CollectionNotFound, 404, "invalid_request_error", "collection_not_found", "collection"),
    (errors.NotFound, 404, "invalid_request_error", "not_found", None),
    (errors.IndexIncompatible, 409, "invalid_request_error", "index_incompatible", None),
    (errors.IndexLocked, 409, "invalid_request_error", "index_locked", None),
    (errors.ContextLengthExceeded, 400, "invalid_request_error", "context_length_exceeded", None),
    (errors.RequestTooLarge, 413, "invalid_request_error", "request_too_large", None),
    (errors.UnsupportedMediaType, 415, "invalid_request_error", "unsupported_media_type", None),
    (errors.RequestTimeout, 408, "invalid_request_error", "request_timeout", None),
    (errors.UsageError, 400, "invalid_request_error", "invalid_value", None),
    (errors.Overloaded, 503, "server_error", "overloaded", None),
    (errors.BackendTimeout, 504, "server_error", "backend_timeout", None),
    (errors.BackendUnavailable, 503, "server_error", "backend_unavailable", None),
    (errors.BackendError, 502, "server_error", "backend_error", None),
    (errors.IndexCorrupt, 503, "server_error", "index_corrupt", None),
]


def status_and_body(exc: Exception) -> tuple[int, dict]:
    for kind, status, type_, code, param in _MAPPING:
        if isinstance(exc, kind):
            return status, error_body(str(exc), type_, getattr(exc, "param", None) or param, code)
    log.exception("unexpected error", exc_info=exc)
    return 500, error_body("internal error; see the service log", "server_error", None, "internal_error")


def headers_for(exc: Exception) -> dict[str, str] | None:
    if isinstance(exc, errors.Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, errors.Overloaded):
        return {"Retry-After": str(exc.retry_after)}
    return None


def _is_union_tag(part: object) -> bool:
    """pydantic names the union member it tried in an error's location ("str", "list[TextPart]")."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool") or part[:1].isupper())


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    # The deepest location is the most specific: for `str | list[TextPart]`, the bad part's
    # field rather than "content is not a string".
    first = max(exc.errors(), key=lambda e: len(e.get("loc", ())))
    location = [str(part) for part in first.get("loc", ()) if part != "body" and not _is_union_tag(part)]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    return f"{param or 'body'}: {first.get('msg')}", param


def response_for(exc: Exception) -> Response:
    """The answer to any exception a request raised: the one mapping from errors to HTTP."""
    if isinstance(exc, ClientDisconnected):
        return Response(status_code=499)  # nginx's "client closed request": only the metrics see it
    if isinstance(exc, RequestValidationError):
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_value"), status_code=400)
    if isinstance(exc, HTTPException):  # routing's own: 404 for a path, 405 (with Allow)
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None, None), status_code=exc.status_code,
                            headers=exc.headers)
    status, body = status_and_body(exc)
    return JSONResponse(body, status_code=status, headers=headers_for(exc))


async def _handle(request: Request, exc: Exception) -> Response:
    return response_for(exc)


def install(app: FastAPI) -> None:
    for kind in (RequestValidationError, HTTPException, ClientDisconnected, errors.RagtuneError, Exception):
        app.add_exception_handler(kind, _handle)


_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
RESPONSES: dict = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in (
        (400, "Malformed request, a limit exceeded, or context_length_exceeded"), (401, "Missing or wrong API key"),
        (404, "Unknown model or no index"), (408, "Body sent too slowly"), (413, "Body too large"),
        (415, "Body is not JSON"), (503, "Overloaded (Retry-After) or backend down"),
    )
}


def document(schema: dict) -> None:
    """The OpenAPI document says what the service really answers: its errors are 400s in
    OpenAI's shape (FastAPI's default 422 with its own body is never sent)."""
    schema.setdefault("components", {}).setdefault("schemas", {})["ErrorResponse"] = ErrorResponse.model_json_schema(
        ref_template="#/components/schemas/{model}")
    defs = schema["components"]["schemas"]["ErrorResponse"].pop("$defs", {})
    schema["components"]["schemas"].update(defs)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", {"description": "Malformed request", "content": _ERROR_CONTENT})
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)
