"""Query-path benchmark. Prints figures; asserts nothing.

For an index of 10k and of 100k chunks (real SQuAD paragraph texts repeated, their real
embeddings jittered per copy, so FAISS and BM25 work at the real scale), with real SQuAD
questions:

1. direct: the floor, `embed(question)` + FAISS search, as a script would call them;
2. pipeline: the service's retrieval + packing (no generation), dense and hybrid;
3. HTTP: `POST /ask` to the service in its own process (uvicorn, as deployed) whose
   backend costs nothing (packing still counts with the real tokenizer; the answer is ""),
   dense and hybrid.

Latency p50/p99 of each, and the service's overhead over direct calls (target: <= 2 ms
for the dense path; hybrid adds BM25 and is reported apart). Then the embedded engine's
decode speed against raw `model.generate` on the same prompt (target: >= 0.9x).

    python bench/query.py [--sizes 10000,100000] [--queries 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from ragtune.configure import serving_threads  # noqa: E402
from service.generation.fake import FakeGenerator  # noqa: E402

serving_threads()  # as `ragtune serve` does; the direct baseline runs under the same policy


import numpy as np  # noqa: E402
SQUAD = REPO.parent / "shared" / "data" / "squad-v2-dev-5articles.json"


# A prompt that makes the model write at length: decode speed, not prefill, is measured.
DECODE_PROMPT = [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper and a storm."}]


def percentiles(samples_s: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples_s)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return f"p50 {statistics.median(ms):7.2f} ms   p99 {p99:7.2f} ms"


def interleaved(groups: list[dict], items, warmup: int = 10, block: int = 20) -> dict[str, list[float]]:
    """Latency of each function on each item, taken in turn (order rotated per item).

    Measuring one way after another lets drift in machine load bias the comparison; in
    turn, every way sees the same load, and none always runs right after another. Ways are
    grouped by the process whose caches they use (this one; the service's): groups take
    turns by blocks of `block` items, so a request to the service does not always follow
    this process's own model runs, which evict the service's weights from the CPU caches
    (a service answering its own stream of requests does not pay that).
    """
    fns = {name: fn for group in groups for name, fn in group.items()}
    for item in items[:warmup]:
        for fn in fns.values():
            fn(item)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for start in range(0, len(items), block):
        turn = start // block
        for group in groups[turn % len(groups):] + groups[: turn % len(groups)]:
            names = list(group)
            for i, item in enumerate(items[start : start + block], start):
                for name in names[i % len(names):] + names[: i % len(names)]:
                    started = time.perf_counter()
                    group[name](item)
                    samples[name].append(time.perf_counter() - started)
    return samples


def build_index(directory: Path, size: int, paragraphs: list[dict], embedder, settings) -> None:
    from indexer import store
    from indexer.chunking import Chunk
    from indexer.loaders import Block, Document
    from indexer.writer import IndexWriter

    texts = [p["text"] for p in paragraphs]
    base = embedder.embed([f"{p['title']}\n{p['text']}" for p in paragraphs])
    rng = np.random.default_rng(0)
    identity = store.EmbedderIdentity(**embedder.identity())
    per_source = 1000
    with IndexWriter(directory, settings.index, settings.chunking, identity) as writer:
        for start in range(0, size, per_source):
            count = min(per_source, size - start)
            docs, chunks = [], []
            for n in range(start, start + count):
                p = paragraphs[n % len(paragraphs)]
                doc_id = f"src{start}.jsonl#{n}"
                docs.append(Document(doc_id, [Block(p["text"])], title=f"{p['title']} ({n // len(texts)})"))
                chunks.append(Chunk(doc_id, 0, p["text"], (), p["title"], 150))
            noise = rng.normal(0, 0.08, (count, base.shape[1])).astype(np.float32)
            vectors = base[np.arange(start, start + count) % len(texts)] + noise
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            writer.put_source(f"src{start}.jsonl", f"src{start}.jsonl", str(start), 0, docs, chunks, vectors, [])
        writer.commit()


def _serve_zero_cost(index_dir: str, port: int, log: str) -> None:
    """The service in its own process, on the given index, with a zero-cost backend, served as
    `ragtune serve` serves it, with the same settings (its log goes to a file)."""
    from indexer.embedder import load_embedder
    from ragtune.settings import get_settings
    from service.app import create_app, run_server
    from service.generation.local import LocalGenerator

    with open(log, "ab") as sink:  # uvicorn logs to stderr, its access lines to stdout
        os.dup2(sink.fileno(), sys.stdout.fileno())
        os.dup2(sink.fileno(), sys.stderr.fileno())
    settings = get_settings()
    settings.index.dir = Path(index_dir)
    real = LocalGenerator(settings.generation)
    zero = FakeGenerator(real.model_name, counter=real, reply="")  # packing counts with the real tokenizer
    app = create_app(settings, generator=zero, embedder=load_embedder(settings.embedding, settings.index))
    run_server(app, settings.service, "127.0.0.1", port)


def serve(index_dir: Path):
    import multiprocessing

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = index_dir.parent / "service.log"
    child = multiprocessing.get_context("spawn").Process(target=_serve_zero_cost, args=(str(index_dir), port, str(log)), daemon=True)
    child.start()
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return url, child
        except httpx.HTTPError:
            if not child.is_alive():
                raise SystemExit(f"the service did not start; its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)


class MinimalClient:
    """One kept-alive HTTP/1.1 connection that writes each request in one send and reads the
    response by its Content-Length: the lightest instrument to time the service with. Clients
    cost time of their own that is not the service's: on this machine the standard library's
    http.client spends 0.1 ms (GET /health) to 0.4 ms (POST /ask) per request parsing headers
    (the email package), httpx ~0.7 ms; the "via http.client" line shows the first."""

    def __init__(self, url: str):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host = f"{parts.hostname}:{parts.port}"
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""  # bytes received past the last response (none: one request at a time)

    def call(self, method: str, path: str, body: dict | None = None) -> bytes:
        payload = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + payload)
        data = self.pending
        while b"\r\n\r\n" not in data:
            data += self._recv()
        header, _, rest = data.partition(b"\r\n\r\n")
        status_line, *fields = header.decode("latin-1").split("\r\n")
        lengths = [f.split(":", 1)[1] for f in fields if f.lower().startswith("content-length:")]
        if not lengths:
            raise RuntimeError(f"{method} {path}: no Content-Length in the response ({status_line})")
        length = int(lengths[0])
        while len(rest) < length:
            rest += self._recv()
        self.pending = rest[length:]
        if status_line.split(" ", 2)[1] != "200":
            raise RuntimeError(f"{method} {path}: {status_line} {rest[:200]!r}")
        return rest[:length]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError("the service closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


class StdlibClient:
    """The same through the standard library's http.client, for reference."""

    def __init__(self, url: str):
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def get(self, path: str) -> bytes:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {data[:200]!r}")
        return data

    def close(self) -> None:
        self.connection.close()


def query_path(size: int, queries: list[str], paragraphs, embedder, real_generator) -> None:
    from ragtune.settings import get_settings
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    with tempfile.TemporaryDirectory() as tmp:
        settings = get_settings()
        settings.index.dir = Path(tmp) / "index"
        started = time.perf_counter()
        build_index(settings.index.dir, size, paragraphs, embedder, settings)
        built = time.perf_counter() - started
        zero = FakeGenerator(real_generator.model_name, counter=real_generator, reply="")
        rag = build_pipeline(settings, embedder, zero)
        snapshot = rag.retriever.snapshot()
        snapshot.lexical()  # loaded once, as the service does on its first hybrid request
        top_k = settings.retrieval.top_k
        print(f"\n== {size:,} chunks ({snapshot.manifest.index_kind} index, built in {built:.0f} s), "
              f"{len(queries)} questions, top_k {top_k}")

        packing: list[float] = []

        def pipeline(hybrid_on: bool):
            def run(q):
                prepared = rag.prepare(q, [], RetrievalOptions(hybrid=hybrid_on), 200)
                if not hybrid_on:
                    packing.append(prepared.timings_ms["packing"] / 1000)
            return run

        url, server = serve(settings.index.dir)
        client, stdlib = MinimalClient(url), StdlibClient(url)

        def ask(hybrid_on: bool):
            return lambda q: client.call("POST", "/ask", {"question": q, "filters": {"hybrid": hybrid_on}})

        runs = interleaved([
            {"direct": lambda q: snapshot.index.search(embedder.embed([q]), top_k),
             "dense": pipeline(False), "hybrid": pipeline(True)},
            {"http_dense": ask(False), "http_hybrid": ask(True), "http_floor": lambda q: client.call("GET", "/health"),
             "http_stdlib": lambda q: stdlib.get("/health")},
        ], queries)
        client.close()
        stdlib.close()
        server.terminate()
        server.join()
        print(f"  direct embed + FAISS           {percentiles(runs['direct'])}")
        print(f"  pipeline dense  (retr.+pack)   {percentiles(runs['dense'])}")
        print(f"  pipeline hybrid (retr.+pack)   {percentiles(runs['hybrid'])}")
        print(f"  HTTP /ask dense, zero backend  {percentiles(runs['http_dense'])}")
        print(f"  HTTP /ask hybrid, zero backend {percentiles(runs['http_hybrid'])}")
        print(f"  HTTP GET /health (round trip)  {percentiles(runs['http_floor'])}")
        print(f"    the same via http.client     {percentiles(runs['http_stdlib'])}   (the client's own cost, not counted)")
        trip = statistics.median(runs["http_floor"])
        pack = statistics.median(packing)

        def over(way: str, base: str) -> float:
            """Median of the per-question differences: each question costs both ways about the same
            to embed, so pairing takes question length and slow drift out of the comparison."""
            return statistics.median(a - b for a, b in zip(runs[way], runs[base], strict=True))

        service, pipe = over("http_dense", "direct"), over("dense", "direct")
        print(f"  over direct, dense, median per question: {service * 1000:+.2f} ms (target <= +2 ms)")
        print(f"    HTTP round trip (client+server, as GET /health) {trip * 1000:+.2f} ms")
        print(f"    the service's own work       {(service - trip) * 1000:+.2f} ms, of which")
        print(f"      packing (exact token counts) {pack * 1000:+.2f} ms")
        print(f"      retrieval bookkeeping        {(pipe - pack) * 1000:+.2f} ms")
        print(f"      /ask handling beyond a GET   {(over('http_dense', 'dense') - trip) * 1000:+.2f} ms")
        print(f"  hybrid adds (pipeline, median per question): {over('hybrid', 'dense') * 1000:+.2f} ms")


def decode_speed(generator, tokens: int, rounds: int) -> None:
    import torch

    from service.generation.base import GenerationParams

    messages = DECODE_PROMPT
    params = GenerationParams(max_tokens=tokens)
    input_ids = torch.tensor([generator.tokens.prompt_ids(messages)])
    attention_mask = torch.ones_like(input_ids)
    model, tokenizer = generator.model, generator.tokenizer

    def raw() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.eos_token_id)
        return (out.shape[1] - input_ids.shape[1]) / (time.perf_counter() - started)

    def engine() -> float:
        started = time.perf_counter()
        done = asyncio.run(generator.generate(messages, params))
        return done.completion_tokens / (time.perf_counter() - started)

    async def streamed() -> float:
        started, count = time.perf_counter(), 0
        async for event in generator.stream(messages, params):
            if event.done:
                count = event.completion.completion_tokens
        return count / (time.perf_counter() - started)

    raw(), engine()  # warm up
    raws, engines, streams = [], [], []
    for _ in range(rounds):  # interleaved, so drift in machine load hits both alike
        raws.append(raw())
        engines.append(engine())
        streams.append(asyncio.run(streamed()))
    r, e, s = statistics.median(raws), statistics.median(engines), statistics.median(streams)
    print(f"\n== embedded engine decode, {tokens} new tokens, median of {rounds} ({generator.model.dtype})")
    print(f"  raw model.generate      {r:6.1f} tok/s")
    print(f"  engine generate         {e:6.1f} tok/s   {e / r:.2f}x raw (target >= 0.9x)")
    print(f"  engine stream (SSE src) {s:6.1f} tok/s   {s / r:.2f}x raw")


def dtype_speed(settings, tokens: int, rounds: int) -> None:
    """The same engine in float32 and bfloat16: which one `generation.dtype=auto` should pick here."""
    from service.generation.base import GenerationParams
    from service.generation.local import LocalGenerator

    messages = DECODE_PROMPT
    print(f"\n== dtype, engine generate, {tokens} new tokens, median of {rounds}")
    speeds = {}
    for dtype in ("float32", "bfloat16"):
        generator = LocalGenerator(settings.generation.model_copy(update={"dtype": dtype}))
        asyncio.run(generator.generate(messages, GenerationParams(max_tokens=8)))
        runs = []
        for _ in range(rounds):
            started = time.perf_counter()
            done = asyncio.run(generator.generate(messages, GenerationParams(max_tokens=tokens)))
            runs.append(done.completion_tokens / (time.perf_counter() - started))
        speeds[dtype] = statistics.median(runs)
        print(f"  {dtype:9} {speeds[dtype]:6.1f} tok/s")
    print(f"  bfloat16 / float32: {speeds['bfloat16'] / speeds['float32']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-decode", action="store_true", help="Only the query path (skip the decode-speed runs).")
    args = parser.parse_args()

    from indexer.embedder import load_embedder
    from ragtune.settings import get_settings
    from service.generation.local import LocalGenerator

    import torch

    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    squad = json.loads(SQUAD.read_text())["data"]
    paragraphs = [{"title": a["title"].replace("_", " "), "text": p["context"]} for a in squad for p in a["paragraphs"]]
    questions = [qa["question"] for a in squad for p in a["paragraphs"] for qa in p["qas"]]
    queries = (questions * (args.queries // len(questions) + 1))[: args.queries]
    settings = get_settings()
    embedder = load_embedder(settings.embedding, settings.index)
    generator = LocalGenerator(settings.generation)
    for size in (int(s) for s in args.sizes.split(",") if s):
        query_path(size, queries, paragraphs, embedder, generator)
    if not args.no_decode:
        decode_speed(generator, args.decode_tokens, args.rounds)
        dtype_speed(settings, args.decode_tokens, 3)


if __name__ == "__main__":
    main()
