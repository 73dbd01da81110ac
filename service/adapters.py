"""Keeps the generation backend serving what the adapter registry says is published.

One reconcile at start, then one whenever the registry changes, and, for vLLM, every
`adapters.sync_seconds` anyway: a replica that restarted has lost its adapters, and only
asking it finds that out. Admin changes reconcile at once, so their answer is the result.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from ragtune.registry import AdapterInfo, Registry, lineage_warning
from service.generation.base import AdapterSyncReport, Generator

log = logging.getLogger("ragtune.adapters")


class AdapterSync:
    def __init__(self, registry: Registry, generator: Generator, interval: float, poll_backend: bool):
        self.registry = registry
        self.generator = generator
        self.interval = interval
        self.poll_backend = poll_backend  # remote replicas can lose adapters behind our back
        self.last: AdapterSyncReport | None = None
        self.details: dict[str, AdapterInfo] = {}  # the published adapters' registry entries, with their metadata
        self._warned: set[str] = set()
        self._stamp: float | None = None
        self._lock = asyncio.Lock()

    async def sync(self) -> AdapterSyncReport:
        async with self._lock:
            return await self._reconcile()

    async def apply(self, change: Callable[[], object]) -> AdapterSyncReport:
        """Change the registry (`change` runs on a worker thread) and reconcile, with no other
        reconcile in between: the report is this change's, even when the periodic round
        notices the registry change first."""
        async with self._lock:
            await asyncio.to_thread(change)
            return await self._reconcile()

    async def _reconcile(self) -> AdapterSyncReport:
        self._stamp = self.registry.stamp()
        desired = await asyncio.to_thread(self.registry.published)
        listed = await asyncio.to_thread(self.registry.list, True)
        self.details = {a.name: a for a in listed if a.name in desired}
        report = await self.generator.sync_adapters(desired)
        changed = report.loaded or report.unloaded
        if changed or (report.failed and report.failed != (self.last.failed if self.last else None)):
            log.warning("adapters reconciled: %s", report.as_dict())  # once per change, not every round
        self.last = report
        return report

    def lineage(self, name: str | None, index_version: str | None) -> str | None:
        """The lineage warning for serving adapter `name` over `index_version`; logged once per
        adapter and version."""
        info = self.details.get(name) if name else None
        warning = lineage_warning(info, index_version) if info else None
        if warning and f"{name}@{index_version}" not in self._warned:
            self._warned.add(f"{name}@{index_version}")
            log.warning("%s", warning)
        return warning

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if self.poll_backend or self.registry.stamp() != self._stamp:
                    await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep reconciling; the next round may succeed
                log.exception("adapter reconcile failed")
