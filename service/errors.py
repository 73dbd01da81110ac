"""The one place exceptions become HTTP answers, in OpenAI's error shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from finetune.registry import AdapterNotFound
from ragtune import errors
from service.protocol import error_body

log = logging.getLogger("ragtune.service")

# exception type -> (status, OpenAI error type, code, param)
_MAPPING: list[tuple[type[Exception], int, str, str | None, str | None]] = [
    (errors.UnknownModel, 404, "invalid_request_error", "model_not_found", "model"),
    (AdapterNotFound, 404, "invalid_request_error", "adapter_not_found", None),
    (errors.Unauthorized, 401, "invalid_request_error", "invalid_api_key", None),
    (errors.Forbidden, 403, "invalid_request_error", "forbidden", None),
    (errors.IndexNotFound, 404, "invalid_request_error", "index_not_found", None),
    (errors.IndexIncompatible, 409, "invalid_request_error", "index_incompatible", None),
    (errors.UsageError, 400, "invalid_request_error", None, None),
    (errors.BackendTimeout, 504, "server_error", "backend_timeout", None),
    (errors.BackendUnavailable, 503, "server_error", "backend_unavailable", None),
    (errors.BackendError, 502, "server_error", "backend_error", None),
    (errors.IndexCorrupt, 503, "server_error", "index_corrupt", None),
]


def status_and_body(exc: Exception) -> tuple[int, dict]:
    for kind, status, type_, code, param in _MAPPING:
        if isinstance(exc, kind):
            return status, error_body(str(exc), type_, param, code)
    log.exception("unexpected error", exc_info=exc)
    return 500, error_body("internal error; see the service log", "server_error", None, "internal_error")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    return f"{param or 'body'}: {first.get('msg')}", param


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_value"), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None, None), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        status, body = status_and_body(exc)
        return JSONResponse(body, status_code=status)
