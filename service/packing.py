"""Prompt assembly under a token budget, counted with the generation model's tokenizer.

budget = context window - reserved answer tokens - (system prompt + template + history +
question). Passages enter by relevance; duplicates are dropped and neighbouring chunks of
one document merged; the passage that no longer fits is trimmed at a sentence boundary or
dropped. The most relevant passages go first and last ("Lost in the Middle", arXiv
2307.03172) and are numbered in the order shown, so answers can cite [1], [2]. The final
prompt is counted whole, and passages are dropped until it fits: the budget is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from service.generation.base import Messages, TokenCounter
from service.retrieval import Hit
from ragtune.errors import ContextLengthExceeded
from ragtune.settings import PromptSettings

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MIN_TRIMMED_TOKENS = 24  # a trimmed passage shorter than this is not worth its header


class PromptTooLong(ContextLengthExceeded):
    """The question and history alone do not fit the model's context window."""


def over_window(window: int, prompt: int, answer: int, fix: str) -> str:
    """A prompt over the window, worded as OpenAI and vLLM word it: clients (litellm's context-window
    fallbacks, LangChain's trimming) recognise the error by these words."""
    return (f"This model's maximum context length is {window} tokens. However, you requested {prompt + answer} tokens "
            f"({prompt} in the messages, {answer} in the completion). Please reduce the length of the messages or "
            f"completion: {fix}.")


@dataclass
class Passage:
    hits: list[Hit]  # first = the most relevant; more when neighbouring chunks were merged
    text: str
    number: int = 0
    tokens: int = 0
    trimmed: bool = False

    @property
    def score(self) -> float:
        return self.hits[0].score

    @property
    def chunk(self):
        return self.hits[0].chunk


@dataclass
class Ledger:
    context_window: int
    reserved_answer_tokens: int
    base_tokens: int  # system prompt, template, history and question, without passages
    budget: int
    retrieved: list[dict] = field(default_factory=list)
    packed: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    prompt_tokens: int = 0
    demonstrations: int = 0  # few-shot pairs shown (earlier turns), counted in base_tokens
    demonstration_tokens: int = 0
    dropped_turns: int = 0  # the conversation's oldest messages, left out so passages keep their floor
    query: str | None = None  # what retrieval searched with (a follow-up made standalone, or the question)
    collection: str | None = None  # which collection it searched

    @property
    def join_tokens(self) -> int:
        """Tokens the final count differs from base + passages (joins between pieces)."""
        return self.prompt_tokens - self.base_tokens - sum(p["tokens"] for p in self.packed)


def _overlap_join(first: str, second: str) -> str:
    """first + second without the text they share (chunks overlap by whole sentences)."""
    for size in range(min(len(first), len(second)), 0, -1):
        if first.endswith(second[:size]):
            return first + second[size:]
    return f"{first} {second}"


def retrieved_entry(hit: Hit) -> dict:
    entry = {"chunk_id": hit.chunk.id, "doc_id": hit.chunk.doc_id, "score": round(hit.score, 4)}
    if hit.dense_rank is not None or hit.lexical_rank is not None:  # hybrid: where each ranking put it
        entry.update(dense_rank=hit.dense_rank, lexical_rank=hit.lexical_rank)
    return entry


def lost_in_the_middle(items: list) -> list:
    """[r1, r2, r3, r4, r5] (by relevance) -> [r1, r3, r5, r4, r2]: best at both ends."""
    return items[0::2] + items[1::2][::-1]


def prompt_messages(
    prompt: PromptSettings, question: str, passages: list[str] | None, history: Messages = (), system: str | None = None,
    tail: Messages = (),
) -> Messages:
    """The chat a model gets, served or trained on: the system prompt and the question with its
    formatted passages (`None`: no retrieval, the question alone), after the history; `tail`
    (tool calls and their results) after the question."""
    if passages is None:
        user = question
    else:
        user = prompt.context_template.format(passages="\n\n".join(passages), question=question)
    instructions = prompt.system_prompt if passages is not None else None
    system_text = "\n\n".join(s for s in (system, instructions) if s)
    head = [{"role": "system", "content": system_text}] if system_text else []
    return [*head, *history, {"role": "user", "content": user}, *tail]


class Packer:
    def __init__(self, prompt: PromptSettings, counter: TokenCounter):
        self.prompt = prompt
        self.counter = counter

    def _format(self, passage: Passage, number: int, text: str | None = None) -> str:
        chunk = min((h.chunk for h in passage.hits), key=lambda c: c.position)  # where the text starts
        title = chunk.context or chunk.title or chunk.source_id.rsplit("/", 1)[-1]
        return self.prompt.passage_template.format(
            number=number, title=title, text=text if text is not None else passage.text, source=chunk.source_id
        )

    def check_fits(self, messages: Messages, answer_tokens: int) -> int:
        """The prompt's tokens, if it fits the window with `answer_tokens` to spare; else PromptTooLong."""
        window = self.counter.context_window
        tokens = self.counter.count_chat_tokens(messages)
        if tokens + answer_tokens > window:
            raise PromptTooLong(over_window(window, tokens, answer_tokens, "shorten the conversation or lower max_tokens"),
                                param="messages")
        return tokens

    def fit_history(
        self, question: str, history: Messages, system: str | None, answer_tokens: int, tail: Messages, floor: int,
    ) -> tuple[Messages, int]:
        """The history without its oldest exchanges, as many as must go for the rest of the prompt to
        leave `floor` tokens (for passages) besides the answer's reserve: (history, messages dropped)."""
        room = self.counter.context_window - answer_tokens - floor
        dropped = 0
        while history and self.counter.count_chat_tokens(self.messages(question, history, [], system, tail)) > room:
            history = history[1:]
            dropped += 1
            while history and history[0]["role"] != "user":  # whole exchanges: never start on an answer
                history = history[1:]
                dropped += 1
        return history, dropped

    def messages(
        self, question: str, history: Messages, passages: list[Passage] | None, system: str | None = None, tail: Messages = (),
    ) -> Messages:
        """The chat sent to the model. `passages=None`: no retrieval; `[]`: the template, empty."""
        shown = None if passages is None else [self._format(p, p.number) for p in passages]
        return prompt_messages(self.prompt, question, shown, history, system, tail)

    def _merge(self, hits: list[Hit], ledger: Ledger) -> list[Passage]:
        passages: list[Passage] = []
        seen_hashes: dict[str, int] = {}
        for hit in hits:
            chunk = hit.chunk
            if chunk.content_hash in seen_hashes:
                ledger.dropped.append({"chunk_id": chunk.id, "score": round(hit.score, 4), "reason": "duplicate", "of": seen_hashes[chunk.content_hash]})
                continue
            seen_hashes[chunk.content_hash] = chunk.id
            for passage in passages:
                positions = [h.chunk.position for h in passage.hits]
                if passage.chunk.doc_id == chunk.doc_id and chunk.position in (min(positions) - 1, max(positions) + 1):
                    if chunk.position < min(positions):
                        passage.text = _overlap_join(chunk.text, passage.text)
                    else:
                        passage.text = _overlap_join(passage.text, chunk.text)
                    passage.hits.append(hit)
                    break
            else:
                passages.append(Passage([hit], chunk.text))
        return passages

    def _trim(self, passage: Passage, room: int) -> bool:
        """Cut the passage at a sentence boundary to fit `room` tokens; False if too little fits."""
        sentences = _SENTENCE_END.split(passage.text)
        while len(sentences) > 1:
            sentences.pop()
            text = " ".join(sentences)
            tokens = self.counter.count_text_tokens([self._format(passage, 99, text) + "\n\n"])[0]
            if tokens <= room:
                if tokens < MIN_TRIMMED_TOKENS:
                    return False
                passage.text, passage.tokens, passage.trimmed = text, tokens, True
                return True
        return False

    def _with_demonstrations(
        self, question: str, history: Messages, system: str | None, answer_tokens: int, demonstrations: list,
        tail: Messages = (),
    ) -> tuple[Messages, int, int, int]:
        """History with as many few-shot turns in front as take at most half of the budget the
        question leaves (least similar dropped first): (history, its base tokens, pairs, their tokens)."""
        base = self.counter.count_chat_tokens(self.messages(question, history, [], system, tail))
        room = self.counter.context_window - answer_tokens - base
        demos = list(demonstrations)
        while demos:
            turns = [t for q, a in demos for t in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
            with_demos = self.counter.count_chat_tokens(self.messages(question, turns + history, [], system, tail))
            if with_demos - base <= room // 2:
                return turns + history, with_demos, len(demos), with_demos - base
            demos.pop()
        return history, base, 0, 0

    def pack(
        self, question: str, history: Messages, hits: list[Hit], below_score: list[Hit],
        answer_tokens: int, system: str | None = None, demonstrations: list[tuple[str, str]] = (), tail: Messages = (),
    ) -> tuple[Messages, list[Passage], Ledger]:
        window = self.counter.context_window
        floor = min(self.prompt.min_passage_tokens, max(0, window - answer_tokens) // 2)
        history, dropped_turns = self.fit_history(question, history, system, answer_tokens, tail, floor)
        # Everything but the passages: system prompt, demonstrations, history, question, and the template.
        history, base, shown, demo_tokens = self._with_demonstrations(
            question, history, system, answer_tokens, demonstrations, tail
        )
        ledger = Ledger(window, answer_tokens, base, window - answer_tokens - base)
        ledger.demonstrations, ledger.demonstration_tokens = shown, demo_tokens
        ledger.dropped_turns = dropped_turns
        ledger.retrieved = [retrieved_entry(h) for h in hits + below_score]
        ledger.dropped += [{"chunk_id": h.chunk.id, "score": round(h.score, 4), "reason": "below_score"} for h in below_score]
        if window - answer_tokens - base < 0:
            raise PromptTooLong(over_window(window, base, answer_tokens, "the question and conversation alone are "
                                            "over it; shorten them or lower max_tokens"), param="messages")
        chosen: list[Passage] = []
        used = 0
        candidates = self._merge(hits, ledger)
        counts = self.counter.count_text_tokens([self._format(p, 99) + "\n\n" for p in candidates])  # one batch
        for passage, tokens in zip(candidates, counts, strict=True):
            passage.tokens = tokens
        for index, passage in enumerate(candidates):
            if used + passage.tokens <= ledger.budget or self._trim(passage, ledger.budget - used):
                chosen.append(passage)
                used += passage.tokens
                continue
            for rest in candidates[index:]:
                ledger.dropped += [{"chunk_id": h.chunk.id, "score": round(h.score, 4), "reason": "budget"} for h in rest.hits]
            break
        while True:
            ordered = lost_in_the_middle(chosen)
            for number, passage in enumerate(ordered, start=1):
                passage.number = number
            messages = self.messages(question, history, ordered, system, tail)
            total = self.counter.count_chat_tokens(messages)
            if total <= window - answer_tokens or not chosen:
                break
            last = chosen.pop()  # the least relevant goes first
            ledger.dropped += [{"chunk_id": h.chunk.id, "score": round(h.score, 4), "reason": "budget"} for h in last.hits]
        ledger.prompt_tokens = total
        ledger.packed = [
            {"number": p.number, "chunk_ids": [h.chunk.id for h in p.hits], "score": round(p.score, 4),
             "tokens": p.tokens, "trimmed": p.trimmed}
            for p in ordered
        ]
        return messages, ordered, ledger
