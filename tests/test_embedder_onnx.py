"""The ONNX Runtime embedder backends (embedding.backend onnx, onnx-int8): the same model, exported
from its own weights; retrieval as good as torch's on SQuAD, an index keeps its backend, and `auto`
(the default) keeps an existing index's backend and gives a new one onnx-int8."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexer import store
from ragtune.errors import IndexIncompatible
from tests.helpers import run_ragtune

pytestmark = pytest.mark.slow
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


def load(backend: str, cache):
    from indexer.embedder import load_embedder
    from ragtune.settings import EmbeddingSettings

    return load_embedder(EmbeddingSettings(backend=backend, cache_dir=cache))


@pytest.fixture(scope="session")
def torch_embedder(onnx_cache):
    return load("torch", onnx_cache)


def squad_retrieval(squad):
    paragraphs = [p["context"] for a in squad["data"] for p in a["paragraphs"]]
    questions = [(qa["question"], i) for i, p in enumerate(p for a in squad["data"] for p in a["paragraphs"])
                 for qa in p["qas"] if not qa["is_impossible"]]
    return paragraphs, questions


def recall_at_5(embedder, paragraphs, questions) -> tuple[float, np.ndarray]:
    docs = embedder.embed(paragraphs)
    scores = embedder.embed([q for q, _ in questions]) @ docs.T
    top = np.argsort(-scores, axis=1)[:, :5]
    return float(np.mean([gold in row for (_, gold), row in zip(questions, top)])), docs


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_backends_retrieve_as_well_as_torch_on_squad(backend, onnx_cache, torch_embedder, squad, report):
    embedder = torch_embedder
    paragraphs, questions = squad_retrieval(squad)
    onnx = load(backend, onnx_cache)
    assert (onnx.name, onnx.dimension, onnx.max_seq_length, onnx.fingerprint) == (
        embedder.name, embedder.dimension, embedder.max_seq_length, embedder.fingerprint)
    assert onnx.identity()["backend"] == backend and embedder.identity()["backend"] == "torch"
    base_recall, base_docs = recall_at_5(embedder, paragraphs, questions)
    recall, docs = recall_at_5(onnx, paragraphs, questions)
    assert np.allclose(np.linalg.norm(docs, axis=1), 1, atol=1e-4)
    cosine = float(np.mean(np.sum(docs * base_docs, axis=1)))
    report(f"embedding.backend {backend}: dense recall@5 {recall:.4f} (torch {base_recall:.4f}), cosine to torch {cosine:.4f}")
    assert cosine > (0.9999 if backend == "onnx" else 0.98)
    assert recall >= base_recall - 0.01  # the bar: less than one point of recall lost
    # Texts longer than the model's window are truncated as sentence-transformers does
    long_text = "word " * 2000
    assert float(onnx.embed([long_text])[0] @ embedder.embed([long_text])[0]) > 0.98


def test_the_export_is_made_once_and_reused(onnx_cache):
    load("onnx-int8", onnx_cache)
    exported = list((onnx_cache / "embedders").glob("*-onnx-int8-*.onnx"))
    assert len(exported) == 1
    stamp = exported[0].stat().st_mtime_ns
    load("onnx-int8", onnx_cache)
    assert exported[0].stat().st_mtime_ns == stamp
    assert not [p for p in (onnx_cache / "embedders").iterdir() if p.suffix != ".onnx"]  # no leftovers of the export


def test_an_index_keeps_the_backend_that_embedded_it(tmp_path, onnx_cache, torch_embedder):
    """Built through the CLI with onnx-int8; the torch backend is refused over it, by name, and the reverse."""
    from ragtune.settings import IndexSettings, RetrievalSettings
    from service.retrieval import Retriever

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Boats\n\nThe ferry leaves the harbour at nine every morning.\n")
    done = run_ragtune("index", "add", str(tmp_path / "docs"), "--index-dir", str(tmp_path / "index"),
                       RAGTUNE_EMBEDDING__BACKEND="onnx-int8", RAGTUNE_EMBEDDING__CACHE_DIR=str(onnx_cache))
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((store.committed_version_dir(tmp_path / "index") / store.MANIFEST).read_text())
    assert manifest["embedding"]["backend"] == "onnx-int8"

    onnx = load("onnx-int8", onnx_cache)
    hits, _ = Retriever(tmp_path / "index", IndexSettings(), onnx, 60, RetrievalSettings()).search("When does the ferry leave?", 1)
    assert "nine every morning" in hits[0].chunk.text
    with pytest.raises(IndexIncompatible, match="embedding.backend onnx-int8, but torch is configured.*RAGTUNE_EMBEDDING__BACKEND=onnx-int8"):
        Retriever(tmp_path / "index", IndexSettings(), torch_embedder, 60, RetrievalSettings()).search("ferry", 1)
    again = run_ragtune("index", "add", str(tmp_path / "docs"), "--index-dir", str(tmp_path / "index"),
                        RAGTUNE_EMBEDDING__BACKEND="torch")
    assert again.returncode != 0 and "RAGTUNE_EMBEDDING__BACKEND=onnx-int8" in again.stderr


def test_auto_keeps_an_existing_index_backend_and_gives_a_new_index_int8(tmp_path, onnx_cache):
    """An index embedded by torch (before auto was the default) goes on with torch through the CLI and a
    query; a new index, and a new collection next to an int8 one, get onnx-int8."""
    from indexer.embedder import load_embedder, resolve_backend
    from ragtune.settings import EmbeddingSettings, IndexSettings, RetrievalSettings
    from service.retrieval import Retriever

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Boats\n\nThe ferry leaves the harbour at nine every morning.\n")
    old = tmp_path / "old-index"
    cache = {"RAGTUNE_EMBEDDING__CACHE_DIR": str(onnx_cache)}
    assert run_ragtune("index", "add", str(docs), "--index-dir", str(old), RAGTUNE_EMBEDDING__BACKEND="torch", **cache).returncode == 0
    (docs / "b.md").write_text("# Trains\n\nThe night train to the coast leaves at eleven.\n")
    more = run_ragtune("index", "add", str(docs), "--index-dir", str(old), **cache)  # auto, the default
    assert more.returncode == 0, more.stderr[-2000:]
    manifest = json.loads((store.committed_version_dir(old) / store.MANIFEST).read_text())
    assert manifest["embedding"]["backend"] == "torch" and manifest["chunks"] == 2

    auto = EmbeddingSettings(cache_dir=onnx_cache)
    assert auto.backend == "auto"
    assert resolve_backend(auto, IndexSettings(dir=old))[0] == "torch"
    embedder = load_embedder(auto, IndexSettings(dir=old))
    hits, _ = Retriever(old, IndexSettings(), embedder, 60, RetrievalSettings()).search("When does the night train leave?", 1)
    assert "eleven" in hits[0].chunk.text

    new = tmp_path / "new-index"
    assert resolve_backend(auto, IndexSettings(dir=new)) == ("onnx-int8", "a new index on the CPU, onnxruntime installed")
    made = run_ragtune("index", "add", str(docs), "--index-dir", str(new), **cache)
    assert made.returncode == 0, made.stderr[-2000:]
    assert json.loads((store.committed_version_dir(new) / store.MANIFEST).read_text())["embedding"]["backend"] == "onnx-int8"
    # a new collection is served by the same embedder as the others: it follows them
    shelves = tmp_path / "collections"
    collection = run_ragtune("index", "add", str(docs), "--index-dir", str(old), "--collection", "trains",
                             RAGTUNE_INDEX__COLLECTIONS_DIR=str(shelves), **cache)
    assert collection.returncode == 0, collection.stderr[-2000:]
    assert store.read_manifest(store.committed_version_dir(shelves / "trains")).embedding.backend == "torch"


def test_auto_without_onnxruntime_or_on_a_gpu_is_torch(monkeypatch, tmp_path):
    import importlib.util

    from indexer.embedder import resolve_backend
    from ragtune.settings import EmbeddingSettings, IndexSettings

    index = IndexSettings(dir=tmp_path / "none", collections_dir=tmp_path / "none-either")
    assert resolve_backend(EmbeddingSettings(device="cuda"), index)[0] == "torch"
    assert EmbeddingSettings(device="cuda").batch_size == 64 and EmbeddingSettings().batch_size == 8
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    backend, why = resolve_backend(EmbeddingSettings(), index)
    assert backend == "torch" and "pip install 'ragtune[onnx]'" in why


def test_auto_looks_past_an_unreadable_index(tmp_path):
    """A broken index is said when it is read, not by the embedder's choice: the service still starts."""
    from indexer.embedder import resolve_backend
    from ragtune.settings import EmbeddingSettings, IndexSettings

    broken = tmp_path / "index"
    broken.mkdir()
    (broken / store.CURRENT).write_text("000001-missing\n")
    assert resolve_backend(EmbeddingSettings(), IndexSettings(dir=broken, collections_dir=tmp_path / "c"))[0] == "onnx-int8"
