"""Another local model than the packaged one (the quality profile): generation.local_model_path names a
GGUF file or a Hugging Face directory; the embedded engine serves it and fine-tuning trains on it."""

from __future__ import annotations

import asyncio
import os

import pytest

from ragtune.errors import UsageError
from ragtune.settings import GenerationSettings, get_settings
from service.generation.base import GenerationParams
from service.generation.model_files import converted_model_dir, packaged_gguf


def test_penalties_count_the_answer_not_the_prompt():
    """OpenAI's frequency and presence penalties on the embedded engine: a token's logit loses frequency x its count
    in the answer so far, and presence once; tokens of the prompt (passages an answer may copy) cost nothing."""
    import torch

    from service.generation.local import _Penalties

    prompt, answer = [5, 5, 7], [7, 7, 9]
    scores = torch.zeros(1, 12)
    out = _Penalties(torch, len(prompt), frequency=0.5, presence=0.25)(torch.tensor([prompt + answer]), scores.clone())
    assert out[0, 7].item() == -(2 * 0.5 + 0.25) and out[0, 9].item() == -(0.5 + 0.25)
    assert out[0, 5].item() == 0 and out[0, 0].item() == 0
    fresh = _Penalties(torch, 3, 1.0, 1.0)(torch.tensor([prompt]), scores.clone())  # nothing generated yet
    assert torch.equal(fresh, scores)


@pytest.mark.slow
def test_a_gguf_file_is_converted_once_served_and_trained_on(tmp_path):
    gguf = tmp_path / "my-model.gguf"
    os.symlink(packaged_gguf(), gguf)  # a GGUF file of the user's, anywhere: here the packaged one under another name
    settings = GenerationSettings(local_model_path=str(gguf), cache_dir=tmp_path / "cache")
    assert settings.model == "my-model"  # named after the file unless generation.model says otherwise
    assert GenerationSettings(local_model_path=str(gguf), model="house-model").model == "house-model"

    served = converted_model_dir(settings)
    assert served == tmp_path / "cache" / "models" / "my-model" and (served / "config.json").is_file()
    stamp = (served / "model.safetensors").stat().st_mtime_ns
    assert converted_model_dir(settings) == served and (served / "model.safetensors").stat().st_mtime_ns == stamp

    from service.generation.local import LocalGenerator

    engine = LocalGenerator(settings)
    try:
        messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        answer = asyncio.run(engine.generate(messages, GenerationParams(max_tokens=8)))
        assert "Paris" in answer.text and answer.model == "my-model"
    finally:
        asyncio.run(engine.close())

    from finetune.train import _base_model_dir

    full = get_settings(generation={"local_model_path": str(gguf), "cache_dir": str(tmp_path / "cache")})
    assert _base_model_dir(full) == served  # adapters are trained on the model that serves them
    assert full.adapters.resolved_base_dir(full.generation) == served  # and checked against it


@pytest.mark.slow
def test_a_path_that_is_neither_a_model_directory_nor_a_gguf_file_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    for path, message in ((tmp_path, "config.json missing"), (tmp_path / "absent.gguf", "no GGUF file")):
        with pytest.raises(UsageError, match=f"{message}.*RAGTUNE_GENERATION__LOCAL_MODEL_PATH"):
            converted_model_dir(GenerationSettings(local_model_path=str(path), cache_dir=tmp_path / "cache"))
