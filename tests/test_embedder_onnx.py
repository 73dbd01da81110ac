"""The ONNX Runtime embedder backends (embedding.backend onnx, onnx-int8): the same model, exported
from its own weights; retrieval as good as torch's on SQuAD, and an index keeps its backend."""

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
def test_onnx_backends_retrieve_as_well_as_torch_on_squad(backend, onnx_cache, embedder, squad, report):
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
    exported = list((onnx_cache / "embedders").glob("*-onnx-int8.onnx"))
    assert len(exported) == 1
    stamp = exported[0].stat().st_mtime_ns
    load("onnx-int8", onnx_cache)
    assert exported[0].stat().st_mtime_ns == stamp
    assert not [p for p in (onnx_cache / "embedders").iterdir() if p.suffix != ".onnx"]  # no leftovers of the export


def test_an_index_keeps_the_backend_that_embedded_it(tmp_path, onnx_cache, embedder):
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
        Retriever(tmp_path / "index", IndexSettings(), embedder, 60, RetrievalSettings()).search("ferry", 1)
    again = run_ragtune("index", "add", str(tmp_path / "docs"), "--index-dir", str(tmp_path / "index"))  # torch, the default
    assert again.returncode != 0 and "RAGTUNE_EMBEDDING__BACKEND=onnx-int8" in again.stderr
