"""The FastAPI app: models load in the lifespan, routes parse, call the pipeline and map."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from ragtune.errors import RagtuneError, UnknownModel, UsageError
from ragtune.settings import ServiceSettings, Settings
from ragtune.registry import Registry
from service import admin, completions_api, embeddings_api, errors, limits
from service.http import json_body, json_response, parse_json, sse, unless_gone
from service.adapters import AdapterSync
from service.auth import require_key
from service.generation import create_generator
from service.generation.base import Generator
from service.metrics import Metrics, MetricsMiddleware
from service.pipeline import Prepared, RagPipeline, build_pipeline, usage_of
from service.protocol import (
    HONOURED_FIELDS, AskRequest, AskResponse, ChatCompletionRequest, RetrievalOptions, chat_chunk, chat_response, completion_id,
    model_cards,
)


def create_app(settings: Settings, generator: Generator | None = None, embedder=None) -> FastAPI:
    """`generator` and `embedder` may be passed in (already loaded); otherwise the lifespan loads them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal generator, embedder
        if embedder is None:
            from indexer.embedder import load_embedder

            embedder = await asyncio.to_thread(load_embedder, settings.embedding)
        if generator is None:
            generator = await asyncio.to_thread(create_generator, settings.generation)
        app.state.pipeline = build_pipeline(settings, embedder, generator, metrics.observe_answer)
        await generator.ready()  # a remote backend reports its context length; a down one is retried per request
        registry = Registry(settings.adapters, settings.generation.model, settings.adapters.resolved_base_dir(settings.generation))
        sync = app.state.adapter_sync = AdapterSync(
            registry, generator, settings.adapters.sync_seconds, poll_backend=settings.generation.backend == "vllm"
        )
        try:
            await sync.sync()
        except RagtuneError as exc:  # a broken registry must not keep the base model from serving
            logging.getLogger("ragtune.adapters").error("adapter registry unusable: %s", exc)
        reconciler = asyncio.create_task(sync.run())
        try:
            yield
        finally:
            reconciler.cancel()
            await generator.close()

    service = settings.service
    if not service.api_keys:
        if service.environment == "production":
            raise UsageError(
                "service.environment is production but no client API key is set: set RAGTUNE_SERVICE__API_KEYS "
                "(a JSON list of bearer tokens), or RAGTUNE_SERVICE__ENVIRONMENT=development for an open service"
            )
        logging.getLogger("ragtune.service").warning("no client API keys set: the API is open (development)")

    async def client_key(request: Request) -> None:  # async: a sync dependency costs a thread hop
        require_key(request, service.api_keys, "one of service.api_keys")

    # No dependency at all for an open service: FastAPI solves each one on every request.
    Client = [Depends(client_key)] if service.api_keys else []
    metrics = Metrics()
    started = int(time.time())  # the base model's `created`: when this service loaded it
    app = FastAPI(title="ragtune", version="0.1.0", lifespan=lifespan)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if service.cors_origins:  # outermost: a browser's preflight is answered before auth
        app.add_middleware(
            CORSMiddleware, allow_origins=service.cors_origins, allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"], max_age=600,
        )
    errors.install(app)
    app.include_router(admin.router(settings.service))
    app.include_router(embeddings_api.router(service, Client))
    app.include_router(completions_api.router(settings, Client))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        rag = app.state.pipeline
        checks: dict[str, str] = {}
        try:
            checks["index"] = (await asyncio.to_thread(rag.retriever.snapshot)).version_id
        except RagtuneError as exc:
            checks["index"] = f"not ready: {exc}"
        checks["backend"] = "ok" if await rag.generator.ready() else "unreachable"
        ok = checks["backend"] == "ok" and not checks["index"].startswith("not ready")
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def cards() -> list[dict]:
        try:
            adapters = await asyncio.to_thread(app.state.adapter_sync.registry.list)
        except RagtuneError:  # a broken registry: the lifespan has logged it; the names are still served
            adapters = []
        created = {a.name: _unix(a.updated) for a in adapters} | {settings.generation.model: started}
        return model_cards(app.state.pipeline.generator.models(), created)

    @app.get("/v1/models", dependencies=Client, responses=errors.RESPONSES)
    async def models() -> dict:
        return {"object": "list", "data": await cards()}

    @app.get("/v1/models/{model:path}", dependencies=Client, responses=errors.RESPONSES)
    async def model(model: str) -> dict:
        card = next((c for c in await cards() if c["id"] == model), None)
        if card is None:
            raise UnknownModel(f"model {model!r} does not exist; GET /v1/models lists the base model and adapters")
        return card

    @app.post("/ask", response_model=None, responses={200: {"model": AskResponse}, **errors.RESPONSES}, dependencies=Client,
              openapi_extra=json_body(AskRequest))
    async def ask(request: Request):
        body = await parse_json(request, AskRequest, service)
        rag: RagPipeline = app.state.pipeline  # set by the lifespan; no dependency to solve per request
        limits.check_ask(body, service)
        adapter = rag.check_model(body.model)
        params = body.params(settings.generation.max_answer_tokens, settings.generation.temperature, adapter)
        overrides = {k: v for k, v in {"top_k": body.top_k, "min_score": body.min_score}.items() if v is not None}
        options = (body.filters or RetrievalOptions()).model_copy(update=overrides) if overrides else body.filters
        prepared = await unless_gone(request, rag.prepare_async(body.question, [], options, params.max_tokens))
        if body.stream:
            return sse(_ask_events(rag, prepared, params))
        completion = await unless_gone(request, rag.complete(prepared, params))
        return json_response(AskResponse(
            answer=completion.text, citations=prepared.citations, usage=usage_of(completion),
            ledger=_ledger(prepared), model=completion.model, index_version=prepared.index_version,
            finish_reason=completion.finish_reason, timings_ms={k: round(v, 2) for k, v in prepared.timings_ms.items()},
        ))

    @app.post("/v1/chat/completions", response_model=None, responses=errors.RESPONSES, dependencies=Client,
              openapi_extra=json_body(ChatCompletionRequest))
    async def chat(request: Request):
        body = await parse_json(request, ChatCompletionRequest, service)
        rag: RagPipeline = app.state.pipeline
        limits.check_chat(body, service, settings.generation.backend)
        adapter = rag.check_model(body.model)
        params = body.params(settings.generation.max_answer_tokens, settings.generation.temperature, adapter, body.max_completion_tokens)
        params = dataclasses.replace(params, extra=body.passthrough(HONOURED_FIELDS[settings.generation.backend]))
        system = "\n\n".join(m.text() for m in body.messages if m.role in ("system", "developer")) or None
        turns = [m.turn() for m in body.messages if m.role not in ("system", "developer")]
        last_user = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=None)
        if last_user is None:
            raise UsageError("messages: at least one user message is needed", param="messages")
        question = turns[last_user]["content"]
        limits.check_question(question, service, "messages")
        history, tail = turns[:last_user], turns[last_user + 1 :]
        retrieval = body.retrieval or RetrievalOptions()
        query, query_from = await rag.search_query(question, history) if retrieval.enabled else (question, "question")
        prepared = await unless_gone(
            request, rag.prepare_async(question, history, retrieval, params.max_tokens, system, tail, query)
        )
        prepared.query_from = query_from
        cid = completion_id()
        model = body.model
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return sse(_chat_events(rag, prepared, params, cid, model, include_usage))
        completion = await unless_gone(request, rag.complete(prepared, params))
        return JSONResponse(chat_response(
            cid, model, completion.text, completion.finish_reason, usage_of(completion), prepared.citations, completion.choices,
            _ledger(prepared), completion.logprobs,
        ))

    def openapi() -> dict:
        if app.openapi_schema is None:  # FastAPI's, plus the bodies the routes parse themselves
            schema = FastAPI.openapi(app)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (AskRequest, ChatCompletionRequest, embeddings_api.EmbeddingRequest, completions_api.CompletionRequest):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(body.pop("$defs", {}))
                schemas[model.__name__] = body
            errors.document(schema)
        return app.openapi_schema

    app.openapi = openapi
    return app


def run_server(app: FastAPI, service: ServiceSettings, host: str | None = None, port: int | None = None) -> None:
    """Serve `app` with uvicorn as `ragtune serve` does (bench/query.py serves the same way)."""
    import uvicorn

    from service.server import bounded_http_protocol

    uvicorn.run(
        app, host=host or service.host, port=port or service.port, log_level="info", access_log=service.access_log,
        http=bounded_http_protocol(service.header_timeout_seconds), limit_concurrency=service.max_connections,
    )


def _unix(stamp: str) -> int:
    """The registry's ISO times ("2026-11-26T03:00:00Z") as Unix seconds."""
    import datetime as dt

    return int(dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp())


def _ledger(prepared: Prepared) -> dict:
    if prepared.ledger is None:
        return {"retrieval": "disabled", "dropped_turns": prepared.dropped_turns}
    ledger = prepared.ledger
    return {
        "query": ledger.query, "query_from": prepared.query_from,
        "context_window": ledger.context_window, "reserved_answer_tokens": ledger.reserved_answer_tokens,
        "base_tokens": ledger.base_tokens, "budget": ledger.budget, "prompt_tokens": ledger.prompt_tokens,
        "join_tokens": ledger.join_tokens, "demonstrations": ledger.demonstrations,
        "demonstration_tokens": ledger.demonstration_tokens, "dropped_turns": ledger.dropped_turns,
        "retrieved": ledger.retrieved, "packed": ledger.packed, "dropped": ledger.dropped,
    }


async def _ask_events(rag: RagPipeline, prepared: Prepared, params) -> AsyncIterator[dict]:
    yield {"type": "citations", "citations": [c.model_dump() for c in prepared.citations], "index_version": prepared.index_version}
    async for event in rag.stream(prepared, params):
        if event.done:
            completion = event.completion
            yield {"type": "done", "finish_reason": completion.finish_reason, "usage": usage_of(completion).model_dump(),
                   "ledger": _ledger(prepared), "model": completion.model}
        else:
            yield {"type": "delta", "text": event.text}


async def _chat_events(rag: RagPipeline, prepared: Prepared, params, cid: str, model: str, include_usage: bool) -> AsyncIterator[dict]:
    created = int(time.time())
    yield chat_chunk(cid, model, created, {"role": "assistant", "content": ""}, sources=prepared.citations)
    async for event in rag.stream(prepared, params):
        if event.done:
            yield chat_chunk(cid, model, created, {}, finish=event.completion.finish_reason)
            if include_usage:
                yield chat_chunk(cid, model, created, None, usage=usage_of(event.completion))
        elif event.choices is not None:  # the backend's own choices (pass-through): unchanged
            yield {**chat_chunk(cid, model, created, None), "choices": event.choices}
        elif event.text:
            yield chat_chunk(cid, model, created, {"content": event.text})
