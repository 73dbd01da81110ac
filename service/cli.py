"""`ragtune serve` and `ragtune ask`: parse, call, print."""

from __future__ import annotations

import asyncio
from typing import Annotated, Optional

import typer
from rich.console import Console

from ragtune.cli_options import IndexDir, settings_for

err = Console(stderr=True)
out = Console()


def serve(
    index_dir: IndexDir = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address [default: setting service.host].")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port [default: setting service.port].")] = None,
) -> None:
    """Run the HTTP service: /ask, /v1/chat/completions, /v1/models, /health, /ready."""
    from ragtune.runtime import serving_thread_policy

    serving_thread_policy()  # before service.app imports torch and faiss
    from service.app import create_app, run_server

    settings = settings_for(index_dir)
    run_server(create_app(settings), settings.service, host, port)


def ask(
    question: Annotated[str, typer.Argument(help="The question to answer from the index.")],
    index_dir: IndexDir = None,
    top_k: Annotated[Optional[int], typer.Option(help="Passages to retrieve.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Longest answer, in tokens.")] = None,
) -> None:
    """Answer one question with the same pipeline as the service, and show its sources."""
    from indexer.embedder import load_embedder
    from ragtune.errors import BackendUnavailable
    from service.generation import create_generator
    from service.generation.base import GenerationParams
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    settings = settings_for(index_dir)
    with err.status("Loading models..."):
        embedder = load_embedder(settings.embedding)
        generator = create_generator(settings.generation)
    rag = build_pipeline(settings, embedder, generator)
    params = GenerationParams(max_tokens=max_tokens or settings.generation.max_answer_tokens, temperature=settings.generation.temperature)

    async def answer():
        try:
            if not await generator.ready():  # also where a remote backend reports its context length
                raise BackendUnavailable(f"the {settings.generation.backend} generation backend is not ready; see the log above")
            prepared = await rag.prepare_async(question, [], RetrievalOptions(top_k=top_k), params.max_tokens)
            return prepared, await rag.complete(prepared, params)
        finally:
            await generator.close()

    prepared, completion = asyncio.run(answer())
    out.print(completion.text)
    out.print()
    for c in prepared.citations:
        where = " > ".join(c.headings) or c.title or ""
        out.print(f"[{c.number}] {c.source}{' — ' + where if where else ''} (score {c.score:.2f})")
