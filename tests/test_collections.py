"""Collections: named indexes served side by side, chosen per request and per command, and
limited per client key. In process with the fake models (what is tested is which index a
request reads and who may read it); the indexes are real, written by the real ingest code."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from indexer.fake import FakeEmbedder
from tests.helpers import run_ragtune

MODEL = "fake-model"
ALL = {"Authorization": "Bearer all-key"}
HR = {"Authorization": "Bearer hr-key"}


def build(directory, articles, tmp):
    from indexer.ingest import Ingestor
    from ragtune.settings import get_settings

    records = [{"id": f"{a['title']}-{i}", "title": a["title"].replace("_", " "), "text": p["context"]}
               for a in articles for i, p in enumerate(a["paragraphs"])]
    (tmp / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    Ingestor(get_settings(), FakeEmbedder()).ingest([str(tmp / "records.jsonl")], directory, root=tmp)


@pytest.fixture(scope="module")
def roots(tmp_path_factory, squad):
    tmp = tmp_path_factory.mktemp("collections")
    build(tmp / "default-index", squad["data"][:1], tmp_path_factory.mktemp("a"))  # Normans
    build(tmp / "more" / "cs", squad["data"][1:2], tmp_path_factory.mktemp("b"))  # Computational complexity
    return tmp / "default-index", tmp / "more"


@pytest.fixture(scope="module")
def client(roots, tmp_path_factory):
    from ragtune.settings import get_settings
    from service.app import create_app
    from service.generation.fake import FakeGenerator

    settings = get_settings(service={"api_keys": ["all-key", "hr-key"], "key_collections": {"hr-key": ["cs"]}},
                            generation={"model": MODEL})
    settings.index.dir, settings.index.collections_dir = roots
    settings.adapters.dir = tmp_path_factory.mktemp("adapters")
    with TestClient(create_app(settings, FakeGenerator(MODEL), FakeEmbedder())) as test_client:
        yield test_client


def ask(client, headers, **body):
    return client.post("/ask", json={"question": "What does complexity theory classify?", **body}, headers=headers)


def test_each_request_reads_the_collection_it_names(client):
    default = ask(client, ALL).json()
    chosen = ask(client, ALL, collection="cs").json()
    assert {c["doc_id"].split("#")[1].rsplit("-", 1)[0] for c in default["citations"]} == {"Normans"}
    assert {c["doc_id"].split("#")[1].rsplit("-", 1)[0] for c in chosen["citations"]} == {"Computational_complexity_theory"}
    assert default["ledger"]["collection"] == "default" and chosen["ledger"]["collection"] == "cs"
    assert chosen["index_version"] != default["index_version"]
    chat = client.post("/v1/chat/completions", headers=ALL, json={
        "model": MODEL, "messages": [{"role": "user", "content": "What is a complexity class?"}], "retrieval": {"collection": "cs"}})
    assert chat.json()["ledger"]["collection"] == "cs" and "Computational" in chat.json()["sources"][0]["doc_id"]


def test_an_unknown_collection_is_a_404_that_lists_the_known_ones(client):
    response = ask(client, ALL, collection="payroll")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "collection_not_found" and error["param"] == "collection"
    assert "the collections are: default, cs" in error["message"]
    bad = ask(client, ALL, collection="../etc")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "collection"


def test_a_key_reaches_only_its_collections(client):
    assert ask(client, HR, collection="cs").status_code == 200
    refused = ask(client, HR)
    assert refused.status_code == 403 and "may use: cs" in refused.json()["error"]["message"]
    assert [c["name"] for c in client.get("/v1/collections", headers=HR).json()["data"]] == ["cs"]
    listed = client.get("/v1/collections", headers=ALL).json()["data"]
    assert [c["name"] for c in listed] == ["default", "cs"] and all(c["chunks"] > 0 for c in listed)


def test_the_cli_lists_and_chooses_collections(roots):
    default, more = roots
    env = {"RAGTUNE_INDEX__COLLECTIONS_DIR": str(more), "RAGTUNE_EMBEDDING__MODEL": "/no/model"}
    listed = run_ragtune("index", "collections", "--index-dir", str(default), "--json", **env)
    assert [row["name"] for row in json.loads(listed.stdout)] == ["default", "cs"]
    stats = run_ragtune("index", "stats", "--index-dir", str(default), "--collection", "cs", "--json", **env)
    assert json.loads(stats.stdout)["directory"] == str(more / "cs")
    unknown = run_ragtune("ask", "Who?", "--index-dir", str(default), "--collection", "payroll", **env)
    assert unknown.returncode == 2 and "error: collection 'payroll' does not exist; the collections are: default, cs" in unknown.stderr
