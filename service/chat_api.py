"""`POST /v1/chat/completions`: OpenAI's chat API over the RAG pipeline. The last user message
is the question; earlier turns are the history; a follow-up is searched with the conversation."""

from __future__ import annotations

import dataclasses
import time
from typing import AsyncIterator

from fastapi import APIRouter, Depends, Request

from ragtune.errors import NotFound, UsageError
from service import errors, limits
from service.deps import Config, Pipeline, Sync, check_collection, client_key
from service.http import json_body, parse_json, sse, unless_gone
from service.pipeline import Prepared, RagPipeline, usage_of
from service.protocol import HONOURED_FIELDS, ChatCompletionRequest
from service.responses import ChatCompletion, ChatCompletionChunk, ChunkChoice, chat_completion, completion_id, ledger_of

router = APIRouter(dependencies=[Depends(client_key)], responses=errors.RESPONSES)


STREAMED = {200: {"description": "A chat completion; with `stream`, server-sent events of chunks, then `[DONE]`",
                  "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/ChatCompletionChunk"}}}}}


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=STREAMED,
             openapi_extra=json_body(ChatCompletionRequest))
async def chat(request: Request, rag: Pipeline, settings: Config, sync: Sync):
    """OpenAI's chat completion, with retrieval: the latest user message drives it; `sources` and
    `ledger` ride along."""
    body = await parse_json(request, ChatCompletionRequest, settings.service)
    limits.check_chat(body, settings.service, settings.generation.backend)
    adapter = rag.check_model(body.model)
    params = body.params(settings.generation, adapter, body.max_completion_tokens)
    params = dataclasses.replace(params, extra=body.passthrough(HONOURED_FIELDS[settings.generation.backend]))
    system = "\n\n".join(m.text() for m in body.messages if m.role in ("system", "developer")) or None
    turns = [m.turn() for m in body.messages if m.role not in ("system", "developer")]
    last_user = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=None)
    if last_user is None:
        raise UsageError("messages: at least one user message is needed", param="messages")
    question = turns[last_user]["content"]
    retrieval = limits.retrieval_options(body.retrieval, question, system, settings.service, "messages")
    history, tail = turns[:last_user], turns[last_user + 1 :]
    check_collection(request, retrieval.collection)
    query, query_from = await rag.search_query(question, history) if retrieval.enabled else (question, "question")
    prepared = await unless_gone(request, rag.prepare_async(question, history, retrieval, params.max_tokens, system, tail, query))
    prepared.query_from = query_from
    warnings = [w for w in [sync.lineage(adapter, prepared.index_version)] if w]
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse(_events(rag, prepared, params, completion_id(), body.model, include_usage, warnings))
    completion = await unless_gone(request, rag.complete(prepared, params))
    return chat_completion(completion_id(), body.model, completion, prepared, warnings)


async def _events(rag: RagPipeline, prepared: Prepared, params, cid: str, model: str, include_usage: bool,
                  warnings: list[str]) -> AsyncIterator[dict]:
    created = int(time.time())

    def chunk(choices: list, **extra) -> dict:  # usage and sources only where they are sent
        return ChatCompletionChunk(id=cid, created=created, model=model, choices=choices, **extra).model_dump(
            exclude={k for k in ("usage", "sources", "ledger") if k not in extra})

    yield chunk([ChunkChoice(index=0, delta={"role": "assistant", "content": ""}, finish_reason=None, logprobs=None)],
                sources=prepared.citations)
    async for event in rag.stream(prepared, params):
        if event.done:
            yield chunk([ChunkChoice(index=0, delta={}, finish_reason=event.completion.finish_reason, logprobs=None)],
                        ledger=ledger_of(prepared, warnings))
            if include_usage:
                yield chunk([], usage=usage_of(event.completion))
        elif event.choices is not None:  # the backend's own choices (pass-through): unchanged
            yield chunk(event.choices)
        elif event.text:
            yield chunk([ChunkChoice(index=0, delta={"content": event.text}, finish_reason=None, logprobs=None)])


@router.api_route("/v1/responses", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
@router.api_route("/v1/responses/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
async def responses_api() -> None:
    """OpenAI's Responses API is not served: say so, and which endpoint does the same job."""
    raise NotFound("the Responses API (/v1/responses) is not served here; send the conversation to "
                   "POST /v1/chat/completions (OpenAI's chat API, streaming included) or the question to POST /ask",
                   param=None)
