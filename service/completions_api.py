"""`POST /v1/completions`: OpenAI's legacy text completion, the path LlamaIndex's `OpenAILike`
takes by default. The prompt is the question: retrieval and packing run as for the chat
endpoint (off with the same `retrieval` extension field), the served model's chat template
wraps it, and the answer comes back as a `text_completion` (streamed or not), sources in the
same extension field as chat."""

from __future__ import annotations

import time
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field

from ragtune.errors import UsageError
from ragtune.settings import Settings
from service import errors, limits
from service.http import json_body, parse_json, sse, unless_gone
from service.pipeline import Prepared, RagPipeline, usage_of
from service.protocol import UNSUPPORTED_CHAT_FIELDS, RetrievalOptions, SamplingFields, StreamOptions, neutral

OPENAI_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


class CompletionRequest(SamplingFields):
    model_config = ConfigDict(extra="allow", strict=True)  # extras are refused by name below
    model: str
    prompt: str | list[str] = Field(description="The question; a list must hold exactly one prompt (n = 1).")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice is generated.")
    echo: bool = False
    user: str | None = None
    retrieval: RetrievalOptions | None = Field(None, description="ragtune extension")

    def refused(self) -> str | None:
        known = (*UNSUPPORTED_CHAT_FIELDS, "best_of", "suffix")
        for key, value in (self.model_extra or {}).items():
            if key not in known or not neutral(value):
                return key
        return None


def router(settings: Settings, dependencies: list) -> APIRouter:
    api = APIRouter(dependencies=dependencies, responses=errors.RESPONSES)
    service = settings.service

    @api.post("/v1/completions", openapi_extra=json_body(CompletionRequest))
    async def completions(request: Request):
        body: CompletionRequest = await parse_json(request, CompletionRequest, service)
        refused = body.refused()
        if refused:
            raise UsageError(f"{refused}: not supported by ragtune's completions endpoint; leave it out", param=refused)
        if body.echo:
            raise UsageError("echo: the prompt is a question here, not text to continue; leave echo out", param="echo")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise UsageError(f"prompt: send one prompt (got {len(prompts)})", param="prompt")
        limits.check_question(prompts[0], service, "prompt")
        limits.check_sampling(body, body.retrieval, service)
        rag: RagPipeline = request.app.state.pipeline
        adapter = rag.check_model(body.model)
        params = body.params(OPENAI_DEFAULT_MAX_TOKENS, settings.generation.temperature, adapter)
        prepared = await unless_gone(request, rag.prepare_async(prompts[0], [], body.retrieval, params.max_tokens))
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return sse(_events(rag, prepared, params, cid, created, body.model, include_usage))
        completion = await unless_gone(request, rag.complete(prepared, params))
        choice = {"index": 0, "text": completion.text, "logprobs": None, "finish_reason": completion.finish_reason}
        return JSONResponse({
            "id": cid, "object": "text_completion", "created": created, "model": body.model, "choices": [choice],
            "usage": usage_of(completion).model_dump(), "sources": [c.model_dump() for c in prepared.citations],
        })

    return api


async def _events(rag: RagPipeline, prepared: Prepared, params, cid: str, created: int, model: str,
                  include_usage: bool) -> AsyncIterator[dict]:
    def chunk(choices: list, **extra) -> dict:
        return {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices, **extra}

    sources = [c.model_dump() for c in prepared.citations]  # ride on the first chunk that has a choice
    async for event in rag.stream(prepared, params):
        if event.done:
            finish = {"index": 0, "text": "", "logprobs": None, "finish_reason": event.completion.finish_reason}
            yield chunk([finish], **({"sources": sources} if sources is not None else {}))
            if include_usage:
                yield chunk([], usage=usage_of(event.completion).model_dump())
        elif event.text:
            text = {"index": 0, "text": event.text, "logprobs": None, "finish_reason": None}
            yield chunk([text], **({"sources": sources} if sources is not None else {}))
            sources = None
