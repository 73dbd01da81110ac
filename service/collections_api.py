"""`GET /v1/collections`: the collections this key may search, with their size and version."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from indexer import collections, store
from service import errors
from service.deps import Config, client_key

router = APIRouter(dependencies=[Depends(client_key)], responses=errors.RESPONSES)


class Collection(BaseModel):
    name: str
    index_version: str
    sources: int
    documents: int
    chunks: int


class CollectionList(BaseModel):
    object: str = "list"
    data: list[Collection]


def _describe(settings, name: str) -> Collection:
    m = store.read_manifest(store.committed_version_dir(collections.directory(settings.index, name)))
    return Collection(name=name, index_version=m.version_id, sources=m.sources, documents=m.documents, chunks=m.chunks)


@router.get("/v1/collections")
async def list_collections(request: Request, settings: Config) -> CollectionList:
    """The collections this key may search, with their index versions and sizes."""
    allowed = request.state.collections

    def describe() -> list[Collection]:
        names = [n for n in collections.names(settings.index) if allowed is None or n in allowed]
        return [_describe(settings, name) for name in names]

    return CollectionList(data=await asyncio.to_thread(describe))
