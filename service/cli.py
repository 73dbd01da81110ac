"""`ragtune serve` and `ragtune ask`: check what can be checked at once, then load, call, print."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Annotated, Optional

import typer
from rich.console import Console

from indexer import collections
from ragtune.cli_options import QUERYING, CollectionName, IndexDir, settings_for
from ragtune.configure import serving_threads
from ragtune.errors import UsageError
from ragtune.settings import ServiceSettings

err = Console(stderr=True)
out = Console()


def _port_free(host: str, port: int) -> None:
    """A port in use is said now, not after the models have loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            what = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise UsageError(f"port {port} on {host} {what}; pick another with --port or RAGTUNE_SERVICE__PORT") from None


def serve(
    index_dir: IndexDir = None,
    host: Annotated[Optional[str], typer.Option(
        help=f"Bind address [default: {ServiceSettings.model_fields['host'].default}, or setting service.host].")] = None,
    port: Annotated[Optional[int], typer.Option(
        help=f"Port [default: {ServiceSettings.model_fields['port'].default}, or setting service.port].")] = None,
    model_dir: Annotated[bool, typer.Option(
        "--model-dir", help="Print the local model's Hugging Face directory (the GGUF converted first if needed) "
        "and exit; give it to vLLM's --model to serve the same weights.")] = False,
) -> None:
    """Run the HTTP service: /ask, /v1/chat/completions, /v1/models, /health, /ready."""
    if model_dir:
        from ragtune.settings import get_settings
        from service.generation.model_files import converted_model_dir

        print(converted_model_dir(get_settings().generation))
        return
    settings = settings_for(index_dir)
    _port_free(host or settings.service.host, port or settings.service.port)
    serving_threads()  # before service.app imports torch and faiss
    from service.app import create_app, run_server

    run_server(create_app(settings), settings.service, host, port)


def ask(
    question: Annotated[str, typer.Argument(help="The question to answer from the index.")],
    index_dir: IndexDir = None,
    collection: CollectionName = None,
    top_k: Annotated[Optional[int], typer.Option(help="Passages to retrieve [default: setting retrieval.top_k].")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Longest answer, in tokens [default: setting generation.max_answer_tokens].")] = None,
) -> None:
    """Answer one question with the same pipeline as the service, and show its sources."""
    from indexer.store import committed_version_dir

    settings = settings_for(index_dir, QUERYING)
    collections.choose(settings.index, collection, must_exist=True)
    committed_version_dir(settings.index.dir)  # no index: said before the models load
    serving_threads()
    from indexer.embedder import load_embedder
    from ragtune.errors import BackendUnavailable
    from service.generation import create_generator, create_judge
    from service.generation.base import GenerationParams
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    with err.status("Loading models..."):
        embedder = load_embedder(settings.embedding, settings.index)
        generator = create_generator(settings.generation)
        judge = create_judge(settings.generation, settings.prompt.answerable_check_model_path)
    rag = build_pipeline(settings, embedder, generator, judge=judge)
    params = GenerationParams.defaults(settings.generation, **({"max_tokens": max_tokens} if max_tokens else {}))

    async def answer():
        try:
            if not await generator.ready():  # also where a remote backend reports its context length
                raise BackendUnavailable(f"the {settings.generation.backend} generation backend is not ready; see the log above")
            prepared = await rag.prepare_async(question, [], RetrievalOptions(top_k=top_k), params.max_tokens)
            return prepared, await rag.complete(prepared, params)
        finally:
            await generator.close()
            if judge is not None:
                await judge.close()

    prepared, completion = asyncio.run(answer())
    out.print(completion.text)
    out.print()
    for c in prepared.citations:
        where = " > ".join(c.headings) or c.title or ""
        out.print(f"[{c.number}] {c.source}{' — ' + where if where else ''} (score {c.score:.2f})")
