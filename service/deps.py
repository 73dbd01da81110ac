"""What routes take from the app, as FastAPI dependencies: the pipeline and settings the lifespan
set up, and the API key checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from indexer.collections import DEFAULT
from ragtune.errors import Forbidden
from ragtune.settings import Settings
from service.adapters import AdapterSync
from service.auth import require_key
from service.pipeline import RagPipeline


def _pipeline(request: Request) -> RagPipeline:
    return request.app.state.pipeline


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _adapter_sync(request: Request) -> AdapterSync:
    return request.app.state.adapter_sync


Pipeline = Annotated[RagPipeline, Depends(_pipeline)]
Config = Annotated[Settings, Depends(_settings)]
Sync = Annotated[AdapterSync, Depends(_adapter_sync)]


async def client_key(request: Request, settings: Config) -> None:
    """A client API key, when the service has any (service.api_keys). The collections the key may
    use (service.key_collections; unlisted keys: all) are kept for `check_collection`."""
    request.state.collections = None
    if settings.service.api_keys:
        key = require_key(request, settings.service.api_keys, "one of service.api_keys")
        limited = settings.service.key_collections.get(key)
        request.state.collections = list(limited) if limited is not None else None


def check_collection(request: Request, name: str | None) -> None:
    allowed = getattr(request.state, "collections", None)
    if allowed is not None and (name or DEFAULT) not in allowed:
        raise Forbidden(f"this API key may not use collection {name or DEFAULT!r}; it may use: {', '.join(allowed) or 'none'}",
                        param="collection")


async def admin_key(request: Request, settings: Config) -> None:
    if settings.service.admin_api_key is None:
        raise Forbidden("admin endpoints are disabled: set RAGTUNE_SERVICE__ADMIN_API_KEY to enable them")
    require_key(request, [settings.service.admin_api_key], "service.admin_api_key")
