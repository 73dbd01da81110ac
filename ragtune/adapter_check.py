"""Is this directory a LoRA adapter that vLLM (and the embedded engine) will load? Checked before
it enters the registry, so a bad adapter is refused with its reason, not at load time on every
replica.

A servable adapter directory holds exactly:

    adapter_config.json          PEFT's LoRA config: peft_type LORA, an integer rank r that vLLM
                                 accepts, bias "none", no modules_to_save, no DoRA, no added tokens,
                                 target_modules among the base model's linear layers
    adapter_model.safetensors    for every targeted module M of the base model, the tensors
                                 base_model.model.M.lora_A.weight [r, in] and .lora_B.weight [out, r],
                                 where the base model's M.weight is [out, in]

Regular files only (a symlink could point anywhere on the server's disk). The weights file is
checked from its safetensors header alone (the tensors are not read), against the base model's
own header when its directory is known.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from ragtune.errors import UsageError
from ragtune.settings import VLLM_LORA_RANKS

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_LORA_TENSOR = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight")
_NOT_SERVABLE_MODULES = ("lm_head", "embed_tokens", "wte", "embed_in")  # vLLM serves LoRA on decoder linear layers


class AdapterInvalid(UsageError):
    """A directory that is not a LoRA adapter this deployment can serve."""


def safetensors_header(path: Path) -> dict[str, dict]:
    """name -> {"dtype", "shape", "data_offsets"} from a safetensors file's header, checked for
    consistency with the file's size; AdapterInvalid if it is not a safetensors file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise AdapterInvalid(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise AdapterInvalid(f"{path} is not a safetensors file (its header length {length} does not fit the file)")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise AdapterInvalid(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise AdapterInvalid(f"{path} is not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    end = 0
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise AdapterInvalid(f"{path}: tensor {name!r} has a malformed entry in the safetensors header")
        end = max(end, offsets[1])
    if 8 + length + end != size:
        raise AdapterInvalid(f"{path}: the safetensors header describes {end} bytes of data, the file holds {size - 8 - length}")
    return header


def base_model_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Weight name -> shape of a Hugging Face model directory, from its safetensors headers."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise AdapterInvalid(f"no safetensors weights in the base model directory {model_dir}")
    return {name: info["shape"] for file in files for name, info in safetensors_header(file).items()}


def _targets_module(target_modules, module: str) -> bool:
    if isinstance(target_modules, str):  # PEFT: a regex matched against the whole module path
        return re.fullmatch(target_modules, module) is not None
    return any(module == t or module.endswith(f".{t}") for t in target_modules)


def _check_config(path: Path, config: dict, base_model: str, max_rank: int) -> int:
    if config.get("peft_type") != "LORA":
        raise AdapterInvalid(f"{path}: peft_type is {config.get('peft_type')!r}; only LORA adapters can be served")
    rank = config.get("r")
    if type(rank) is not int:  # not 16.0, not true
        raise AdapterInvalid(f"{path}: rank r is {rank!r}; it must be an integer, one of {VLLM_LORA_RANKS}")
    if rank not in VLLM_LORA_RANKS:
        raise AdapterInvalid(f"{path}: rank {rank!r} is not one vLLM accepts ({VLLM_LORA_RANKS})")
    if rank > max_rank:
        raise AdapterInvalid(f"{path}: rank {rank} is above adapters.max_rank {max_rank} (vLLM's --max-lora-rank)")
    alpha = config.get("lora_alpha", 8)
    if type(alpha) not in (int, float) or alpha <= 0:
        raise AdapterInvalid(f"{path}: lora_alpha is {alpha!r}; it must be a positive number")
    if config.get("bias", "none") != "none":
        raise AdapterInvalid(f"{path}: bias is {config.get('bias')!r}; vLLM serves only bias 'none'")
    if config.get("modules_to_save"):
        raise AdapterInvalid(f"{path}: modules_to_save {config['modules_to_save']} cannot be served by vLLM; retrain without")
    if config.get("use_dora"):
        raise AdapterInvalid(f"{path}: DoRA adapters cannot be served by vLLM")
    if (path / "added_tokens.json").exists() or config.get("trainable_token_indices"):
        raise AdapterInvalid(f"{path}: the adapter adds or trains tokens; vLLM serves adapters without added tokens")
    if config.get("base_model_name_or_path") != base_model:
        raise AdapterInvalid(
            f"{path}: trained for base model {config.get('base_model_name_or_path')!r}, but the served model is "
            f"{base_model!r}"
        )
    targets = config.get("target_modules")
    if isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets):
        bad = [t for t in targets if t.rsplit(".", 1)[-1] in _NOT_SERVABLE_MODULES]
    elif isinstance(targets, str) and targets:
        try:
            re.compile(targets)
        except re.error as exc:
            raise AdapterInvalid(f"{path}: target_modules {targets!r} is not a valid regular expression: {exc}") from None
        bad = []
    else:
        raise AdapterInvalid(f"{path}: target_modules is {targets!r}; name the linear layers adapted (a list of names)")
    if bad:
        raise AdapterInvalid(f"{path}: target_modules {bad} cannot be served: vLLM applies LoRA to linear layers only")
    return rank


def _check_weights(path: Path, config: dict, rank: int, base: dict[str, list[int]] | None) -> None:
    header = safetensors_header(path / "adapter_model.safetensors")
    if not header:
        raise AdapterInvalid(f"{path}/adapter_model.safetensors holds no tensors")
    pairs: dict[str, dict[str, list[int]]] = {}
    for name, info in header.items():
        match = _LORA_TENSOR.fullmatch(name)
        if match is None:
            raise AdapterInvalid(f"{path}: tensor {name!r} is not a LoRA A/B weight vLLM can load")
        pairs.setdefault(match["module"], {})[match["part"]] = info["shape"]
    targets = config["target_modules"]
    for module, parts in sorted(pairs.items()):
        if set(parts) != {"A", "B"}:
            raise AdapterInvalid(f"{path}: module {module} has lora_{''.join(parts)} but not both lora_A and lora_B")
        a, b = parts["A"], parts["B"]
        if len(a) != 2 or len(b) != 2 or a[0] != rank or b[1] != rank:
            raise AdapterInvalid(
                f"{path}: {module} has lora_A {a} and lora_B {b}, which do not match rank r = {rank} in the config"
            )
        if not _targets_module(targets, module):
            raise AdapterInvalid(f"{path}: weights for {module}, which target_modules {targets} does not name")
        if base is not None:
            shape = base.get(f"{module}.weight")
            if shape is None:
                raise AdapterInvalid(f"{path}: the base model has no layer {module}")
            if [b[0], a[1]] != shape:
                raise AdapterInvalid(
                    f"{path}: {module} adapts a [{b[0]}, {a[1]}] layer, but the base model's is {shape}"
                )
    if isinstance(targets, list):
        unused = [t for t in targets if not any(_targets_module([t], m) for m in pairs)]
        if unused:
            raise AdapterInvalid(f"{path}: target_modules {unused} match no layer with weights in the adapter")


def validate_adapter(path: Path, base_model: str, max_rank: int, base_dir: Path | None = None) -> dict:
    """The adapter's config, if vLLM (and the embedded engine) can load it; else AdapterInvalid
    naming the problem. `base_dir`: the base model's directory, to check modules and shapes against."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterInvalid(f"{path} is not a directory")
    links = sorted(p.name for p in path.iterdir() if p.is_symlink())
    if links:
        raise AdapterInvalid(f"{path}: {', '.join(links)} are symbolic links; copy the real files in")
    missing = [f for f in ADAPTER_FILES if not (path / f).is_file()]
    if missing:
        raise AdapterInvalid(f"{path} is not a LoRA adapter: {', '.join(missing)} missing")
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AdapterInvalid(f"{path}/adapter_config.json is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterInvalid(f"{path}/adapter_config.json is not a JSON object")
    rank = _check_config(path, config, base_model, max_rank)
    base = base_model_shapes(base_dir) if base_dir is not None else None
    _check_weights(path, config, rank, base)
    return config
