"""`POST /v1/embeddings`, OpenAI's shape, with the index's own embedder: a client gets exactly
the vectors the index holds for the same text (normalised, float32), as floats or base64."""

from __future__ import annotations

import asyncio
import base64
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from ragtune.errors import ContextLengthExceeded, UnknownModel, UsageError
from service import errors
from service.deps import Config, Pipeline, client_key
from service.http import json_body, parse_json

MAX_INPUTS = 256  # texts in one request (OpenAI allows 2,048; each costs a forward pass on CPU)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    input: str | list[str] = Field(description="A text or a list of texts (token arrays are not taken: send text).")
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


router = APIRouter(dependencies=[Depends(client_key)], responses=errors.RESPONSES)


@router.post("/v1/embeddings", openapi_extra=json_body(EmbeddingRequest))
async def embeddings(request: Request, rag: Pipeline, settings: Config) -> EmbeddingList:
    service = settings.service
    body: EmbeddingRequest = await parse_json(request, EmbeddingRequest, service)
    embedder = rag.retriever.embedder
    if body.model != embedder.name:
        raise UnknownModel(f"model {body.model!r} is not this service's embedder; use {embedder.name!r}", param="model")
    texts = [body.input] if isinstance(body.input, str) else body.input
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

    vectors, tokens = await asyncio.to_thread(embed)
    data = [
        {"object": "embedding", "index": i,
         "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" else v.tolist()}
        for i, v in enumerate(vectors)
    ]
    return EmbeddingList(data=data, model=embedder.name, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))
