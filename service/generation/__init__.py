"""Generation backends behind one interface; the setting generation.backend picks one here."""

from __future__ import annotations

from ragtune.settings import GenerationSettings
from service.generation.base import Generator


def create_generator(settings: GenerationSettings) -> Generator:
    match settings.backend:
        case "local":
            from service.generation.local import LocalGenerator

            return LocalGenerator(settings)
        case "vllm":
            from service.generation.vllm import VllmGenerator

            return VllmGenerator(settings)
    raise ValueError(f"unknown generation backend {settings.backend!r}")
