"""`POST /ask`: ragtune's own question answering, with citations and the ledger."""

from __future__ import annotations

from typing import AsyncIterator

from fastapi import APIRouter, Depends, Request

from service import errors, limits
from service.deps import Config, Pipeline, Sync, check_collection, client_key
from service.http import json_body, parse_json, sse, unless_gone
from service.pipeline import Prepared, RagPipeline, usage_of
from service.protocol import AskRequest
from service.responses import AskResponse, ledger_of
from service.schema import RetrievalOptions

router = APIRouter(dependencies=[Depends(client_key)], responses=errors.RESPONSES)


@router.post("/ask", response_model=AskResponse, openapi_extra=json_body(AskRequest))
async def ask(request: Request, rag: Pipeline, settings: Config, sync: Sync):
    """Answer a question from the index: the answer, numbered citations, usage, the ledger of what was
    retrieved, packed and dropped, and timings. `stream` sends server-sent events."""
    body = await parse_json(request, AskRequest, settings.service)
    limits.check_ask(body, settings.service)
    adapter = rag.check_model(body.model)
    params = body.params(settings.generation, adapter)
    overrides = {k: v for k, v in {"top_k": body.top_k, "min_score": body.min_score, "collection": body.collection}.items()
                 if v is not None}
    options = (body.filters or RetrievalOptions()).model_copy(update=overrides)
    check_collection(request, options.collection)
    prepared = await unless_gone(request, rag.prepare_async(body.question, [], options, params.max_tokens))
    warnings = [w for w in [sync.lineage(adapter, prepared.index_version)] if w]
    if body.stream:
        return sse(_events(rag, prepared, params, warnings))
    completion = await unless_gone(request, rag.complete(prepared, params))
    return AskResponse(
        answer=completion.text, citations=prepared.citations, usage=usage_of(completion), ledger=ledger_of(prepared, warnings),
        model=completion.model, index_version=prepared.index_version, finish_reason=completion.finish_reason,
        timings_ms={k: round(v, 2) for k, v in prepared.timings_ms.items()},
    )


async def _events(rag: RagPipeline, prepared: Prepared, params, warnings: list[str]) -> AsyncIterator[dict]:
    """citations first, then text deltas, then done (finish reason, usage, ledger)."""
    yield {"type": "citations", "citations": [c.model_dump() for c in prepared.citations], "index_version": prepared.index_version}
    async for event in rag.stream(prepared, params):
        if event.done:
            completion = event.completion
            yield {"type": "done", "finish_reason": completion.finish_reason, "usage": usage_of(completion).model_dump(),
                   "ledger": ledger_of(prepared, warnings).model_dump(), "model": completion.model}
        else:
            yield {"type": "delta", "text": event.text}
