"""`POST /v1/completions`: OpenAI's legacy text completion, the path LlamaIndex's `OpenAILike`
takes by default. The prompt is the question: retrieval and packing run as for the chat
endpoint (off with the same `retrieval` extension field), the served model's chat template
wraps it, and the answer comes back as a `text_completion` (streamed or not), sources in the
same extension field as chat."""

from __future__ import annotations

import time
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Depends, Request
from pydantic import ConfigDict, Field

from ragtune.errors import UsageError
from service import errors, limits
from service.deps import Config, Pipeline, check_collection, client_key
from service.http import json_body, parse_json, sse, unless_gone
from service.pipeline import Prepared, RagPipeline, usage_of
from service.protocol import UNSUPPORTED_CHAT_FIELDS, SamplingFields, StreamOptions, neutral
from service.responses import TextChoice, TextCompletion
from service.schema import RetrievalOptions

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


router = APIRouter(dependencies=[Depends(client_key)], responses=errors.RESPONSES)


@router.post("/v1/completions", response_model=TextCompletion, openapi_extra=json_body(CompletionRequest))
async def completions(request: Request, rag: Pipeline, settings: Config):
    """OpenAI's text completion: the prompt is the question; retrieval and `sources` as for chat."""
    body: CompletionRequest = await parse_json(request, CompletionRequest, settings.service)
    refused = body.refused()
    if refused:
        raise UsageError(f"{refused}: not supported by ragtune's completions endpoint; leave it out", param=refused)
    if body.echo:
        raise UsageError("echo: the prompt is a question here, not text to continue; leave echo out", param="echo")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise UsageError(f"prompt: send one prompt (got {len(prompts)})", param="prompt")
    if len(prompts[0]) > settings.service.max_message_chars:
        raise UsageError(f"prompt: {len(prompts[0])} characters; the limit is {settings.service.max_message_chars} "
                         "(setting service.max_message_chars)", param="prompt")
    retrieval = limits.retrieval_options(body.retrieval, prompts[0], None, settings.service, "prompt")
    limits.check_sampling(body, retrieval, settings.service)
    check_collection(request, retrieval.collection)
    adapter = rag.check_model(body.model)
    params = body.params(settings.generation, adapter, default_max=OPENAI_DEFAULT_MAX_TOKENS)
    prepared = await unless_gone(request, rag.prepare_async(prompts[0], [], retrieval, params.max_tokens))
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse(_events(rag, prepared, params, cid, created, body.model, include_usage))
    completion = await unless_gone(request, rag.complete(prepared, params))
    return TextCompletion(
        id=cid, created=created, model=body.model, usage=usage_of(completion), sources=prepared.citations,
        choices=[TextChoice(text=completion.text, finish_reason=completion.finish_reason)],
    )


async def _events(rag: RagPipeline, prepared: Prepared, params, cid: str, created: int, model: str,
                  include_usage: bool) -> AsyncIterator[dict]:
    def chunk(choices: list[TextChoice], **extra) -> dict:  # usage and sources only where they are sent
        return TextCompletion(id=cid, created=created, model=model, choices=choices, **extra).model_dump(
            exclude={k for k in ("usage", "sources") if k not in extra})

    sources = {"sources": prepared.citations}  # ride on the first chunk that has a choice
    async for event in rag.stream(prepared, params):
        if event.done:
            yield chunk([TextChoice(text="", finish_reason=event.completion.finish_reason)], **sources)
            if include_usage:
                yield chunk([], usage=usage_of(event.completion))
        elif event.text:
            yield chunk([TextChoice(text=event.text)], **sources)
            sources = {}
