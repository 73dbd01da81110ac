"""Admin endpoints: publish, withdraw and delete adapters (the registry), bearer-authenticated.

They do what `ragtune adapters load|unload|delete` does, then reconcile the backend at once,
so the answer says whether every replica now serves the change.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from typing import Callable

from fastapi import APIRouter, Depends, Request

from ragtune.registry import ADAPTER_FILES, check_name
from ragtune.errors import BackendError
from service import errors
from service.adapters import AdapterSync
from service.deps import Config, Sync, admin_key
from service.generation.base import AdapterSyncReport
from service.http import FILES_BODY, receive_files


router = APIRouter(prefix="/admin", dependencies=[Depends(admin_key)], responses=errors.RESPONSES)


async def _changed(sync: AdapterSync, change: Callable[[], object] | None, name: str | None = None) -> tuple[dict, AdapterSyncReport]:
    report = await (sync.apply(change) if change else sync.sync())
    body = {"sync": report.as_dict(), "models": sync.generator.models()}
    if name is not None:
        body["adapter"] = (await asyncio.to_thread(sync.registry.get, name)).as_dict()
    return body, report


async def _published(sync: AdapterSync, name: str, change: Callable[[], object]) -> dict:
    body, report = await _changed(sync, change, name)
    failed = report.failed_for(name)
    if failed:  # the backend refused it: withdraw, so the registry does not promise what is not served
        await sync.apply(lambda: sync.registry.set_published(name, False))
        raise BackendError(f"adapter {name!r} could not be loaded and stays unpublished: " + "; ".join(
            f"{where}: {why}" for where, why in failed.items()))
    return body


@router.get("/adapters")
async def list_adapters(sync: Sync) -> dict:
    """The adapter registry: every adapter, its versions, and whether it is published and loaded."""
    adapters = await asyncio.to_thread(sync.registry.list, True)
    last = sync.last.as_dict() if sync.last else None
    return {"adapters": [a.as_dict() for a in adapters], "served": sync.generator.models()[1:], "last_sync": last}


@router.post("/adapters/{name}/load")
async def load(name: str, sync: Sync) -> dict:
    """Publish an adapter: every backend loads it; the answer comes once they have."""
    return await _published(sync, name, lambda: sync.registry.set_published(name, True))


@router.put("/adapters/{name}", openapi_extra=FILES_BODY)
async def upload(name: str, sync: Sync, settings: Config, request: Request, publish: bool = False) -> dict:
    """Import an adapter trained elsewhere (PEFT, Axolotl, Unsloth): multipart files named
    adapter_config.json and adapter_model.safetensors, checked as `ragtune adapters add` checks them."""
    check_name(name)
    folder = sync.registry.root / ".uploads" / uuid.uuid4().hex
    await receive_files(request, folder, settings.service, len(ADAPTER_FILES), "adapter files",
                        lambda file: None if file in ADAPTER_FILES else f"unexpected: send {' and '.join(ADAPTER_FILES)}")
    try:
        return await _published(sync, name, lambda: sync.registry.add(name, folder, publish or None, shown="the upload"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@router.post("/adapters/{name}/unload")
async def unload(name: str, sync: Sync) -> dict:
    """Withdraw a published adapter from every backend; its files stay in the registry."""
    return (await _changed(sync, lambda: sync.registry.set_published(name, False), name))[0]


@router.delete("/adapters/{name}")
async def delete(name: str, sync: Sync) -> dict:
    """Withdraw an adapter and remove its files from the registry."""
    return (await _changed(sync, lambda: sync.registry.delete(name)))[0]


@router.post("/adapters/sync")
async def resync(sync: Sync) -> dict:
    """Reconcile every backend with the registry now, instead of at the next periodic check."""
    return (await _changed(sync, None))[0]
