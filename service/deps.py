"""What routes take from the app, as FastAPI dependencies: the pipeline and settings the lifespan
set up, and the API key checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

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
    """A client API key, when the service has any (service.api_keys)."""
    if settings.service.api_keys:
        require_key(request, settings.service.api_keys, "one of service.api_keys")


async def admin_key(request: Request, settings: Config) -> None:
    if settings.service.admin_api_key is None:
        raise Forbidden("admin endpoints are disabled: set RAGTUNE_SERVICE__ADMIN_API_KEY to enable them")
    require_key(request, [settings.service.admin_api_key], "service.admin_api_key")
