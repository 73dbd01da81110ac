"""The embedded engine on OpenVINO GenAI (generation.engine = openvino): the same model, exported once
to int8 IR (openvino_files.py), run by OpenVINO's C++ generation loop.

It keeps the transformers engine's contract (local.py, whose queue, worker thread and streaming it
inherits): the prompt is tokenized by the model's own Hugging Face tokenizer, so token counts and
budgets are the same; stop strings, seeds, temperature/top_p, the three penalties, `response_format`
(OpenVINO's xgrammar backend) and cancellation when the client leaves. Logprobs are refused by name:
OpenVINO GenAI reports only a sequence's summed score.

LoRA adapters: OpenVINO applies the adapters registered when a pipeline is built and ignores others,
and switching one pipeline between adapters per call proved unreliable here (after a switch, an
adapter stopped applying). So each served adapter gets a pipeline of its own, built with it alone,
next to the base model's; loading one builds it on the worker thread between requests (about 3 s
for the default model), unloading drops it. Each costs the memory of a compiled model (the int8
weights, ~0.15 GB for the default model). So does the answer model (generation.answer_adapter merged
into a copy of the weights, exported on its own), which answers the requests marked `grounded`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from pathlib import Path

from ragtune.errors import UnknownModel, UsageError
from ragtune.settings import GenerationSettings
from service.generation.base import Completion, GenerationParams, Messages
from service.generation.local import GREEDY_BELOW, LocalGenerator, _schema
from service.generation.model_files import answer_model_dir, converted_model_dir
from service.generation.openvino_files import openvino_model_dir

log = logging.getLogger("ragtune.generation")


def adapter_scale(path: Path) -> float:
    """PEFT's LoRA scale (lora_alpha / r, or / sqrt(r) with rsLoRA): OpenVINO reads only the weights,
    so the scale is its blending alpha."""
    config = json.loads((path / "adapter_config.json").read_text())
    rank, alpha = config.get("r") or 8, config.get("lora_alpha") or 8
    return alpha / (rank ** 0.5 if config.get("use_rslora") else rank)


def _streamer_class(og):
    class Streamer(og.StreamerBase):
        """Receives each new token id: passes on the answer's new text (holding back a partial UTF-8
        character) and ends generation early when the client has left."""

        def __init__(self, tokenizer, on_text, cancelled: threading.Event | None):
            super().__init__()
            self.tokenizer, self.on_text, self.cancelled = tokenizer, on_text, cancelled
            self.ids: list[int] = []
            self.sent = 0

        def write(self, token):
            self.ids.extend(token if isinstance(token, list) else [token])
            if self.on_text is not None:
                text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
                if len(text) > self.sent and not text.endswith("\ufffd"):
                    self.on_text(text[self.sent:])
                    self.sent = len(text)
            if self.cancelled is not None and self.cancelled.is_set():
                return og.StreamingStatus.CANCEL
            return og.StreamingStatus.RUNNING

        def end(self):
            pass

    return Streamer


class OpenVINOGenerator(LocalGenerator):
    engine = "openvino"

    def __init__(self, settings: GenerationSettings):
        # Not LocalGenerator.__init__: that loads the PyTorch model. The tokenizer, queue and worker are shared.
        import openvino_genai
        from transformers import AutoTokenizer

        self._og = openvino_genai
        self._streamer = _streamer_class(openvino_genai)
        self.model_dir = openvino_model_dir(settings)
        self._precision = settings.openvino_precision
        self._computes_in = self._precision if self._precision != "auto" else self._openvinos_pick()
        self._start(settings, AutoTokenizer.from_pretrained(converted_model_dir(settings)))
        self._pipes: dict[str | None, object] = {None: self._build(None)}  # None: the base model
        # generation.answer_adapter: a pipeline of its own over the copy with the adapter merged in (no LoRA at run time)
        answering = answer_model_dir(settings)
        self._answer_pipe = self._build(None, openvino_model_dir(settings, answering)) if answering else None

    def _build(self, adapter_dir: Path | None, model_dir: Path | None = None):
        started = time.perf_counter()
        model_dir = model_dir or self.model_dir
        kwargs = {} if self._precision == "auto" else {"INFERENCE_PRECISION_HINT": self._precision}
        if adapter_dir is not None:
            adapter = self._og.Adapter(str(adapter_dir / "adapter_model.safetensors"))
            kwargs["adapters"] = self._og.AdapterConfig(adapter, adapter_scale(adapter_dir))
        pipe = self._og.LLMPipeline(str(model_dir), "CPU", **kwargs)
        log.info("openvino pipeline for %s built in %.2f s, computing in %s%s", model_dir.name,
                 time.perf_counter() - started, self._computes_in, f" with adapter {adapter_dir}" if adapter_dir else "")
        return pipe

    @staticmethod
    def _openvinos_pick() -> str:
        import openvino

        return f"{openvino.Core().get_property('CPU', 'INFERENCE_PRECISION_HINT').get_type_name()} (OpenVINO's pick for this CPU)"

    # -- generation -----------------------------------------------------------------------
    def _config(self, params: GenerationParams):
        schema = _schema(params)
        if params.extra.get("logprobs") or params.extra.get("top_logprobs"):
            raise UsageError("logprobs: the openvino engine does not compute per-token log probabilities; leave it "
                             "out, or run with RAGTUNE_GENERATION__ENGINE=transformers", param="logprobs")
        config = self._og.GenerationConfig()
        config.max_new_tokens = params.max_tokens
        config.eos_token_id = self.tokenizer.eos_token_id
        if params.temperature >= GREEDY_BELOW:
            config.do_sample, config.temperature, config.top_p = True, params.temperature, params.top_p
            # OpenVINO's generator starts from rng_seed 0 on every call: without a seed, draw one.
            config.rng_seed = params.seed if params.seed is not None else random.getrandbits(31)
        config.repetition_penalty = params.repetition_penalty
        config.frequency_penalty = params.frequency_penalty
        config.presence_penalty = params.presence_penalty
        if params.stop:
            config.stop_strings = set(params.stop)
        if schema is not None:
            config.structured_output_config = self._og.StructuredOutputConfig(json_schema=json.dumps(schema or {"type": "object"}))
        return config

    def _run(self, messages: Messages, params: GenerationParams, on_text=None, cancelled: threading.Event | None = None) -> Completion:
        import numpy as np
        import openvino

        if cancelled is not None and cancelled.is_set():  # its client left while it waited
            return Completion("", 0, 0, "cancelled", params.model or self.model_name)
        pipe = self._answer_pipe if params.grounded and self._answer_pipe else self._pipes.get(params.model)
        if pipe is None:
            raise UnknownModel(f"model {params.model!r} is not loaded; GET /v1/models lists what is served")
        config = self._config(params)
        ids = self.tokens.prompt_ids(messages)
        inputs = self._og.TokenizedInputs(openvino.Tensor(np.array([ids], dtype=np.int64)),
                                          openvino.Tensor(np.ones((1, len(ids)), dtype=np.int64)))
        streamer = self._streamer(self.tokenizer, on_text, cancelled)
        result = pipe.generate(inputs, config, streamer)
        return self._completion([int(t) for t in result.tokens[0]], len(ids), params)

    async def first_token_logprobs(self, messages: Messages, model: str | None, top: int = 20) -> list[tuple[str, float]]:
        """OpenVINO GenAI gives no logits, and greedy decoding no scores; a one-token beam search with `top` beams
        returns the `top` likeliest first tokens with their log probabilities, from the request's own pipeline."""
        return await self._submit(self._first_token_logprobs, messages, model, top)

    def _first_token_logprobs(self, messages: Messages, model: str | None, top: int) -> list[tuple[str, float]]:
        import numpy as np
        import openvino

        pipe = self._pipes.get(model)
        if pipe is None:
            raise UnknownModel(f"model {model!r} is not loaded; GET /v1/models lists what is served")
        config = self._og.GenerationConfig()
        config.max_new_tokens, config.num_beams, config.num_return_sequences, config.do_sample = 1, top, top, False
        ids = self.tokens.prompt_ids(messages)
        inputs = self._og.TokenizedInputs(openvino.Tensor(np.array([ids], dtype=np.int64)),
                                          openvino.Tensor(np.ones((1, len(ids)), dtype=np.int64)))
        result = pipe.generate(inputs, config)
        ranked = sorted(zip(result.tokens, result.scores), key=lambda pair: -pair[1])
        return [(self.tokenizer.decode([int(tokens[0])]), float(score)) for tokens, score in ranked if len(tokens)]

    # -- adapters ---------------------------------------------------------------------------
    def _load(self, name: str, path: Path) -> None:
        self._pipes[name] = self._build(path)  # a new version under the same name replaces the old one
        self._adapters[name] = path
        self._served = tuple(self._adapters)

    def _unload(self, name: str) -> None:
        del self._adapters[name]
        self._served = tuple(self._adapters)
        del self._pipes[name]
