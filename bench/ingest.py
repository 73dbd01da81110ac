"""Indexer benchmark. Prints figures; asserts nothing.

1. Throughput, one process, same chunk texts: raw `SentenceTransformer.encode` chunks/s
   vs the indexer end to end (read files, load, chunk, embed, write, commit), their
   ratio (target >= 0.9) and peak RSS.
2. Embedder backends (`embedding.backend`): torch fp32, ONNX Runtime fp32 and int8, on the
   same SQuAD chunk texts in one process: chunks/s, the ratio to torch, how close their
   vectors are to torch's (cosine), and dense recall@5 / MRR of every SQuAD question's gold
   paragraph among the 173 paragraphs.
3. Search: for 100k and 1M synthetic clustered unit vectors (dim 384), the index type
   the indexer would choose, its build time, single-query latency p50/p99 and
   recall@10 against exact search.

    python bench/ingest.py [--copies 6] [--sizes 100000,1000000] [--queries 500] [--skip-backends]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SQUAD = REPO.parent / "shared" / "data" / "squad-v2-dev-5articles.json"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_corpus(directory: Path, copies: int) -> int:
    """SQuAD articles as Markdown files (one section per paragraph), `copies` times over."""
    data = json.loads(SQUAD.read_text())["data"]
    count = 0
    for copy in range(copies):
        for article in data:
            sections = [f"## Part {i}\n\n{p['context']}\n" for i, p in enumerate(article["paragraphs"])]
            path = directory / f"{copy:02d}-{article['title']}.md"
            path.write_text(f"# {article['title']} ({copy})\n\n" + "\n".join(sections))
            count += 1
    return count


def throughput(copies: int) -> None:
    from indexer.embedder import load_embedder
    from indexer.ingest import Ingestor
    from indexer.snapshot import IndexSnapshot
    from ragtune.settings import get_settings

    settings = get_settings()
    embedder = load_embedder(settings.embedding, settings.index)
    embedder.embed(["warm up the model"] * 64)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        files = write_corpus(corpus, copies)
        ingestor = Ingestor(settings, embedder)

        started = time.perf_counter()
        report = ingestor.ingest([str(corpus)], Path(tmp) / "index")
        pipeline_s = time.perf_counter() - started
        inputs = [
            f"{c.context}\n{c.text}" if c.context else c.text
            for c in IndexSnapshot(Path(tmp) / "index").all_chunks()
        ]
        assert len(inputs) == report.chunks_added

        model = getattr(embedder, "_model", None)  # the very model the indexer used, called directly
        started = time.perf_counter()
        if model is not None:
            model.encode(inputs, batch_size=settings.embedding.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        else:  # another backend: its own embed is the raw call
            embedder.embed(inputs)
        raw_s = time.perf_counter() - started

    n = len(inputs)
    print(f"throughput: {files} files, {n} chunks (model {embedder.name}, batch {settings.embedding.batch_size}, "
          f"torch threads {__import__('torch').get_num_threads()})")
    print(f"  raw encode:            {n / raw_s:8.1f} chunks/s  ({raw_s:.1f}s)")
    print(f"  indexer end to end:    {n / pipeline_s:8.1f} chunks/s  ({pipeline_s:.1f}s)")
    print(f"  ratio indexer / raw:   {raw_s / pipeline_s:8.3f}   (target >= 0.9)")
    print(f"  peak RSS:              {peak_rss_mb():8.0f} MB")


def backends(copies: int, batch_sizes: list[int]) -> None:
    from indexer.embedder import load_embedder
    from ragtune.settings import get_settings

    data = json.loads(SQUAD.read_text())["data"]
    paragraphs = [p["context"] for a in data for p in a["paragraphs"]]
    questions = [(q["question"], i) for i, p in enumerate(p for a in data for p in a["paragraphs"])
                 for q in p["qas"] if not q.get("is_impossible")]
    texts = paragraphs * copies
    settings = get_settings()
    print(f"backends: {len(texts)} SQuAD paragraphs to embed ({copies} copies), {len(questions)} answerable questions "
          f"over {len(paragraphs)} paragraphs, cpus {os.cpu_count()}; ratios against torch at batch {batch_sizes[0]}")
    reference = None
    torch_rate = None
    for backend in ("torch", "onnx", "onnx-int8"):
        for batch in batch_sizes:
            started = time.perf_counter()
            embedder = load_embedder(settings.embedding.model_copy(update={"backend": backend, "batch_size": batch}))
            load_s = time.perf_counter() - started
            embedder.embed(["warm up the model"] * 16)
            started = time.perf_counter()
            vectors = embedder.embed(texts)
            rate = len(texts) / (time.perf_counter() - started)
            torch_rate = torch_rate or rate
            docs, probes = vectors[: len(paragraphs)], embedder.embed([q for q, _ in questions])
            ranks = np.argsort(-(probes @ docs.T), axis=1)
            gold = np.array([i for _, i in questions])
            position = np.argmax(ranks == gold[:, None], axis=1)
            recall, mrr = float(np.mean(position < 5)), float(np.mean(1 / (position + 1)))
            if reference is None:
                reference = docs
            agreement = float(np.mean(np.sum(docs * reference, axis=1)))
            print(f"  {backend:10s} batch {batch:3d} {rate:7.1f} chunks/s  {rate / torch_rate:5.2f}x   cosine to torch "
                  f"{agreement:.4f}   recall@5 {recall:.4f}  MRR {mrr:.4f}   load {load_s:5.1f}s   peak RSS {peak_rss_mb():.0f} MB",
                  flush=True)
            del embedder


def clustered_vectors(n: int, dim: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    labels = rng.integers(0, len(centers), size=n)
    points = centers[labels] + rng.standard_normal((n, dim), dtype=np.float32) * 0.6 / np.sqrt(dim)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def search(sizes: list[int], queries: int) -> None:
    import faiss

    from indexer import vectors
    from ragtune.settings import IndexSettings

    settings = IndexSettings()
    dim, k = 384, 10
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((2000, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    print(f"search: dim {dim}, clustered synthetic unit vectors, {queries} single queries, k={k}, "
          f"faiss threads {faiss.omp_get_max_threads()}")
    for n in sizes:
        base = clustered_vectors(n, dim, rng, centers)
        probes = clustered_vectors(queries, dim, rng, centers)
        kind = vectors.choose_kind(settings, n)
        started = time.perf_counter()
        index = vectors.build(kind, dim, np.arange(n, dtype=np.int64), base, settings)
        build_s = time.perf_counter() - started
        exact = faiss.IndexFlatIP(dim)
        exact.add(base)
        _, truth = exact.search(probes, k)
        latencies, found = [], []
        for q in probes:
            started = time.perf_counter()
            _, ids = index.search(q[None, :], k)
            latencies.append((time.perf_counter() - started) * 1000)
            found.append(ids[0])
        recall = np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)])
        p50 = statistics.median(latencies)
        p99 = float(np.percentile(latencies, 99))
        print(f"  {n:>9,} vectors: {kind:5s} build {build_s:7.1f}s  p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  "
              f"recall@10 vs exact {recall:.4f}  peak RSS {peak_rss_mb():.0f} MB")
        del index, exact, base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=6, help="times the SQuAD corpus is repeated")
    parser.add_argument("--sizes", default="100000,1000000", help="vector counts for the search benchmark")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-backends", action="store_true")
    parser.add_argument("--batch-sizes", default="64,16,8", help="embedder batch sizes to compare (the first is the baseline)")
    args = parser.parse_args()
    if not args.skip_throughput:
        throughput(args.copies)
    if not args.skip_backends:
        backends(max(1, args.copies // 3), [int(b) for b in args.batch_sizes.split(",")])
    if not args.skip_search:
        search([int(s) for s in args.sizes.split(",")], args.queries)


if __name__ == "__main__":
    main()
