"""Documents in and out of a collection over HTTP (admin key): an upload becomes an index
version through the same ingest code, crash safety and single-writer lock as `ragtune index add`.

`POST /admin/collections/{name}/documents` takes files (multipart; any type the indexer reads,
JSONL records included), takes the collection's writer lock at once (a second writer gets a
409), answers 202 with a job, and ingests in the background; `GET /admin/jobs/{id}` shows its
progress (files read, chunks embedded) and, when done, the per-file report (what was added,
replaced, left unchanged, or skipped and why). The service reads the new version on its next
reload check, without a restart. An upload's files wait in the collection's `uploads/`, one
folder per upload, only while its job runs: the index keeps their text, not the files. A
document's id is its file name, so uploading a file of the same name again replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from indexer import collections
from indexer.ingest import Ingestor
from ragtune.errors import NotFound
from service import errors
from service.deps import Config, Pipeline, admin_key
from service.http import FILES_BODY, receive_files

log = logging.getLogger("ragtune.ingest")
router = APIRouter(prefix="/admin", dependencies=[Depends(admin_key)], responses=errors.RESPONSES)
MAX_FILES = 1000  # files in one upload
KEPT_JOBS = 100  # finished jobs remembered for polling


class JobView(BaseModel):
    id: str
    collection: str
    status: str  # running, done, failed
    files: int
    files_read: int = 0
    chunks_read: int = 0
    chunks_embedded: int = 0
    seconds: float = 0.0
    report: dict | None = None  # the ingest report, when done
    error: str | None = None  # why it failed


@dataclass
class Job:
    """One upload's ingest; also its progress (indexer/ingest.py's Progress)."""

    collection: str
    files: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    status: str = "running"
    files_read: int = 0
    chunks_read: int = 0
    chunks_embedded: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    report: dict | None = None
    error: str | None = None

    def start(self, files: int) -> None:
        self.files = files

    def read(self, chunks: int) -> None:
        self.files_read += 1
        self.chunks_read += chunks

    def embedded(self, chunks: int) -> None:
        self.chunks_embedded += chunks

    def view(self) -> JobView:
        seconds = (self.finished or time.monotonic()) - self.started
        return JobView(id=self.id, collection=self.collection, status=self.status, files=self.files, files_read=self.files_read,
                       chunks_read=self.chunks_read, chunks_embedded=self.chunks_embedded, seconds=round(seconds, 2),
                       report=self.report, error=self.error)


class Jobs:
    def __init__(self):
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
            finished = [k for k, j in self._jobs.items() if j.status != "running"]
            for key in finished[: max(0, len(self._jobs) - KEPT_JOBS)]:
                del self._jobs[key]

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no ingest job {job_id!r} (finished jobs are kept for the last {KEPT_JOBS})")
        return job


def _jobs(request: Request) -> Jobs:
    return request.app.state.ingest_jobs


@router.post("/collections/{name}/documents", status_code=202, response_model=JobView, openapi_extra=FILES_BODY)
async def upload(name: str, request: Request, rag: Pipeline, settings: Config) -> JSONResponse:
    """Add or replace documents in a collection (multipart, one `files` part per file): 202 with a job to follow."""
    collections.check_name(name)
    directory = collections.directory(settings.index, name)
    uploads = directory / "uploads"
    folder = uploads / uuid.uuid4().hex[:16]
    paths = await receive_files(request, folder, settings.service, MAX_FILES, "documents",
                                lambda file: "every part needs a file name, not a hidden one" if not file or file.startswith(".") else None)
    ingestor = Ingestor(settings, rag.retriever.embedder)
    job = Job(name, len(paths))
    loop = asyncio.get_running_loop()
    locked = loop.create_future()  # the writer's lock taken (or refused) on the job's own thread

    def run() -> None:  # one thread for the writer's whole life: its SQLite connection is bound to it
        try:
            writer = ingestor.writer(directory).__enter__()
        except BaseException as exc:
            loop.call_soon_threadsafe(locked.set_exception, exc)
            return
        loop.call_soon_threadsafe(locked.set_result, None)
        try:
            _sweep(uploads, folder, settings.service.upload_timeout_seconds)
            report = ingestor.ingest([str(p) for p in paths], directory, root=folder, progress=job, writer=writer, by_id=True)
            job.report, job.status = report.as_dict(), "done"
        except Exception as exc:  # reported on the job; the previous version stays served
            log.exception("ingest job %s failed", job.id)
            job.error, job.status = str(exc) or type(exc).__name__, "failed"
        finally:
            writer.__exit__(None, None, None)
            shutil.rmtree(folder, ignore_errors=True)
            job.finished = time.monotonic()

    threading.Thread(target=run, name=f"ragtune-ingest-{job.id}", daemon=True).start()
    try:
        await locked  # a second writer: IndexLocked, a 409
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    _jobs(request).add(job)
    return JSONResponse(job.view().model_dump(), status_code=202, headers={"Location": f"/admin/jobs/{job.id}"})


def _sweep(uploads, keep, older_than: float) -> None:
    """Remove what earlier uploads left in `uploads` (a job killed with its process): with the
    collection's writer lock held no other job runs, and a folder still being received is younger
    than the upload timeout."""
    cutoff = time.time() - older_than
    for stale in uploads.iterdir():
        try:
            if stale != keep and stale.stat().st_mtime < cutoff:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            continue


@router.get("/jobs/{job_id}")
async def job_status(job_id: str, request: Request) -> JobView:
    """An upload job: its progress while it runs, then the per-file report."""
    return _jobs(request).get(job_id).view()


@router.get("/collections/{name}/sources")
async def sources(name: str, settings: Config) -> dict:
    """The sources a collection holds, with their document and chunk counts."""
    from indexer.snapshot import IndexSnapshot

    def read() -> list[dict]:
        snapshot = IndexSnapshot(collections.existing(settings.index, name))
        try:
            return snapshot.sources()
        finally:
            snapshot.close()

    return {"collection": name, "sources": await asyncio.to_thread(read)}


@router.delete("/collections/{name}/documents/{target:path}")
async def remove(name: str, target: str, rag: Pipeline, settings: Config) -> dict:
    """Remove a source (an uploaded file, by its name) with its documents and chunks, or one
    document by its id (a JSONL record: `faq.jsonl#q1`): only what the name matches exactly."""
    directory = collections.existing(settings.index, name)
    report = await asyncio.to_thread(Ingestor(settings, rag.retriever.embedder).remove, [target], directory, exact=True)
    if not report.removed:
        raise NotFound(f"nothing in collection {name!r} matches {target!r}; GET /admin/collections/{name}/sources lists them")
    return report.as_dict()
