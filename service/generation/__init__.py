"""Generation backends behind one interface; the setting generation.backend picks one here."""

from __future__ import annotations

import logging

from ragtune.settings import GenerationSettings
from service.generation.base import Generator

log = logging.getLogger("ragtune.generation")


def create_generator(settings: GenerationSettings) -> Generator:
    match settings.backend:
        case "local":
            from service.generation.openvino_files import choose_engine

            engine, why = choose_engine(settings)
            log.info("local engine: %s (%s)", engine, why)
            if engine == "openvino":
                from service.generation.openvino_engine import OpenVINOGenerator

                return OpenVINOGenerator(settings)
            from service.generation.local import LocalGenerator

            return LocalGenerator(settings)
        case "vllm":
            from service.generation.vllm import VllmGenerator

            return VllmGenerator(settings)
    raise ValueError(f"unknown generation backend {settings.backend!r}")


def create_judge(settings: GenerationSettings, model_path: str | None) -> Generator | None:
    """prompt.answerable_check_model_path: the local model that makes the answerability check instead of the
    answering one, on the embedded engine (the answering model may be remote); None when unset. It serves no
    adapters: only the check's one-token log probabilities are asked of it."""
    if not model_path:
        return None
    judge = settings.for_local_model(model_path, "RAGTUNE_PROMPT__ANSWERABLE_CHECK_MODEL_PATH")
    log.info("answerability check judged by %s (prompt.answerable_check_model_path)", judge.model)
    return create_generator(judge)
