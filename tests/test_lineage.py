"""Lineage: an adapter trained with retrieval records the index versions its prompts came from;
served over an index that has moved on, it is flagged in /v1/models, in the ledger of the
answers it gives, and once in the log. In process with the fake models and a registry adapter
in PEFT's real file format."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from indexer.fake import FakeEmbedder
from ragtune.registry import METADATA_FILE, Registry, lineage_warning
from tests.adapters import BASE, fake_adapter, fake_base_model


@pytest.fixture
def served(tmp_path, squad):
    from indexer import store
    from indexer.ingest import Ingestor
    from ragtune.settings import get_settings
    from service.app import create_app
    from service.generation.fake import FakeGenerator

    settings = get_settings(generation={"model": BASE})
    settings.index.dir, settings.adapters.dir = tmp_path / "index", tmp_path / "adapters"
    settings.adapters.base_model_dir = fake_base_model(tmp_path / "base")
    records = [{"id": str(i), "text": p["context"]} for i, p in enumerate(squad["data"][0]["paragraphs"][:5])]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    Ingestor(settings, FakeEmbedder()).ingest([str(tmp_path / "r.jsonl")], settings.index.dir, root=tmp_path)
    registry = Registry(settings.adapters, BASE, settings.adapters.base_model_dir)
    for name, versions in (("stale", ["20260101T000000-aaaaaa"]), ("fresh", [store.current_version(settings.index.dir)])):
        source = fake_adapter(tmp_path / name)
        (source / METADATA_FILE).write_text(json.dumps({"retrieval_aware": True, "index_versions": versions}))
        registry.add(name, source, publish=True)
    with TestClient(create_app(settings, FakeGenerator(BASE), FakeEmbedder())) as client:
        yield client, store.current_version(settings.index.dir)


def test_an_adapter_trained_over_another_index_version_is_flagged(served, caplog):
    client, version = served
    caplog.set_level(logging.WARNING, logger="ragtune.adapters")
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"] if c["kind"] == "generation"}
    assert set(cards) == {BASE, "stale", "fresh"}
    assert "20260101T000000-aaaaaa" in cards["stale"]["warning"] and version in cards["stale"]["warning"]
    assert cards["fresh"]["warning"] is None and cards[BASE]["warning"] is None
    stale = client.post("/ask", json={"question": "Where is Normandy?", "model": "stale"}).json()["ledger"]["warnings"]
    assert stale == [cards["stale"]["warning"]]
    assert client.post("/ask", json={"question": "Where is Normandy?", "model": "fresh"}).json()["ledger"]["warnings"] == []
    assert client.post("/ask", json={"question": "Where is Normandy?"}).json()["ledger"]["warnings"] == []
    chat = client.post("/v1/chat/completions", json={"model": "stale", "messages": [{"role": "user", "content": "Normandy?"}]})
    assert chat.json()["ledger"]["warnings"] == stale
    logged = [r.getMessage() for r in caplog.records if "trained with retrieval" in r.getMessage()]
    assert logged == [cards["stale"]["warning"]]  # once, however often it is served


def test_only_retrieval_aware_adapters_with_versions_are_checked(tmp_path):
    from ragtune.registry import AdapterInfo

    def info(metadata):
        return AdapterInfo("a", "v", tmp_path, True, "2026-01-01T00:00:00Z", metadata=metadata)

    assert lineage_warning(info(None), "v2") is None
    assert lineage_warning(info({"retrieval_aware": False, "index_versions": ["v1"]}), "v2") is None
    assert lineage_warning(info({"retrieval_aware": True, "index_versions": ["v1", "v2"]}), "v2") is None
    assert lineage_warning(info({"retrieval_aware": True, "index_versions": ["v1"]}), None) is None
    assert "v1" in lineage_warning(info({"retrieval_aware": True, "index_versions": ["v1"]}), "v2")
