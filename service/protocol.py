"""Wire formats: OpenAI's chat completion API and ragtune's /ask, as pydantic models.

Kept apart from serving logic. Fields outside OpenAI's spec are marked "ragtune
extension"; requests turn themselves into backend parameters.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.generation.base import GenerationParams


class RetrievalOptions(BaseModel):
    """ragtune extension: tune or disable retrieval for one request."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    top_k: int | None = Field(None, ge=1, le=100)
    min_score: float | None = Field(None, ge=-1, le=1)
    hybrid: bool | None = Field(None, description="Fuse BM25 with dense results (default: setting retrieval.hybrid).")
    doc_ids: list[str] = Field(default_factory=list, description="Only these documents.")
    source_prefix: str | None = Field(None, description="Only sources whose path or id starts with this.")
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict, description="Exact metadata matches.")
    fewshot_k: int | None = Field(
        None, ge=0, le=6, description="Few-shot demonstrations to show (default: setting fewshot.k when fewshot.file is set)."
    )


class SamplingFields(BaseModel):
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None

    def params(self, default_max: int, default_temperature: float, model: str | None, max_tokens: int | None = None) -> GenerationParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenerationParams(
            max_tokens=max_tokens or self.max_tokens or default_max,
            temperature=default_temperature if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=stop,
            seed=self.seed,
            model=model,
        )


# -- /ask ---------------------------------------------------------------------------------
class AskRequest(SamplingFields):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, description="The question to answer from the index.")
    top_k: int | None = Field(None, ge=1, le=100)
    min_score: float | None = Field(None, ge=-1, le=1)
    filters: RetrievalOptions | None = None
    model: str | None = Field(None, description="The base model or an adapter name.")
    stream: bool = False


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


class AskResponse(BaseModel):
    answer: str
    citations: list[Citation]
    usage: Usage
    ledger: dict[str, Any]
    model: str
    index_version: str | None
    finish_reason: str
    timings_ms: dict[str, float]


# -- /v1/chat/completions -------------------------------------------------------------------
class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(SamplingFields):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1, description="Only one choice is generated.")
    user: str | None = None
    retrieval: RetrievalOptions | None = Field(None, description="ragtune extension")


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def chat_response(cid: str, model: str, text: str, finish: str, usage: Usage, sources: list[Citation]) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}],
        "usage": usage.model_dump(),
        "sources": [s.model_dump() for s in sources],  # ragtune extension
    }


def chat_chunk(cid: str, model: str, created: int, delta: dict, finish: str | None = None, usage: Usage | None = None, sources=None) -> dict:
    chunk: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    if usage is not None:
        chunk["usage"] = usage.model_dump()
    if sources is not None:
        chunk["sources"] = [s.model_dump() for s in sources]  # ragtune extension
    return chunk


def model_list(names: list[str], owned_by: str = "ragtune") -> dict:
    """The base model first, then its adapters (marked with `parent`, as vLLM marks LoRA models)."""
    cards = [{"id": n, "object": "model", "created": 0, "owned_by": owned_by} for n in names]
    for card in cards[1:]:
        card["parent"] = names[0]
    return {"object": "list", "data": cards}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
