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
