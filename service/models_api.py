"""`GET /v1/models`: the base model, every published adapter a request may name, and the
embedder `/v1/embeddings` answers with."""

from __future__ import annotations

import asyncio
import datetime as dt

from fastapi import APIRouter, Depends, Request

from ragtune.errors import RagtuneError, UnknownModel
from indexer import store
from service import errors
from service.deps import Config, Pipeline, Sync, client_key
from service.responses import ModelCard, ModelList, model_cards

router = APIRouter(dependencies=[Depends(client_key)], responses=errors.RESPONSES)


async def _cards(request: Request, rag: Pipeline, sync: Sync, settings: Config) -> list[ModelCard]:
    try:
        adapters = await asyncio.to_thread(sync.registry.list)
    except RagtuneError:  # a broken registry: the lifespan has logged it; the names are still served
        adapters = []
    created = {a.name: _unix(a.updated) for a in adapters} | {settings.generation.model: request.app.state.started}
    version = store.current_version(settings.index.dir)
    warnings = {name: w for name in sync.details if (w := sync.lineage(name, version))}
    return model_cards(rag.generator.models(), created, warnings, embedder=rag.retriever.embedder.name)


@router.get("/v1/models")
async def models(cards: list[ModelCard] = Depends(_cards)) -> ModelList:
    """The base model, its published adapters and the embedder (`kind`: generation or embedding)."""
    return ModelList(data=cards)


@router.get("/v1/models/{model:path}")
async def model(model: str, cards: list[ModelCard] = Depends(_cards)) -> ModelCard:
    """One model card by id (the id may hold a slash)."""
    card = next((c for c in cards if c.id == model), None)
    if card is None:
        raise UnknownModel(f"model {model!r} does not exist; GET /v1/models lists the base model, adapters and embedder")
    return card


def _unix(stamp: str) -> int:
    """The registry's ISO times ("2026-11-26T03:00:00Z") as Unix seconds."""
    return int(dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp())
