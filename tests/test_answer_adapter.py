"""generation.answer_adapter: the grounded-answers adapter shipped in ragtune/models, merged once into a copy of
the packaged model's weights that answers from passages (auto, the default), or not (off), or another adapter
given by path. Every other request, and fine-tuning, use the model as published."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ragtune.errors import UsageError
from ragtune.model_settings import ANSWER_ADAPTER_DIR, adapter_digest
from ragtune.settings import GenerationSettings
from service.generation.model_files import answer_model_dir, converted_model_dir


def test_the_shipped_adapter_says_how_it_was_made():
    card = (ANSWER_ADAPTER_DIR / "README.md").read_text()
    assert "make answer-adapter" in card and "data/squad-v2-train-10articles.json" in card and "CC BY-SA 4.0" in card
    # the training data ships beside it, and is the file its README vouches for
    data = Path(__file__).resolve().parent.parent / "data"
    digest = hashlib.sha256((data / "squad-v2-train-10articles.json").read_bytes()).hexdigest()
    assert digest in (data / "README.md").read_text()
    config = json.loads((ANSWER_ADAPTER_DIR / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] in (8, 16)
    training = json.loads((ANSWER_ADAPTER_DIR / "ragtune_adapter.json").read_text())
    assert training["retrieval_aware"] is True and training["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_which_model_directory_answers(tmp_path):
    default = GenerationSettings(cache_dir=tmp_path)
    published = tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1"
    assert default.merged_adapter() == ANSWER_ADAPTER_DIR and default.served_model_dir() == published
    assert default.answer_model_dir() == tmp_path / "models" / f"{published.name}+grounded-answers-{adapter_digest(ANSWER_ADAPTER_DIR)}"
    off = GenerationSettings(cache_dir=tmp_path, answer_adapter="off")
    assert off.answer_model_dir() is None and off.served_model_dir() == published
    own = GenerationSettings(cache_dir=tmp_path, local_model_path=str(tmp_path / "mine"))
    assert own.answer_model_dir() is None and own.served_model_dir() == tmp_path / "mine"  # auto: not for a model of your own
    mine = GenerationSettings(cache_dir=tmp_path, local_model_path=str(tmp_path / "mine"), answer_adapter=str(tmp_path / "tone"))
    assert mine.answer_model_dir() == tmp_path / "models" / "mine+tone-missing"


@pytest.mark.slow
def test_the_adapter_is_merged_into_the_weights_once():
    """The served copy is the published model with W + (alpha / r) * B @ A in every adapted layer, nothing else."""
    import torch
    from safetensors.torch import load_file

    settings = GenerationSettings()
    answering = answer_model_dir(settings)
    assert answering == settings.answer_model_dir() and (answering / "tokenizer.json").is_file()
    stamp = (answering / "model.safetensors").stat().st_mtime_ns
    assert answer_model_dir(settings) == answering and (answering / "model.safetensors").stat().st_mtime_ns == stamp
    assert converted_model_dir(settings) == settings.served_model_dir()  # what serves everything else, and trains

    base = load_file(converted_model_dir(settings) / "model.safetensors")
    merged = load_file(answering / "model.safetensors")
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
        answer_model_dir(GenerationSettings(answer_adapter=str(wrong)))
    with pytest.raises(UsageError, match="answer_adapter: no PEFT adapter at"):
        answer_model_dir(GenerationSettings(answer_adapter=str(tmp_path / "absent")))
    assert not list(Path(GenerationSettings().cache_dir, "models").glob(".*.tmp"))  # nothing half-made left behind


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["openvino", "transformers"])
def test_only_answers_from_passages_come_from_the_answer_model(engine):
    """The same RAG prompt: marked grounded (an answer from passages in prose), the answer model's few cited words;
    not marked (no retrieval, JSON, tools, a named adapter), the model as published, which answers at length."""
    import asyncio

    from service.generation import create_generator
    from service.generation.base import GenerationParams

    passages = ("[1] The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
                "a region in France.")
    messages = [{"role": "system", "content": "Answer the question from the numbered passages. Cite them like [1]."},
                {"role": "user", "content": f"Passages:\n{passages}\n\nQuestion: In what country is Normandy located?"}]
    generator = create_generator(GenerationSettings(engine=engine))
    try:
        grounded = asyncio.run(generator.generate(messages, GenerationParams(max_tokens=40, grounded=True)))
        published = asyncio.run(generator.generate(messages, GenerationParams(max_tokens=40)))
    finally:
        asyncio.run(generator.close())
    assert "France" in grounded.text and "[1]" in grounded.text and grounded.completion_tokens <= 8, grounded.text
    assert published.completion_tokens > grounded.completion_tokens + 5, published.text
    assert grounded.model == published.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
