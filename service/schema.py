"""Values the RAG core takes and gives that also travel on the wire: retrieval options,
citations, token usage. The core owns them; the HTTP layer's request and response models
(service/protocol.py) use them as they are."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Strict, as OpenAI's API is: "3" is not a number and "yes" is not a boolean.
STRICT = ConfigDict(extra="forbid", strict=True)


class RetrievalOptions(BaseModel):
    """ragtune extension: tune or disable retrieval for one request."""

    model_config = STRICT
    enabled: bool = True
    collection: str | None = Field(None, description="The collection to search (default: `default`); GET /v1/collections lists them.")
    top_k: int | None = Field(None, ge=1, le=100)
    min_score: float | None = Field(None, ge=-1, le=1)
    hybrid: bool | None = Field(None, description="Fuse BM25 with dense results (default: setting retrieval.hybrid).")
    doc_ids: list[str] = Field(default_factory=list, description="Only these documents.")
    source_prefix: str | None = Field(None, max_length=4096, description="Only sources whose path or id starts with this.")
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict, description="Exact metadata matches.")
    fewshot_k: int | None = Field(
        None, ge=0, le=6, description="Few-shot demonstrations to show (default: setting fewshot.k when fewshot.file is set)."
    )


class Citation(BaseModel):
    number: int
    doc_id: str
    source: str
    chunk_id: int
    chunk_ids: list[int]
    score: float
    title: str | None
    headings: list[str]
    page: int | None
    snippet: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
