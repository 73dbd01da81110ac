"""Retrieve, pack, generate: the one pipeline behind /ask, the chat API and `ragtune ask`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Callable

from ragtune.errors import BackendUnavailable, ContextLengthExceeded, RagtuneError, UnknownModel, UsageError
from ragtune.settings import Settings
from service import answerable
from service.generation.base import STRUCTURED_FIELDS, Completion, GenerationParams, Generator, Messages, StreamEvent, TokenCounter
from service.fewshot import Demonstrations
from service.packing import Ledger, Packer, Passage, over_window
from service.schema import Citation, RetrievalOptions, Usage
from indexer.collections import DEFAULT as DEFAULT_COLLECTION
from service.retrieval import Filters, Retriever, Retrievers

log = logging.getLogger(__name__)

SNIPPET_CHARS = 240
REWRITE_INSTRUCTION = (
    "Rewrite the follow-up question as one standalone question that names what it refers to. "
    "Answer with the question only."
)


# Told each answer's timings (ms by stage) and completion: the service's metrics listen here.
Observer = Callable[[dict[str, float], Completion], None]


@dataclass
class Prepared:
    messages: Messages
    passages: list[Passage] = field(default_factory=list)
    ledger: Ledger | None = None
    index_version: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    dropped_turns: int = 0  # oldest conversation messages left out to fit
    query_from: str = "question"  # how the search query was made (see RagPipeline.search_query)
    answerable: float | None = None  # the answerability check's score (service/answerable.score), when it ran

    @property
    def citations(self) -> list[Citation]:
        return [citation(p) for p in sorted(self.passages, key=lambda p: p.number)]


def citation(passage: Passage) -> Citation:
    chunk = passage.chunk
    snippet = passage.text if len(passage.text) <= SNIPPET_CHARS else passage.text[:SNIPPET_CHARS].rsplit(" ", 1)[0] + "…"
    return Citation(
        number=passage.number, doc_id=chunk.doc_id, source=chunk.source_id, chunk_id=chunk.id,
        chunk_ids=[h.chunk.id for h in passage.hits], score=round(passage.score, 4), title=chunk.title,
        headings=list(chunk.headings), page=chunk.page, snippet=snippet,
    )


def usage_of(completion: Completion) -> Usage:
    return Usage(
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        total_tokens=completion.prompt_tokens + completion.completion_tokens,
    )


class RagPipeline:
    def __init__(
        self, settings: Settings, retriever: Retriever, generator: Generator | None, observe: Observer | None = None,
        demonstrations: Demonstrations | None = None, counter: TokenCounter | None = None, judge: Generator | None = None,
    ):
        """`counter`: what packing counts with (default: the generator). Without a generator the
        pipeline only prepares prompts (fine-tuning builds its retrieval-aware examples so). `judge`: the
        model that makes the answerability check, when it is not the answering one (create_judge)."""
        if counter is None and generator is None:
            raise ValueError("a pipeline needs a generator or a token counter")
        self.observe = observe
        self.settings = settings
        self.retriever = retriever  # the default collection's
        self.retrievers = Retrievers(retriever, settings.index, settings.service.reload_check_seconds, settings.retrieval)
        self.generator = generator
        self.judge = judge
        # prompt.decline_below_similarity for the embedder that built the index, resolved once
        self.similarity_floor = answerable.similarity_floor(settings.prompt.decline_below_similarity, retriever.embedder.name)
        self.packer = Packer(settings.prompt, counter or generator)
        self.demonstrations = demonstrations

    def check_model(self, model: str | None) -> str | None:
        """None for the base model; the adapter name otherwise. Unknown names are refused."""
        if model is None or model == self.generator.model_name:
            return None
        if model in self.generator.models():
            return model
        raise UnknownModel(f"model {model!r} does not exist; GET /v1/models lists the base model and adapters")

    def prepare(
        self, question: str, history: Messages, options: RetrievalOptions | None, answer_tokens: int,
        system: str | None = None, tail: Messages = (), query: str | None = None,
    ) -> Prepared:
        """Blocking (embedding, FAISS, tokenizer): call it off the event loop. `tail`: the turns
        after the question (an assistant's tool calls and the tools' results), kept after it.
        `query`: what to search with, when it is not the question itself (a chat's follow-up)."""
        options = options or RetrievalOptions()
        window = self.packer.counter.context_window
        if answer_tokens >= window:
            raise ContextLengthExceeded(over_window(window, 0, answer_tokens, f"max_tokens {answer_tokens} leaves no "
                                                    "room for a prompt; ask for fewer"), param="max_tokens")
        if not options.enabled:
            started = time.perf_counter()
            history, dropped = self.packer.fit_history(question, history, system, answer_tokens, tail, 0)
            messages = self.packer.messages(question, history, None, system, tail)
            self.packer.check_fits(messages, answer_tokens)  # the last message alone is too long: a 400
            timings = {"retrieval": 0.0, "packing": (time.perf_counter() - started) * 1000}
            return Prepared(messages, timings_ms=timings, dropped_turns=dropped)
        started = time.perf_counter()
        filters = Filters(tuple(options.doc_ids), options.source_prefix, dict(options.metadata))
        top_k = options.top_k or self.settings.retrieval.top_k
        min_score = self.settings.retrieval.min_score if options.min_score is None else options.min_score
        retriever = self.retrievers.get(options.collection)
        snapshot = retriever.snapshot()  # one version for the whole request, even if a reload lands
        query = query or question
        vector = retriever.embedder.embed([query])  # for passages and demonstrations alike
        hits, below = retriever.search(query, top_k, filters, min_score, snapshot, options.hybrid, vector)
        demos = self._demonstrations(question, vector, options)
        version = snapshot.version_id
        retrieved = time.perf_counter()
        messages, passages, ledger = self.packer.pack(question, history, hits, below, answer_tokens, system, demos, tail)
        packed = time.perf_counter()
        timings = {"retrieval": (retrieved - started) * 1000, "packing": (packed - retrieved) * 1000}
        ledger.query, ledger.collection = query, options.collection or DEFAULT_COLLECTION
        return Prepared(messages, passages, ledger, version, timings, ledger.dropped_turns)

    async def search_query(self, question: str, history: Messages) -> tuple[str, str]:
        """(what a chat's last question is searched with, how it was made): a follow-up is made
        standalone from the conversation (setting retrieval.followups)."""
        previous = [t["content"] for t in history if t["role"] == "user" and t.get("content")]
        mode = self.settings.retrieval.followups
        if not previous or mode == "off":
            return question, "question"
        prepended = f"{previous[-1]}\n{question}"
        if mode == "prepend":
            return prepended, "prepended"
        recent = "\n".join(f"{t['role']}: {t['content'][:500]}" for t in history[-4:] if t.get("content"))
        prompt = [
            {"role": "system", "content": REWRITE_INSTRUCTION},
            {"role": "user", "content": f"Conversation:\n{recent}\n\nFollow-up question: {question}"},
        ]
        try:
            rewritten = (await self.generator.generate(prompt, GenerationParams(max_tokens=48, stop=("\n",)))).text.strip()
        except RagtuneError:  # a busy or failing backend: the cheap way still works
            return prepended, "prepended (rewrite failed)"
        if not rewritten or len(rewritten) > 4 * len(prepended):
            return prepended, "prepended (rewrite unusable)"
        return rewritten, "rewritten"

    def _demonstrations(self, question: str, vector, options: RetrievalOptions) -> list[tuple[str, str]]:
        k = self.settings.fewshot.k if options.fewshot_k is None else options.fewshot_k
        if not k:
            return []
        if self.demonstrations is None:
            if options.fewshot_k:
                raise UsageError("few-shot demonstrations are off: set RAGTUNE_FEWSHOT__FILE to a QA JSONL file")
            return []
        return self.demonstrations.nearest(question, vector, k)

    async def prepare_async(self, *args, **kwargs) -> Prepared:
        return await asyncio.to_thread(self.prepare, *args, **kwargs)

    def _answer_params(self, prepared: Prepared, params: GenerationParams) -> GenerationParams:
        """An answer from passages in prose is `grounded` (the local engine's answer model gives it when the
        request names no adapter), and stops at the setting prompt.stop (the end of a short answer; not JSON or
        tool calls, which may span lines) unless the request named its own stops (`[]`: none)."""
        if not _from_passages_in_prose(prepared, params):
            return params
        stop = tuple(self.settings.prompt.stop) if params.default_stop else params.stop
        return replace(params, stop=stop, grounded=params.model is None)

    async def _declined(self, prepared: Prepared, params: GenerationParams) -> Completion | None:
        """The decline answer, without generating, when no passage reaches prompt.decline_below_similarity or
        (prompt.answerable_check) the model judges that the passages do not state the answer
        (service/answerable.py); None to answer. Only answers from passages in prose are checked."""
        if not _from_passages_in_prose(prepared, params):
            return None
        best = answerable.best_similarity(prepared.passages)
        if self.similarity_floor is not None and best < self.similarity_floor:
            log.info("declined without answering: no passage is similar enough to the question (best %.3f, below "
                     "prompt.decline_below_similarity %g)", best, self.similarity_floor)
            return self._decline(prepared, params)
        threshold = self.settings.prompt.answerable_check
        if threshold is None:
            return None
        judge = None if self.judge else self.settings.prompt.answerable_check_model or params.model
        if judge == self.generator.model_name:
            judge = None
        started = time.perf_counter()
        try:
            top = await (self.judge or self.generator).first_token_logprobs(
                answerable.check_messages(prepared.messages), judge)
        except UnknownModel:
            if judge == params.model:
                raise
            raise BackendUnavailable(f"prompt.answerable_check_model {judge!r} is not served: publish it "
                                     f"(`ragtune adapters load {judge}`), or unset the setting") from None
        weight = self.settings.prompt.answerable_check_retrieval_weight
        prepared.answerable = round(answerable.score(answerable.yes_no_margin(top), best, weight), 3)
        prepared.timings_ms["answerable_check"] = (time.perf_counter() - started) * 1000
        if prepared.answerable >= threshold:
            return None
        log.info("declined without answering: the answerability score %.3f (yes/no margin%s) is below "
                 "prompt.answerable_check %g", prepared.answerable,
                 f" + {weight:g} x best passage similarity" if weight else "", threshold)
        return self._decline(prepared, params)

    def _decline(self, prepared: Prepared, params: GenerationParams) -> Completion:
        return Completion(self.settings.prompt.decline_answer, prepared.ledger.prompt_tokens, 0, "stop",
                          params.model or self.generator.model_name)

    async def complete(self, prepared: Prepared, params: GenerationParams) -> Completion:
        completion = await self._declined(prepared, params)
        started = time.perf_counter()
        if completion is None:
            completion = await self.generator.generate(prepared.messages, self._answer_params(prepared, params))
        self._finished(prepared, completion, started)
        return completion

    async def stream(self, prepared: Prepared, params: GenerationParams) -> AsyncIterator[StreamEvent]:
        declined = await self._declined(prepared, params)
        started = time.perf_counter()
        if declined is not None:
            self._finished(prepared, declined, started)
            yield StreamEvent(text=declined.text)
            yield StreamEvent(done=True, completion=declined)
            return
        async for event in self.generator.stream(prepared.messages, self._answer_params(prepared, params)):
            if event.done:
                self._finished(prepared, event.completion, started)
            yield event

    def _finished(self, prepared: Prepared, completion: Completion, started: float) -> None:
        prepared.timings_ms["generation"] = (time.perf_counter() - started) * 1000
        if self.observe is not None:
            self.observe(prepared.timings_ms, completion)


def _from_passages_in_prose(prepared: Prepared, params: GenerationParams) -> bool:
    """An answer from retrieved passages (retrieval ran), in prose (not JSON, not tool calls): what the default stop,
    the declines and the answer model apply to."""
    return prepared.ledger is not None and not any(k in params.extra for k in STRUCTURED_FIELDS)


def build_pipeline(
    settings: Settings, embedder, generator: Generator | None, observe: Observer | None = None,
    counter: TokenCounter | None = None, judge: Generator | None = None,
) -> RagPipeline:
    """The pipeline over the configured index, for the service and the CLI alike."""
    retriever = Retriever(
        settings.index.dir, settings.index, embedder, settings.service.reload_check_seconds, settings.retrieval
    )
    demonstrations = Demonstrations(settings.fewshot.file, embedder, settings.prompt) if settings.fewshot.file else None
    return RagPipeline(settings, retriever, generator, observe, demonstrations, counter, judge)
