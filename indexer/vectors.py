"""FAISS indexes over unit vectors, searched by inner product (= cosine similarity).

Every index is wrapped in an IndexIDMap2 whose ids are chunk-store row ids, so a hit
maps straight to its chunk. Exact (flat) search for small corpora; HNSW for large ones,
whose recall against exact search `bench/ingest.py` reports.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from ragtune.settings import IndexSettings


def choose_kind(settings: IndexSettings, n_vectors: int) -> str:
    if settings.kind != "auto":
        return settings.kind
    return "hnsw" if n_vectors >= settings.hnsw_threshold else "flat"


def new_index(kind: str, dimension: int, settings: IndexSettings) -> faiss.IndexIDMap2:
    if kind == "flat":
        inner = faiss.IndexFlatIP(dimension)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dimension, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = settings.hnsw_ef_construction
        inner.hnsw.efSearch = settings.hnsw_ef_search
    else:
        raise ValueError(f"unknown index kind {kind!r}; use flat or hnsw")
    return faiss.IndexIDMap2(inner)


def build(kind: str, dimension: int, ids: np.ndarray, vectors: np.ndarray, settings: IndexSettings) -> faiss.IndexIDMap2:
    index = new_index(kind, dimension, settings)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    return index


def supports_removal(index: faiss.Index) -> bool:
    return isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)


def set_search_depth(index: faiss.Index, ef_search: int) -> None:
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = ef_search


def write(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def read(path: Path) -> faiss.IndexIDMap2:
    # read_index already returns the concrete class. Wrapping it in downcast_index would
    # drop the wrapper that owns the memory and leave a dangling index.
    index = faiss.read_index(str(path))
    if not isinstance(index, faiss.IndexIDMap2):
        raise TypeError(f"{path} holds a {type(index).__name__}, not an IndexIDMap2")
    return index
