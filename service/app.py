"""The FastAPI app: models load in the lifespan; the routers (one module per API) do the rest."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ragtune import __version__
from ragtune.errors import RagtuneError, UsageError
from ragtune.registry import Registry
from ragtune.settings import ServiceSettings, Settings
from service import (
    admin, ask_api, chat_api, collections_api, completions_api, embeddings_api, errors, ingest_api, models_api, ops_api, page,
)
from service.adapters import AdapterSync
from service.generation import create_generator, create_judge
from service.generation.base import Generator
from service.metrics import Metrics, MetricsMiddleware
from service.pipeline import build_pipeline
from service.protocol import AskRequest, ChatCompletionRequest
from service.responses import ChatCompletionChunk

log = logging.getLogger("ragtune.service")


def create_app(settings: Settings, generator: Generator | None = None, embedder=None) -> FastAPI:
    """`generator` and `embedder` may be passed in (already loaded: tests pass fakes); otherwise
    the lifespan loads the configured ones."""
    if not settings.service.api_keys:
        if settings.service.environment == "production":
            raise UsageError(
                "service.environment is production but no client API key is set: set RAGTUNE_SERVICE__API_KEYS "
                "(a JSON list of bearer tokens), or RAGTUNE_SERVICE__ENVIRONMENT=development for an open service"
            )
        log.warning("no client API keys set: the API is open (development)")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal generator, embedder
        if embedder is None:
            from indexer.embedder import load_embedder

            embedder = await asyncio.to_thread(load_embedder, settings.embedding, settings.index)
        if generator is None:
            generator = await asyncio.to_thread(create_generator, settings.generation)
        judge = await asyncio.to_thread(create_judge, settings.generation, settings.prompt.answerable_check_model_path)
        app.state.pipeline = build_pipeline(settings, embedder, generator, app.state.metrics.observe_answer, judge=judge)
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
            if judge is not None:
                await judge.close()

    app = FastAPI(title="ragtune", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.ingest_jobs = ingest_api.Jobs()
    app.state.embedding_queue = embeddings_api.EmbeddingQueue(settings.service.max_embedding_queue)
    app.state.started = int(time.time())  # the base model's `created`: when this service loaded it
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.service.cors_origins:  # outermost: a browser's preflight is answered before auth
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.service.cors_origins, allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"], max_age=600,
        )
    errors.install(app)
    for module in (ops_api, ask_api, chat_api, completions_api, embeddings_api, models_api, collections_api, admin, ingest_api):
        app.include_router(module.router)
    page.install(app)  # the web page at /, Swagger UI at /docs

    def openapi() -> dict:
        if app.openapi_schema is None:  # FastAPI's, plus the bodies the routes read themselves (service/http.py)
            schema = FastAPI.openapi(app)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (AskRequest, ChatCompletionRequest, embeddings_api.EmbeddingRequest, completions_api.CompletionRequest,
                          ChatCompletionChunk):
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

    uvicorn.run(  # log_config=None: uvicorn logs through the handler `ragtune` configured (ragtune/configure.py)
        app, host=host or service.host, port=port or service.port, log_config=None, access_log=service.access_log,
        http=bounded_http_protocol(service.header_timeout_seconds), limit_concurrency=service.max_connections,
    )
