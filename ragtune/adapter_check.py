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

Regular files only (a symlink could point anywhere on the server's disk). The weights file's
safetensors header is checked against the base model's own header when its directory is known:
each tensor F32, F16 or BF16, its bytes exactly its shape times its dtype's size, the tensors
packed one after another with no gap or overlap (as safetensors writes them). Then the weights
are read once: every value finite (a NaN or infinite weight makes every answer empty). A regular
expression in target_modules is run with a time limit: a pattern that backtracks without end
would otherwise hold the process.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
from pathlib import Path

import regex

from ragtune.errors import UsageError
from ragtune.settings import VLLM_LORA_RANKS

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_LORA_TENSOR = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight")
_NOT_SERVABLE_MODULES = ("lm_head", "embed_tokens", "wte", "embed_in")  # vLLM serves LoRA on decoder linear layers
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}
ADAPTER_DTYPES = ("F32", "F16", "BF16")  # what PEFT writes and vLLM and the embedded engines load
REGEX_SECONDS = 0.5  # for target_modules matched against every module name, together


class AdapterInvalid(UsageError):
    """A directory that is not a LoRA adapter this deployment can serve."""


def safetensors_header(path: Path, where: str | None = None) -> dict[str, dict]:
    """name -> {"dtype", "shape", "data_offsets"} from a safetensors file's header, checked for
    consistency with the file's size; AdapterInvalid if it is not a safetensors file (`where`: how the
    message names the file, by default its path)."""
    where = where or str(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise AdapterInvalid(f"{where} is not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise AdapterInvalid(f"{where} is not a safetensors file (its header length {length} does not fit the file)")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise AdapterInvalid(f"{where} is not a safetensors file (its header is not JSON, or nested too deeply)") from None
    if not isinstance(header, dict):
        raise AdapterInvalid(f"{where} is not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    end = 0
    for name, info in sorted(header.items(), key=lambda item: _start(item[1])):
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise AdapterInvalid(f"{where}: tensor {name!r} has a malformed entry in the safetensors header")
        if info.get("dtype") not in DTYPE_BYTES:
            raise AdapterInvalid(f"{where}: tensor {name!r} has dtype {str(info.get('dtype'))[:20]!r}, not a safetensors dtype")
        expected = math.prod(shape) * DTYPE_BYTES[info["dtype"]]
        if offsets[1] - offsets[0] != expected:
            raise AdapterInvalid(f"{where}: tensor {name!r} is {info['dtype']} {shape}, {expected} bytes, but the header "
                                 f"gives it {offsets[1] - offsets[0]}")
        if offsets[0] != end:
            raise AdapterInvalid(f"{where}: tensor {name!r} starts at byte {offsets[0]}, not where the one before it ends "
                                 f"({end}): tensors may not overlap or leave gaps")
        end = offsets[1]
    if 8 + length + end != size:
        raise AdapterInvalid(f"{where}: the safetensors header describes {end} bytes of data, the file holds {size - 8 - length}")
    return header


def _start(info: object) -> int:
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    return offsets[0] if isinstance(offsets, list) and offsets and type(offsets[0]) is int else -1


def base_model_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Weight name -> shape of a Hugging Face model directory, from its safetensors headers."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise AdapterInvalid(f"no safetensors weights in the base model directory {model_dir}")
    return {name: info["shape"] for file in files for name, info in safetensors_header(file).items()}


def _targets_module(target_modules, module: str) -> bool:
    """Whether a list of target_modules names `module` (PEFT: the name, or the path's last parts)."""
    return any(module == t or module.endswith(f".{t}") for t in target_modules)


def _regex_matches(where: str, pattern: str, names: list[str]) -> set[str]:
    """The names a regex target_modules matches whole, as PEFT matches it. The engines run it against
    every module name of the base model, so all of them together must finish within REGEX_SECONDS
    (the match releases the GIL: the service answers meanwhile)."""
    deadline, matched = time.monotonic() + REGEX_SECONDS, set()
    compiled = regex.compile(pattern)
    for name in names:
        try:
            if compiled.fullmatch(name, timeout=max(deadline - time.monotonic(), 0.001), concurrent=True):
                matched.add(name)
        except TimeoutError:
            raise AdapterInvalid(f"{where}: target_modules {pattern[:80]!r} takes over {REGEX_SECONDS} s to match the "
                                 "module names; list the module names instead of a regular expression") from None
    return matched


def _check_config(path: Path, config: dict, base_model: str, max_rank: int, where: str) -> int:
    if config.get("peft_type") != "LORA":
        raise AdapterInvalid(f"{where}: peft_type is {config.get('peft_type')!r}; only LORA adapters can be served")
    rank = config.get("r")
    if type(rank) is not int:  # not 16.0, not true
        raise AdapterInvalid(f"{where}: rank r is {rank!r}; it must be an integer, one of {VLLM_LORA_RANKS}")
    if rank not in VLLM_LORA_RANKS:
        raise AdapterInvalid(f"{where}: rank {rank!r} is not one vLLM accepts ({VLLM_LORA_RANKS})")
    if rank > max_rank:
        raise AdapterInvalid(f"{where}: rank {rank} is above adapters.max_rank {max_rank} (vLLM's --max-lora-rank)")
    alpha = config.get("lora_alpha", 8)
    if type(alpha) not in (int, float) or not math.isfinite(alpha) or alpha <= 0:
        raise AdapterInvalid(f"{where}: lora_alpha is {alpha!r}; it must be a positive, finite number")
    if config.get("bias", "none") != "none":
        raise AdapterInvalid(f"{where}: bias is {config.get('bias')!r}; vLLM serves only bias 'none'")
    if config.get("modules_to_save"):
        raise AdapterInvalid(f"{where}: modules_to_save {config['modules_to_save']} cannot be served by vLLM; retrain without")
    if config.get("use_dora"):
        raise AdapterInvalid(f"{where}: DoRA adapters cannot be served by vLLM")
    if (path / "added_tokens.json").exists() or config.get("trainable_token_indices"):
        raise AdapterInvalid(f"{where}: the adapter adds or trains tokens; vLLM serves adapters without added tokens")
    if config.get("base_model_name_or_path") != base_model:
        raise AdapterInvalid(
            f"{where}: trained for base model {config.get('base_model_name_or_path')!r}, but the served model is "
            f"{base_model!r}"
        )
    targets = config.get("target_modules")
    if isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets):
        bad = [t for t in targets if t.rsplit(".", 1)[-1] in _NOT_SERVABLE_MODULES]
    elif isinstance(targets, str) and targets:
        try:
            re.compile(targets)  # the engines compile it with Python's re
            regex.compile(targets)
        except (re.error, regex.error) as exc:
            raise AdapterInvalid(f"{where}: target_modules {targets!r} is not a valid regular expression: {exc}") from None
        bad = []
    else:
        raise AdapterInvalid(f"{where}: target_modules is {targets!r}; name the linear layers adapted (a list of names)")
    if bad:
        raise AdapterInvalid(f"{where}: target_modules {bad} cannot be served: vLLM applies LoRA to linear layers only")
    return rank


def _check_weights(path: Path, config: dict, rank: int, base: dict[str, list[int]] | None, where: str) -> list[str]:
    """The modules the adapter has weights for (checked against the config and the base model)."""
    header = safetensors_header(path / "adapter_model.safetensors", f"{where}/adapter_model.safetensors")
    if not header:
        raise AdapterInvalid(f"{where}/adapter_model.safetensors holds no tensors")
    pairs: dict[str, dict[str, list[int]]] = {}
    for name, info in header.items():
        match = _LORA_TENSOR.fullmatch(name)
        if match is None:
            raise AdapterInvalid(f"{where}: tensor {name!r} is not a LoRA A/B weight vLLM can load")
        if info["dtype"] not in ADAPTER_DTYPES:
            raise AdapterInvalid(f"{where}: tensor {name!r} is {info['dtype']}; adapter weights are one of {ADAPTER_DTYPES}")
        pairs.setdefault(match["module"], {})[match["part"]] = info["shape"]
    targets = config["target_modules"]
    if isinstance(targets, str):  # PEFT: a regex matched against the whole module path
        weights = [*pairs, *(n.removesuffix(".weight") for n in base or ())]  # and their parents: PEFT tries every module
        names = list(dict.fromkeys(".".join(p[:i]) for p in (w.split(".") for w in weights) for i in range(1, len(p) + 1)))
        matched = _regex_matches(where, targets, names)
    for module, parts in sorted(pairs.items()):
        if set(parts) != {"A", "B"}:
            raise AdapterInvalid(f"{where}: module {module} has lora_{''.join(parts)} but not both lora_A and lora_B")
        a, b = parts["A"], parts["B"]
        if len(a) != 2 or len(b) != 2 or a[0] != rank or b[1] != rank:
            raise AdapterInvalid(
                f"{where}: {module} has lora_A {a} and lora_B {b}, which do not match rank r = {rank} in the config"
            )
        if not (module in matched if isinstance(targets, str) else _targets_module(targets, module)):
            raise AdapterInvalid(f"{where}: weights for {module}, which target_modules {targets} does not name")
        if base is not None:
            shape = base.get(f"{module}.weight")
            if shape is None:
                raise AdapterInvalid(f"{where}: the base model has no layer {module}")
            if [b[0], a[1]] != shape:
                raise AdapterInvalid(
                    f"{where}: {module} adapts a [{b[0]}, {a[1]}] layer, but the base model's is {shape}"
                )
    if isinstance(targets, list):
        unused = [t for t in targets if not any(_targets_module([t], m) for m in pairs)]
        if unused:
            raise AdapterInvalid(f"{where}: target_modules {unused} match no layer with weights in the adapter")
    return sorted(pairs)


def validate_adapter(path: Path, base_model: str, max_rank: int, base_dir: Path | None = None, shown: str | None = None) -> dict:
    """The adapter's config as the registry keeps it, if vLLM (and the embedded engine) can load it;
    else AdapterInvalid naming the problem. `base_dir`: the base model's directory, to check modules
    and shapes against. A regular expression in target_modules comes back as the list of modules
    it names, so no engine ever runs an uploaded pattern. `shown`: how messages name the adapter
    (an upload's name rather than where it waits on the server), by default its path."""
    path = Path(path)
    where = shown or str(path)
    if not path.is_dir():
        raise AdapterInvalid(f"{where} is not a directory")
    links = sorted(p.name for p in path.iterdir() if p.is_symlink())
    if links:
        raise AdapterInvalid(f"{where}: {', '.join(links)} are symbolic links; copy the real files in")
    missing = [f for f in ADAPTER_FILES if not (path / f).is_file()]
    if missing:
        raise AdapterInvalid(f"{where} is not a LoRA adapter: {', '.join(missing)} missing")
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except RecursionError:
        raise AdapterInvalid(f"{where}/adapter_config.json is nested too deeply to be a PEFT config") from None
    except (OSError, ValueError) as exc:
        raise AdapterInvalid(f"{where}/adapter_config.json is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterInvalid(f"{where}/adapter_config.json is not a JSON object")
    rank = _check_config(path, config, base_model, max_rank, where)
    base = base_model_shapes(base_dir) if base_dir is not None else None
    modules = _check_weights(path, config, rank, base, where)
    _check_finite(path / "adapter_model.safetensors", f"{where}/adapter_model.safetensors")
    if isinstance(config["target_modules"], str):
        config = {**config, "target_modules": modules}
    return config


_EXPONENT = {"F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80), "F32": ("<u4", 0x7F800000)}


def _check_finite(path: Path, where: str) -> None:
    """Every weight a finite number: NaN and infinity have all exponent bits set, in all three dtypes."""
    import numpy as np

    header = safetensors_header(path, where)
    with open(path, "rb") as f:
        start = 8 + struct.unpack("<Q", f.read(8))[0]
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            kind, mask = _EXPONENT[info["dtype"]]
            begin, end = info["data_offsets"]
            f.seek(start + begin)
            bits = np.frombuffer(f.read(end - begin), dtype=kind)
            if np.any((bits & mask) == mask):
                raise AdapterInvalid(f"{where}: tensor {name!r} holds NaN or infinite values; the adapter's training diverged")
