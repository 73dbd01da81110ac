"""Answer every question with every strategy, through the service's own code paths.

Two answerers with one interface: `InProcess` runs the pipeline behind /ask (the same
retriever, packer and generator, built from the same settings); `Remote` posts to a running
service's /ask (which may itself be backed by vLLM). Answers are greedy (temperature 0) and
seeded, so a run repeats.

Strategies (the customization ramp):
    zero-shot            the question alone, no passages
    rag                  the /ask pipeline: retrieved passages under the token budget
    few-shot             rag plus retrieved demonstrations (QA pairs) as earlier turns
    adapter:<name>       zero-shot with a LoRA adapter
    rag+adapter:<name>   rag with a LoRA adapter
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import httpx

from evaluation.gold import GoldIndex, doc_matches
from evaluation.metrics import Outcome, answer_score, citation_correct, declines, exact_match, faithfulness, token_f1
from indexer import store
from ragtune.qa import QAItem
from ragtune.registry import lineage_warning
from ragtune.errors import RagtuneError, UsageError
from ragtune.settings import Settings
from service.generation.base import GenerationParams
from service.schema import RetrievalOptions

STRATEGY_HELP = "zero-shot, rag, few-shot, adapter:<name>, rag+adapter:<name>"


class EvalError(RagtuneError):
    exit_code = 1


@dataclass(frozen=True)
class Strategy:
    name: str
    retrieval: bool
    fewshot: bool = False
    adapter: str | None = None

    @classmethod
    def parse(cls, text: str) -> Strategy:
        name = text.strip()
        base, _, adapter = name.partition("adapter:")
        if adapter:
            if base not in ("", "rag+"):
                raise UsageError(f"unknown strategy {text!r}; expected one of {STRATEGY_HELP}")
            return cls(name, retrieval=base == "rag+", adapter=adapter)
        match name:
            case "zero-shot":
                return cls(name, retrieval=False)
            case "rag":
                return cls(name, retrieval=True)
            case "few-shot":
                return cls(name, retrieval=True, fewshot=True)
        raise UsageError(f"unknown strategy {text!r}; expected one of {STRATEGY_HELP}")


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    ranked_doc_ids: list[str] | None  # documents in retrieval order (None: nothing retrieved)
    index_version: str | None = None
    passages: dict[int, str] | None = None  # the prompt's passages by number (in process only)
    answerable: float | None = None  # the answerability check's score, when prompt.answerable_check ran it


class AnswerCache:
    """Answers already given under one setup, one JSON line each in the report folder: a run that
    was interrupted and is started again with the same setup answers only what is missing. A
    different setup (model, adapters and their versions, index and its version, settings of the
    run) has another key, so its answers are never reused; a question is matched by its id and text."""

    def __init__(self, path: Path, setup: dict):
        self.path = path
        self.key = hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self._answers: dict[tuple, Answer] = {}
        self.reused = 0
        if path.is_file():
            text = path.read_text()
            if text and not text.endswith("\n"):  # a line cut short: the next answer starts a line of its own
                with path.open("a") as out:
                    out.write("\n")
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # the line being written when the run was killed
                    continue
                if record.get("setup") == self.key:
                    answer = record["answer"]
                    if answer.get("passages") is not None:
                        answer["passages"] = {int(n): text for n, text in answer["passages"].items()}
                    self._answers[(record["strategy"], record["id"], record["question"])] = Answer(**answer)

    def get(self, strategy: str, item: QAItem) -> Answer | None:
        found = self._answers.get((strategy, item.id, item.question))
        self.reused += found is not None
        return found

    def put(self, strategy: str, item: QAItem, answer: Answer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"setup": self.key, "strategy": strategy, "id": item.id, "question": item.question, "answer": asdict(answer)}
        with self.path.open("a") as out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def ranked_documents(retrieved: list[dict]) -> list[str]:
    """The ledger's retrieved chunks (best first) as document ids, each once."""
    return list(dict.fromkeys(entry["doc_id"] for entry in retrieved))


class Answerer(Protocol):
    def describe(self) -> dict: ...
    async def start(self, strategies: list[Strategy]) -> None:
        """Check that every strategy can run (before hours of answering)."""

    async def use(self, strategy: Strategy) -> None:
        """Get ready to answer with this strategy (an adapter is loaded when first needed)."""

    async def answer(self, item: QAItem, strategy: Strategy) -> Answer: ...
    async def close(self) -> None: ...


@dataclass
class Request:
    top_k: int | None
    max_tokens: int
    fewshot_k: int
    seed: int

    def retrieval(self, strategy: Strategy) -> dict:
        return {"enabled": strategy.retrieval, "top_k": self.top_k, "fewshot_k": self.fewshot_k if strategy.fewshot else 0}


class InProcess:
    """The pipeline behind /ask, in this process."""

    def __init__(self, settings: Settings, request: Request, demonstrations: Path | None):
        from indexer.embedder import load_embedder
        from service.fewshot import Demonstrations
        from service.generation import create_generator, create_judge
        from service.pipeline import build_pipeline

        self.settings, self.request = settings, request
        self.adapters: dict[str, str] = {}  # name -> registry version evaluated
        self.warnings: list[str] = []  # adapters trained over another index version (lineage)
        self._wanted: dict = {}  # name -> registry entry, for the adapters this run loads
        self._loaded = False
        self.embedder = load_embedder(settings.embedding, settings.index)
        self.generator = create_generator(settings.generation)
        self.judge = create_judge(settings.generation, settings.prompt.answerable_check_model_path)
        self.pipeline = build_pipeline(settings, self.embedder, self.generator, judge=self.judge)
        if demonstrations is not None:
            self.pipeline.demonstrations = Demonstrations(demonstrations, self.embedder, settings.prompt)

    def gold_index(self) -> GoldIndex:
        return GoldIndex.from_snapshot(self.pipeline.retriever.snapshot())

    def describe(self) -> dict:
        generation = self.settings.generation
        where = generation.vllm.urls if generation.backend == "vllm" else "in-process"
        answering = generation.answer_model_dir() if generation.backend == "local" else None  # answer_adapter merged in
        return {"mode": "in-process", "backend": generation.backend, "engine": getattr(self.generator, "engine", None),
                "model": self.generator.model_name, "answer_model": answering.name if answering else None,
                "backend_at": where, "index": str(self.settings.index.dir),
                "index_version": store.current_version(self.settings.index.dir), "adapters": self.adapters,
                "warnings": self.warnings}

    async def start(self, strategies: list[Strategy]) -> None:
        if not await self.generator.ready():
            raise EvalError(f"the {self.settings.generation.backend} generation backend is not ready; see the log above")
        if any(s.fewshot for s in strategies) and self.pipeline.demonstrations is None:
            raise UsageError("the few-shot strategy needs demonstrations: pass --demonstrations FILE (QA JSONL)")
        wanted = {s.adapter for s in strategies if s.adapter}
        prompt = self.settings.prompt
        if prompt.answerable_check is not None and prompt.answerable_check_model:
            wanted.add(prompt.answerable_check_model)  # the judge of every strategy's check
        wanted = sorted(wanted - {self.generator.model_name})
        if wanted:
            from ragtune.registry import Registry

            self._registry = Registry(
                self.settings.adapters, self.settings.generation.model,
                self.settings.adapters.resolved_base_dir(self.settings.generation),
            )
            self._wanted = {name: self._registry.get(name) for name in wanted}  # unknown names fail here
            self.adapters = {name: info.version for name, info in self._wanted.items()}
            current = store.current_version(self.settings.index.dir)
            self.warnings = [w for info in self._wanted.values() if (w := lineage_warning(info, current))]

    async def use(self, strategy: Strategy) -> None:
        if not self._wanted or self._loaded:
            return
        # Published adapters stay loaded (a shared vLLM keeps serving them); the ones under
        # evaluation are loaded whether published or not: evaluate first, publish after.
        desired = {**self._registry.published(), **{name: info.path for name, info in self._wanted.items()}}
        report = await self.generator.sync_adapters(desired)
        failed = {name: report.failed_for(name) for name in self._wanted if report.failed_for(name)}
        if failed:
            raise EvalError("; ".join(f"adapter {n} failed to load: {why}" for n, why in failed.items()))
        self._loaded = True

    async def answer(self, item: QAItem, strategy: Strategy) -> Answer:
        started = time.perf_counter()
        options = RetrievalOptions(**self.request.retrieval(strategy))
        prepared = await self.pipeline.prepare_async(item.question, [], options, self.request.max_tokens)
        params = GenerationParams.defaults(self.settings.generation, max_tokens=self.request.max_tokens, temperature=0.0,
                                           seed=self.request.seed, model=strategy.adapter)
        completion = await self.pipeline.complete(prepared, params)
        ranked = ranked_documents(prepared.ledger.retrieved) if prepared.ledger is not None else None
        passages = {p.number: p.text for p in prepared.passages} if prepared.ledger is not None else None
        return Answer(completion.text, completion.prompt_tokens, completion.completion_tokens,
                      time.perf_counter() - started, ranked, prepared.index_version, passages, prepared.answerable)

    async def close(self) -> None:
        await self.generator.close()
        if self.judge is not None:
            await self.judge.close()


class Remote:
    """A running ragtune service, through POST /ask."""

    def __init__(self, url: str, request: Request, api_key: str | None, timeout: float):
        self.url, self.request = url.rstrip("/"), request
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    def describe(self) -> dict:
        return {"mode": "remote", "url": self.url, "model": getattr(self, "model", None)}

    async def _get(self, path: str) -> dict:
        try:
            response = await self.client.get(path)
        except httpx.HTTPError as exc:
            raise EvalError(f"cannot reach the service at {self.url}: {exc}") from None
        if response.status_code != 200:
            raise EvalError(f"{self.url}{path}: HTTP {response.status_code}: {_message(response)}")
        return response.json()

    async def start(self, strategies: list[Strategy]) -> None:
        models = [m["id"] for m in (await self._get("/v1/models"))["data"]]
        self.model = models[0] if models else None
        missing = sorted({s.adapter for s in strategies if s.adapter and s.adapter not in models})
        if missing:
            raise EvalError(f"the service at {self.url} does not serve {', '.join(missing)}: publish the adapter "
                            "(`ragtune adapters load NAME`) or evaluate in-process")

    async def use(self, strategy: Strategy) -> None:
        pass  # the service serves what is published

    async def answer(self, item: QAItem, strategy: Strategy) -> Answer:
        body = {"question": item.question, "max_tokens": self.request.max_tokens, "temperature": 0,
                "seed": self.request.seed, "filters": self.request.retrieval(strategy)}
        if strategy.adapter:
            body["model"] = strategy.adapter
        started = time.perf_counter()
        try:
            response = await self.client.post("/ask", json=body)
        except httpx.HTTPError as exc:
            raise EvalError(f"/ask failed for question {item.id!r}: {exc}") from None
        if response.status_code != 200:
            raise EvalError(f"/ask refused question {item.id!r}: HTTP {response.status_code}: {_message(response)}")
        data = response.json()
        ranked = ranked_documents(data["ledger"].get("retrieved", [])) if strategy.retrieval else None
        return Answer(data["answer"], data["usage"]["prompt_tokens"], data["usage"]["completion_tokens"],
                      time.perf_counter() - started, ranked, data.get("index_version"),
                      answerable=(data.get("ledger") or {}).get("answerable"))

    async def close(self) -> None:
        await self.client.aclose()


def _message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


def gold_documents(item: QAItem, ranked: list[str] | None, gold: GoldIndex | None) -> frozenset[str] | None:
    """The question's gold documents: from the index when we have it, else a doc_id matched
    against what was retrieved (a gold context cannot be matched without the index)."""
    if gold is not None:
        return gold.resolve(item)
    if item.doc_id:
        return frozenset({item.doc_id, *(d for d in ranked or () if doc_matches(d, item.doc_id))})
    return None


@dataclass
class Run:
    items: list[QAItem]
    strategies: list[Strategy]
    outcomes: dict[str, list[Outcome]]
    rows: list[dict]
    index_versions: set
    reused: int = 0  # answers found in the cache of an earlier run


async def evaluate(
    answerer: Answerer, items: list[QAItem], strategies: list[Strategy], gold: GoldIndex | None,
    decline_answer: str, advance: Callable[[str], None] = lambda _: None, cache: Path | None = None,
    setup: dict | None = None,
) -> Run:
    """Strategy by strategy (adapters loaded once, when first needed), question by question, in file order.
    `cache`: where answers are kept as they come, and found again by a run with the same setup
    (the answerer's description and `setup`)."""
    await answerer.start(strategies)
    answers = AnswerCache(cache, {**answerer.describe(), **(setup or {})}) if cache is not None else None
    rows = [{"id": q.id, "question": q.question, "answers": list(q.answers), "answerable": q.answerable,
             "gold_doc_ids": None, "results": {}} for q in items]
    outcomes: dict[str, list[Outcome]] = {s.name: [] for s in strategies}  # the order asked for
    versions = set()
    # Without adapters first: the base model then runs unwrapped, as the service runs it before any is loaded.
    for strategy in sorted(strategies, key=lambda s: s.adapter is not None):
        for item, row in zip(items, rows, strict=True):
            answer = answers.get(strategy.name, item) if answers else None
            if answer is None:
                await answerer.use(strategy)
                answer = await answerer.answer(item, strategy)
                if answers:
                    answers.put(strategy.name, item, answer)
            versions.add(answer.index_version)
            gold_ids = gold_documents(item, answer.ranked_doc_ids, gold)
            if gold_ids is not None and row["gold_doc_ids"] is None:
                row["gold_doc_ids"] = sorted(gold_ids)
            declined = declines(answer.text, decline_answer)
            outcome = Outcome(answer.text, list(item.answers), item.answerable, declined, answer.prompt_tokens,
                              answer.completion_tokens, answer.seconds, answer.ranked_doc_ids, gold_ids, answer.passages,
                              answer.answerable)
            outcomes[strategy.name].append(outcome)
            row["results"][strategy.name] = {
                "answer": answer.text,
                "exact_match": answer_score(outcome, exact_match),
                "f1": round(answer_score(outcome, token_f1), 4),
                "declined": declined,
                "answerable_check": answer.answerable,
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "ms": round(answer.seconds * 1000, 1),
                "retrieved": answer.ranked_doc_ids,
                "citation_correct": citation_correct(answer.text, answer.passages, list(item.answers))
                if answer.passages and item.answerable else None,
                "faithfulness": faithfulness(answer.text, answer.passages) if answer.passages and not declined else None,
            }
            advance(strategy.name)
    for row in rows:
        row["results"] = {s.name: row["results"][s.name] for s in strategies}
    return Run(items, strategies, outcomes, rows, versions - {None}, answers.reused if answers else 0)


def run(answerer: Answerer, *args, **kwargs) -> Run:
    async def main() -> Run:
        try:
            return await evaluate(answerer, *args, **kwargs)
        finally:
            await answerer.close()

    return asyncio.run(main())
