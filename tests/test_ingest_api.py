"""Documents over HTTP: upload into a collection (a job to poll), the per-file report, the
single-writer lock (409), removal, and the new version served without a restart. In process
with the fake models; the ingest code, the index files and the lock are the real ones."""

from __future__ import annotations

import os
import time

import pytest
from fastapi.testclient import TestClient

from indexer.fake import FakeEmbedder
from tests.helpers import raw_multipart

MODEL = "fake-model"
ADMIN = {"Authorization": "Bearer admin-key"}
NOTE = "# Parking\n\nThe staff car park behind building C opens at 6:30 and closes at 22:00 on weekdays."


@pytest.fixture
def client(tmp_path):
    from ragtune.settings import get_settings
    from service.app import create_app
    from service.generation.fake import FakeGenerator

    settings = get_settings(service={"admin_api_key": "admin-key", "reload_check_seconds": 0}, generation={"model": MODEL})
    settings.index.dir, settings.index.collections_dir = tmp_path / "default", tmp_path / "collections"
    settings.adapters.dir = tmp_path / "adapters"
    with TestClient(create_app(settings, FakeGenerator(MODEL), FakeEmbedder())) as test_client:
        test_client.settings = settings
        yield test_client


def finished(client, accepted) -> dict:
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["Location"]
    deadline = time.monotonic() + 60
    while (job := client.get(location, headers=ADMIN).json())["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return job


def upload(client, collection, files):
    return client.post(f"/admin/collections/{collection}/documents", headers=ADMIN,
                       files=[("files", (name, data)) for name, data in files])


def test_an_upload_becomes_a_version_that_is_served_at_once(client):
    job = finished(client, upload(client, "facilities", [("parking.md", NOTE.encode()), ("broken.pdf", b"%PDF-1.4 not really")]))
    assert job["status"] == "done" and job["files"] == job["files_read"] == 2
    assert job["chunks_embedded"] == job["chunks_read"] == job["report"]["chunks_added"] > 0
    assert [s["path"] for s in job["report"]["skipped"]] and "broken.pdf" in job["report"]["skipped"][0]["path"]
    answer = client.post("/ask", json={"question": "When does the car park open?", "collection": "facilities"}).json()
    assert answer["citations"][0]["doc_id"] == "parking.md" and "6:30" in answer["answer"]
    listed = client.get("/admin/collections/facilities/sources", headers=ADMIN).json()["sources"]
    assert [s["source_id"] for s in listed] == ["parking.md"]

    again = finished(client, upload(client, "facilities", [("parking.md", NOTE.replace("6:30", "7:00").encode())]))
    assert again["report"]["replaced"] and not again["report"]["added"]  # same name: the document is replaced
    assert "7:00" in client.post("/ask", json={"question": "When does the car park open?", "collection": "facilities"}).json()["answer"]

    removed = client.delete("/admin/collections/facilities/documents/parking.md", headers=ADMIN)
    assert removed.status_code == 200 and removed.json()["chunks_removed"] > 0
    gone = client.delete("/admin/collections/facilities/documents/parking.md", headers=ADMIN)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


def test_a_second_writer_gets_a_409_and_the_index_is_intact(client):
    from indexer.ingest import Ingestor

    finished(client, upload(client, "hr", [("leave.md", b"# Leave\n\nAnnual leave is 25 days.")]))
    settings = client.settings
    with Ingestor(settings, FakeEmbedder()).writer(settings.index.collections_dir / "hr"):  # e.g. `ragtune index add` running
        refused = upload(client, "hr", [("more.md", b"# More\n\nSick leave needs a note after 3 days.")])
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "index_locked"
    listed = client.get("/admin/collections/hr/sources", headers=ADMIN).json()["sources"]
    assert [s["source_id"] for s in listed] == ["leave.md"]
    assert not list((settings.index.collections_dir / "hr" / "uploads").glob("*/more.md"))  # the refused upload is not kept


@pytest.mark.parametrize("headers, files, status, code", [
    ({}, [("a.md", b"x")], 401, "invalid_api_key"),
    (ADMIN, [], 400, "invalid_value"),
    (ADMIN, [(".hidden.md", b"x")], 400, "invalid_value"),
])
def test_bad_uploads_are_refused(client, headers, files, status, code):
    response = client.post("/admin/collections/docs/documents", headers=headers,
                           files=[("files", f) for f in files] or {"files": ("", b"")})
    assert response.status_code == status and response.json()["error"]["code"] == code, response.text


def test_an_upload_over_the_limit_is_a_413(client):
    client.settings.service.max_upload_bytes = 1000
    response = upload(client, "docs", [("big.md", b"x" * 5000)])
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert client.get("/admin/jobs/nope", headers=ADMIN).status_code == 404


def test_one_record_of_a_jsonl_upload_is_removed_by_its_document_id(client):
    records = b'{"id": "q1", "text": "Expenses are paid monthly."}\n{"id": "q2", "text": "Travel is booked by the office."}\n'
    finished(client, upload(client, "faq", [("faq.jsonl", records)]))
    removed = client.delete("/admin/collections/faq/documents/faq.jsonl%23q1", headers=ADMIN)
    assert removed.status_code == 200 and removed.json()["removed"] == ["faq.jsonl#q1"]
    listed = client.get("/admin/collections/faq/sources", headers=ADMIN).json()["sources"]
    assert [(s["source_id"], s["documents"]) for s in listed] == [("faq.jsonl", 1)]
    again = finished(client, upload(client, "faq", [("faq.jsonl", records)]))  # the file again brings it back
    assert again["report"]["replaced"]
    listed = client.get("/admin/collections/faq/sources", headers=ADMIN).json()["sources"]
    assert [(s["source_id"], s["documents"]) for s in listed] == [("faq.jsonl", 2)]


def test_a_delete_matches_one_exact_source_or_document_never_a_path_prefix(client):
    finished(client, upload(client, "kb", [("a.md", b"# A\n\nAlpha text."), ("b.md", b"# B\n\nBravo text.")]))
    for target in ("%2F", "%2Fa.md", "a", "*", "kb", "a.m"):
        refused = client.delete(f"/admin/collections/kb/documents/{target}", headers=ADMIN)
        assert refused.status_code == 404, (target, refused.text)
    listed = client.get("/admin/collections/kb/sources", headers=ADMIN).json()["sources"]
    assert sorted(s["source_id"] for s in listed) == ["a.md", "b.md"]


def test_uploaded_files_are_not_kept_and_sources_show_no_server_path(client):
    uploads = client.settings.index.collections_dir / "kb" / "uploads"
    job = finished(client, upload(client, "kb", [("a.md", b"# A\n\nAlpha text."), ("skip.exe", b"MZ binary")]))
    assert job["report"]["added"] == ["a.md"] and job["report"]["skipped"][0]["path"] == "skip.exe"
    finished(client, upload(client, "kb", [("a.md", b"# A\n\nAlpha text, replaced.")]))
    assert not any(uploads.iterdir())  # neither the replaced file, the skipped one nor the new one stays
    [source] = client.get("/admin/collections/kb/sources", headers=ADMIN).json()["sources"]
    assert source["path"] == "a.md"
    citation = client.post("/ask", json={"question": "alpha", "collection": "kb"}).json()["citations"][0]
    assert citation["source"] == "a.md"

    stale = uploads / "0123456789abcdef"  # what a job killed with its process leaves
    stale.mkdir()
    (stale / "left.md").write_text("left behind")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    client.settings.service.upload_timeout_seconds = 600
    finished(client, upload(client, "kb", [("b.md", b"# B\n\nBravo text.")]))
    assert not stale.exists()
    assert client.delete("/admin/collections/kb/documents/b.md", headers=ADMIN).status_code == 200


def raw_upload(client, collection: str, name: bytes, data: bytes):
    body, headers = raw_multipart(name, data)
    return client.post(f"/admin/collections/{collection}/documents", content=body, headers={**ADMIN, **headers})


@pytest.mark.parametrize("name, why", [(b"a\x00b.md", "control characters"), (b"x" * 253 + b".md", "256 bytes; the limit is 255"),
                                       ("\u00e9".encode() * 128 + b".md", "259 bytes; the limit is 255")])
def test_file_names_that_cannot_be_files_are_refused(client, name, why):
    refused = raw_upload(client, "kb", name, b"# A\n\nAlpha text.")
    assert refused.status_code == 400 and why in refused.json()["error"]["message"], refused.text
    uploads = client.settings.index.collections_dir / "kb" / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def test_a_record_that_is_not_text_is_skipped_and_the_rest_goes_in(client):
    records = b'{"id": "q1", "text": "Expenses are paid monthly."}\n{"id": "q2", "text": "bad \\ud800"}\n'
    job = finished(client, upload(client, "faq", [("faq.jsonl", records), ("note.md", NOTE.encode())]))
    assert job["status"] == "done" and sorted(job["report"]["added"]) == ["faq.jsonl", "note.md"]
    assert any("unpaired surrogate" in w["message"] for w in job["report"]["warnings"])
    listed = client.get("/admin/collections/faq/sources", headers=ADMIN).json()["sources"]
    assert sorted((s["source_id"], s["documents"]) for s in listed) == [("faq.jsonl", 1), ("note.md", 1)]
