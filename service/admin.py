"""Admin endpoints: publish, withdraw and delete adapters (the registry), bearer-authenticated.

They do what `ragtune adapters load|unload|delete` does, then reconcile the backend at once,
so the answer says whether every replica now serves the change.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Callable

from fastapi import APIRouter, Depends, Request

from ragtune.errors import BackendError, Forbidden
from ragtune.settings import ServiceSettings
from service.adapters import AdapterSync
from service.auth import require_key
from service.generation.base import AdapterSyncReport


def _sync(request: Request) -> AdapterSync:
    return request.app.state.adapter_sync


# Module level: FastAPI resolves (string) annotations against the module's globals.
Sync = Annotated[AdapterSync, Depends(_sync)]


def router(settings: ServiceSettings) -> APIRouter:
    async def authorized(request: Request) -> None:
        if settings.admin_api_key is None:
            raise Forbidden("admin endpoints are disabled: set RAGTUNE_SERVICE__ADMIN_API_KEY to enable them")
        require_key(request, [settings.admin_api_key], "service.admin_api_key")

    api = APIRouter(prefix="/admin", dependencies=[Depends(authorized)])

    async def changed(sync: AdapterSync, change: Callable[[], object] | None, name: str | None = None) -> tuple[dict, AdapterSyncReport]:
        report = await (sync.apply(change) if change else sync.sync())
        body = {"sync": report.as_dict(), "models": sync.generator.models()}
        if name is not None:
            body["adapter"] = (await asyncio.to_thread(sync.registry.get, name)).as_dict()
        return body, report

    @api.get("/adapters")
    async def list_adapters(sync: Sync) -> dict:
        adapters = await asyncio.to_thread(sync.registry.list, True)
        last = sync.last.as_dict() if sync.last else None
        return {"adapters": [a.as_dict() for a in adapters], "served": sync.generator.models()[1:], "last_sync": last}

    @api.post("/adapters/{name}/load")
    async def load(name: str, sync: Sync) -> dict:
        body, report = await changed(sync, lambda: sync.registry.set_published(name, True), name)
        failed = report.failed_for(name)
        if failed:  # the backend refused it: withdraw, so the registry does not promise what is not served
            await sync.apply(lambda: sync.registry.set_published(name, False))
            raise BackendError(f"adapter {name!r} could not be loaded and stays unpublished: " + "; ".join(
                f"{where}: {why}" for where, why in failed.items()))
        return body

    @api.post("/adapters/{name}/unload")
    async def unload(name: str, sync: Sync) -> dict:
        return (await changed(sync, lambda: sync.registry.set_published(name, False), name))[0]

    @api.delete("/adapters/{name}")
    async def delete(name: str, sync: Sync) -> dict:
        return (await changed(sync, lambda: sync.registry.delete(name)))[0]

    @api.post("/adapters/sync")
    async def resync(sync: Sync) -> dict:
        return (await changed(sync, None))[0]

    return api
