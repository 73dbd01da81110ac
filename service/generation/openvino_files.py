"""The OpenVINO engine's model: the served Hugging Face directory (model_files.py) exported once to
OpenVINO IR with int8 (or fp16) weights, cached under `generation.cache_dir/openvino/`.

The export is optimum-intel's (`optimum-cli export openvino`), which pins a transformers older than
the project's; it therefore runs from its own environment (`make openvino-env` builds
`.venv-openvino`), as vLLM does. The runtime (openvino, openvino-genai) is in the project's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from ragtune.errors import UsageError
from ragtune.settings import GenerationSettings
from service.generation.model_files import converted_model_dir

log = logging.getLogger("ragtune.generation")

REPO = Path(__file__).resolve().parents[2]
EXPORT_TIMEOUT_S = 1800


def exporter_path(settings: GenerationSettings) -> Path:
    """optimum-cli of the export environment: generation.openvino_exporter, else .venv-openvino's."""
    return Path(settings.openvino_exporter) if settings.openvino_exporter else REPO / ".venv-openvino" / "bin" / "optimum-cli"


def exporter(settings: GenerationSettings) -> Path:
    path = exporter_path(settings)
    if not path.is_file():
        raise UsageError(
            f"the openvino engine exports its model once with optimum-intel, and {path} is missing: run "
            "`make openvino-env`, or set RAGTUNE_GENERATION__OPENVINO_EXPORTER to an optimum-cli, or set "
            "RAGTUNE_GENERATION__ENGINE=transformers"
        )
    return path


def _fingerprint(model_dir: Path) -> str:
    """What the export depends on: the weights' and config's sizes and times (not their bytes: a 1.5B model is GBs)."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(model_dir)):
        stat = (model_dir / name).stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:12]


def exported_dir(settings: GenerationSettings, source: Path) -> Path:
    return settings.cache_dir / "openvino" / f"{source.name}-{settings.openvino_weights}-{_fingerprint(source)}"


def openvino_model_dir(settings: GenerationSettings, source: Path | None = None) -> Path:
    """The IR directory of `source` (default: the served model) at generation.openvino_weights, exported on first use."""
    source = source or converted_model_dir(settings)
    target = exported_dir(settings, source)
    if (target / "openvino_model.xml").is_file():
        return target
    cli = exporter(settings)
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    log.warning("exporting %s to OpenVINO (%s weights) in %s (once; takes a while)", source, settings.openvino_weights, target)
    command = [str(cli), "export", "openvino", "--model", str(source), "--task", "text-generation-with-past",
               "--weight-format", settings.openvino_weights, str(staging)]
    # The exporter is its own environment: a PYTHONPATH meant for ours would hand it our transformers.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")} | {"HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        raise UsageError(f"the OpenVINO export of {source} ran past {EXPORT_TIMEOUT_S} s") from None
    if done.returncode != 0 or not (staging / "openvino_model.xml").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise UsageError(f"the OpenVINO export of {source} failed (exit {done.returncode}):\n{tail}")
    try:
        staging.rename(target)
    except OSError:  # another process exported it first; theirs is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return target


def choose_engine(settings: GenerationSettings) -> tuple[str, str]:
    """generation.engine resolved: ("openvino" | "transformers", why)."""
    import importlib.util

    if settings.engine != "auto":
        return settings.engine, "set by generation.engine"
    import torch

    if torch.cuda.is_available():
        return "transformers", "a CUDA GPU is present (OpenVINO here runs on the CPU)"
    if importlib.util.find_spec("openvino_genai") is None:
        return "transformers", "openvino-genai is not installed (pip install 'ragtune[openvino]')"
    if not exporter_path(settings).is_file():
        # Without the exporter, every model the engine runs must be exported already: the served one and the
        # answer copy (generation.answer_adapter), which a cache made before it was merged does not hold.
        answering = settings.answer_model_dir()
        for source in (converted_model_dir(settings), *([answering] if answering else [])):
            if not (source / "config.json").is_file() or not (exported_dir(settings, source) / "openvino_model.xml").is_file():
                return "transformers", (f"{source.name} is not exported to OpenVINO and its exporter "
                                        f"{exporter_path(settings)} is missing (make openvino-env)")
    return "openvino", "no GPU; OpenVINO GenAI and its exporter are installed"
