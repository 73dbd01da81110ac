"""Operations: liveness, readiness (index and backend), Prometheus metrics. No key needed."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ragtune.errors import RagtuneError
from service.deps import Pipeline

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(rag: Pipeline) -> JSONResponse:
    """Readiness: the index is loaded and the generation backend is up."""
    checks: dict[str, str] = {}
    try:
        checks["index"] = (await asyncio.to_thread(rag.retriever.snapshot)).version_id
    except RagtuneError as exc:
        checks["index"] = f"not ready: {exc}"
    checks["backend"] = "ok" if await rag.generator.ready() else "unreachable"
    ok = checks["backend"] == "ok" and not checks["index"].startswith("not ready")
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    """Prometheus metrics: requests by route and status, stage durations, tokens."""
    metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=metrics.content_type)
