"""What the service answers, as pydantic models: the OpenAPI document shows them, and every
route builds its answer from them. Fields outside OpenAI's spec are marked "ragtune extension"."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.pipeline import Prepared, usage_of
from service.schema import Citation, Usage
from service.generation.base import Completion

# Choices and deltas may carry what a backend adds (tool_calls, logprobs, vLLM's stop_reason):
# passed through as they are.
OPEN = ConfigDict(extra="allow")


# -- the ledger: what was searched, packed and dropped ---------------------------------------
class RetrievedEntry(BaseModel):
    chunk_id: int
    doc_id: str
    score: float
    dense_rank: int | None = Field(None, description="Hybrid retrieval: the chunk's rank by embedding.")
    lexical_rank: int | None = Field(None, description="Hybrid retrieval: its rank by BM25.")


class PackedEntry(BaseModel):
    number: int = Field(description="The passage's number in the prompt, as the answer cites it.")
    chunk_ids: list[int]
    score: float
    tokens: int
    trimmed: bool


class DroppedEntry(BaseModel):
    chunk_id: int
    score: float
    reason: Literal["duplicate", "below_score", "budget"]
    of: int | None = Field(None, description="A duplicate: the chunk it repeats.")


class Ledger(BaseModel):
    """ragtune extension: how the prompt was built. With retrieval off, only `retrieval` and
    `dropped_turns` are set."""

    retrieval: Literal["enabled", "disabled"] = "enabled"
    dropped_turns: int = Field(0, description="The conversation's oldest messages left out to fit.")
    collection: str | None = Field(None, description="The collection searched.")
    query: str | None = Field(None, description="What retrieval searched with.")
    query_from: str | None = Field(None, description="How the query was made: question, prepended, rewritten.")
    context_window: int | None = None
    reserved_answer_tokens: int | None = None
    base_tokens: int | None = Field(None, description="System prompt, template, history and question.")
    budget: int | None = Field(None, description="Tokens left for passages.")
    prompt_tokens: int | None = None
    join_tokens: int | None = None
    demonstrations: int | None = None
    demonstration_tokens: int | None = None
    retrieved: list[RetrievedEntry] | None = None
    packed: list[PackedEntry] | None = None
    dropped: list[DroppedEntry] | None = None
    answerable: float | None = Field(None, description="The answerability check's score when it ran (setting "
                                     "prompt.answerable_check): log P(yes) - log P(no), plus "
                                     "prompt.answerable_check_retrieval_weight times the best passage's similarity; "
                                     "below the setting, the answer is the decline.")
    warnings: list[str] = Field(default_factory=list, description="What may make this answer worse than it should be "
                                "(an adapter trained over another version of the index).")


def ledger_of(prepared: Prepared, warnings: list[str] = ()) -> Ledger:
    ledger = prepared.ledger
    if ledger is None:
        return Ledger(retrieval="disabled", dropped_turns=prepared.dropped_turns, warnings=list(warnings))
    return Ledger(warnings=list(warnings),
        dropped_turns=ledger.dropped_turns, collection=ledger.collection, query=ledger.query, query_from=prepared.query_from,
        context_window=ledger.context_window, reserved_answer_tokens=ledger.reserved_answer_tokens,
        base_tokens=ledger.base_tokens, budget=ledger.budget, prompt_tokens=ledger.prompt_tokens,
        join_tokens=ledger.join_tokens, demonstrations=ledger.demonstrations,
        demonstration_tokens=ledger.demonstration_tokens, retrieved=ledger.retrieved, packed=ledger.packed,
        dropped=ledger.dropped, answerable=prepared.answerable,
    )


# -- /ask -----------------------------------------------------------------------------------
class AskResponse(BaseModel):
    answer: str
    citations: list[Citation]
    usage: Usage
    ledger: Ledger
    model: str
    index_version: str | None
    finish_reason: str
    timings_ms: dict[str, float]


# -- /v1/chat/completions ---------------------------------------------------------------------
class AssistantMessage(BaseModel):
    model_config = OPEN
    role: Literal["assistant"] = "assistant"
    content: str | None


class ChatChoice(BaseModel):
    model_config = OPEN
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    sources: list[Citation] = Field(description="ragtune extension: the passages the prompt held, by number.")
    ledger: Ledger | None = Field(None, description="ragtune extension")


class ChunkChoice(BaseModel):
    model_config = OPEN
    index: int
    delta: dict[str, Any]
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion; `[DONE]` ends the stream."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = Field(None, description="The last chunk, when stream_options.include_usage is set.")
    sources: list[Citation] | None = Field(None, description="ragtune extension: on the first chunk.")
    ledger: Ledger | None = Field(None, description="ragtune extension: on the chunk with the finish reason.")


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def chat_completion(cid: str, model: str, completion: Completion, prepared: Prepared, warnings: list[str] = ()) -> ChatCompletion:
    """The backend's own choices (pass-through) when it gave them, else one made of the text."""
    choices = completion.choices or [ChatChoice(
        index=0, message=AssistantMessage(content=completion.text), finish_reason=completion.finish_reason,
        logprobs={"content": completion.logprobs} if completion.logprobs is not None else None,
    )]
    return ChatCompletion(id=cid, created=int(time.time()), model=model, choices=choices, usage=usage_of(completion),
                          sources=prepared.citations, ledger=ledger_of(prepared, warnings))


# -- /v1/completions ------------------------------------------------------------------------
class TextChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class TextCompletion(BaseModel):
    """A completion, or one server-sent event of a streamed one (`[DONE]` ends the stream)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None
    sources: list[Citation] | None = Field(None, description="ragtune extension")


# -- /v1/models -----------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragtune"
    parent: str | None = Field(None, description="An adapter's base model (as vLLM marks LoRA models).")
    warning: str | None = Field(None, description="ragtune extension: an adapter trained over another index version.")
    kind: Literal["generation", "embedding"] = Field(
        "generation", description="ragtune extension: what the model is for: chat and completions, or /v1/embeddings.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def model_cards(
    names: list[str], created: dict[str, int], warnings: dict[str, str] | None = None, embedder: str | None = None,
) -> list[ModelCard]:
    """The base model first, then its adapters, then the embedder (`kind` embedding). `created`:
    Unix times by name (an adapter's publish time; the base model's and embedder's load time);
    `warnings`: lineage warnings by name."""
    warnings = warnings or {}
    cards = [ModelCard(id=n, created=created.get(n, 0), parent=names[0] if i else None, warning=warnings.get(n))
             for i, n in enumerate(names)]
    if embedder is not None:
        cards.append(ModelCard(id=embedder, created=created.get(names[0], 0), kind="embedding"))
    return cards


# -- errors ---------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body: every 4xx and 5xx this service sends."""

    error: ErrorDetail


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
