"""generation.answer_adapter: the grounded-answers adapter shipped in ragtune/models, merged into the packaged
model's weights once (auto, the default), or not (off), or another adapter given by path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.errors import UsageError
from ragtune.model_settings import ANSWER_ADAPTER_DIR, adapter_digest
from ragtune.settings import GenerationSettings
from service.generation.model_files import converted_model_dir


def test_the_shipped_adapter_says_how_it_was_made():
    card = (ANSWER_ADAPTER_DIR / "README.md").read_text()
    assert "make answer-adapter" in card and "squad-v2-dev-5articles.json" in card and "CC BY-SA 4.0" in card
    config = json.loads((ANSWER_ADAPTER_DIR / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] in (8, 16)
    training = json.loads((ANSWER_ADAPTER_DIR / "ragtune_adapter.json").read_text())
    assert training["retrieval_aware"] is True and training["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_which_model_directory_is_served(tmp_path):
    default = GenerationSettings(cache_dir=tmp_path)
    assert default.merged_adapter() == ANSWER_ADAPTER_DIR
    assert default.served_model_dir() == tmp_path / "models" / f"SmolLM2-135M-Instruct.Q4_1+grounded-answers-{adapter_digest(ANSWER_ADAPTER_DIR)}"
    assert default.base_model_dir() == tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1"
    off = GenerationSettings(cache_dir=tmp_path, answer_adapter="off")
    assert off.merged_adapter() is None and off.served_model_dir() == off.base_model_dir()
    own = GenerationSettings(cache_dir=tmp_path, local_model_path=str(tmp_path / "mine"))
    assert own.merged_adapter() is None and own.served_model_dir() == tmp_path / "mine"  # auto: not for a model of your own
    mine = GenerationSettings(cache_dir=tmp_path, local_model_path=str(tmp_path / "mine"), answer_adapter=str(tmp_path / "tone"))
    assert mine.served_model_dir() == tmp_path / "models" / "mine+tone-missing"


@pytest.mark.slow
def test_the_adapter_is_merged_into_the_weights_once():
    """The served copy is the published model with W + (alpha / r) * B @ A in every adapted layer, nothing else."""
    import torch
    from safetensors.torch import load_file

    settings = GenerationSettings()
    served = converted_model_dir(settings)
    assert served == settings.served_model_dir() and (served / "tokenizer.json").is_file()
    stamp = (served / "model.safetensors").stat().st_mtime_ns
    assert converted_model_dir(settings) == served and (served / "model.safetensors").stat().st_mtime_ns == stamp

    base = load_file(settings.base_model_dir() / "model.safetensors")
    merged = load_file(served / "model.safetensors")
    lora = load_file(ANSWER_ADAPTER_DIR / "adapter_model.safetensors")
    config = json.loads((ANSWER_ADAPTER_DIR / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    changed = 0
    for name, weight in base.items():
        stem = name.removesuffix(".weight")
        a = next((t for k, t in lora.items() if k.endswith(f"{stem}.lora_A.weight")), None)
        if a is None:
            assert torch.equal(merged[name], weight), f"{name} changed though the adapter does not touch it"
            continue
        b = next(t for k, t in lora.items() if k.endswith(f"{stem}.lora_B.weight"))
        expected = weight + scale * (b.float() @ a.float())
        assert torch.allclose(merged[name], expected, atol=1e-5), name
        changed += 1
    assert changed == len(lora) // 2 > 0


@pytest.mark.slow
def test_an_adapter_that_does_not_fit_the_model_is_refused_by_the_setting(tmp_path):
    from tests.adapters import fake_adapter, lora_tensors

    other = {"q_proj": (64, 64), "k_proj": (64, 64), "v_proj": (64, 64), "o_proj": (64, 64)}
    wrong = fake_adapter(tmp_path / "wrong", lora_tensors(8, shapes=other))  # another model's shapes
    with pytest.raises(UsageError, match="answer_adapter .*does not fit"):
        converted_model_dir(GenerationSettings(answer_adapter=str(wrong)))
    with pytest.raises(UsageError, match="answer_adapter: no PEFT adapter at"):
        converted_model_dir(GenerationSettings(answer_adapter=str(tmp_path / "absent")))
    assert not list(Path(GenerationSettings().cache_dir, "models").glob(".*.tmp"))  # nothing half-made left behind
