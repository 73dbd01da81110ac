"""Adapter directories in PEFT's real file format, made without training (for tests of the
registry's checks; the tests that claim an adapter serves use one trained by `ragtune finetune`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
# SmolLM2-135M's shapes ([out, in]) for the layers these adapters touch.
SMOLLM2_SHAPES = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576)}


def lora_tensors(rank: int, modules=("q_proj", "v_proj"), layers=(0, 1), shapes=SMOLLM2_SHAPES) -> dict[str, np.ndarray]:
    tensors = {}
    for layer in layers:
        for module in modules:
            out, in_ = shapes[module]
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = np.zeros((rank, in_), dtype=np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((out, rank), dtype=np.float32)
    return tensors


def fake_adapter(path: Path, tensors: dict | None = None, **config) -> Path:
    """A LoRA adapter directory: `config` overrides adapter_config.json, `tensors` the weights."""
    path.mkdir(parents=True)
    base = {
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none", "modules_to_save": None,
        "base_model_name_or_path": BASE, "target_modules": ["q_proj", "v_proj"],
    }
    config = {**base, **config}
    (path / "adapter_config.json").write_text(json.dumps(config))
    rank = config["r"] if type(config["r"]) is int else 8
    save_file(tensors if tensors is not None else lora_tensors(rank), str(path / "adapter_model.safetensors"))
    return path


def fake_base_model(path: Path, layers=(0, 1)) -> Path:
    """A base model directory's weight headers (zeros): what the checks read of a base model."""
    path.mkdir(parents=True)
    weights = {
        f"model.layers.{layer}.self_attn.{module}.weight": np.zeros(shape, dtype=np.float16)
        for layer in layers for module, shape in SMOLLM2_SHAPES.items()
    }
    save_file(weights, str(path / "model.safetensors"))
    (path / "config.json").write_text("{}")
    return path
