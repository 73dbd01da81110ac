"""Answer and retrieval metrics, as pure functions.

Answer scoring follows the SQuAD evaluation script: citation markers ([1], [2, 3]) are
removed (the system prompt asks for them; they are not part of the answer), then text is
lower-cased, punctuation and the articles a/an/the are removed and whitespace collapsed;
exact match and token F1 take the best over the acceptable answers. An unanswerable question is
answered correctly by declining (SQuAD 2.0 counts an empty answer; a chat model says so
in words, so declining is recognised by phrase).
"""

from __future__ import annotations

import re
import statistics
import string
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CITATION = re.compile(r"\[\d+(?:\s*[,-]\s*\d+)*\]")
_PUNCTUATION = set(string.punctuation)
DECLINE_PATTERNS = (
    "i do not know", "i don't know", "i dont know", "do not contain", "does not contain", "don't contain",
    "not mentioned", "cannot answer", "can't answer", "no information", "not enough information",
    "passages do not say", "not provided",
)


def normalize(text: str) -> str:
    text = _CITATION.sub(" ", text)  # "Rollo [1]" is the answer "Rollo" with its source, as the prompt asks
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: list[str]) -> float:
    return float(any(normalize(prediction) == normalize(g) for g in golds))


def token_f1(prediction: str, golds: list[str]) -> float:
    def f1(gold: str) -> float:
        predicted, expected = normalize(prediction).split(), normalize(gold).split()
        common = sum((Counter(predicted) & Counter(expected)).values())
        if not predicted or not expected:
            return float(predicted == expected)
        if common == 0:
            return 0.0
        precision, recall = common / len(predicted), common / len(expected)
        return 2 * precision * recall / (precision + recall)

    return max((f1(g) for g in golds), default=0.0)


def contains_gold(prediction: str, golds: list[str]) -> float:
    text = normalize(prediction)
    return float(any(normalize(g) and normalize(g) in text for g in golds))


def declines(prediction: str, decline_answer: str) -> bool:
    text = prediction.lower().replace("’", "'")
    if not text.strip():
        return True  # an empty answer is SQuAD 2.0's way of declining
    own = normalize(decline_answer)
    return (own and own in normalize(prediction)) or any(p in text for p in DECLINE_PATTERNS)


def cited(answer: str) -> set[int]:
    """The passage numbers an answer cites: "[2]", "[1, 3]", "[2-4]"."""
    numbers: set[int] = set()
    for marker in _CITATION.findall(answer):
        for part in marker.strip("[]").split(","):
            bounds = [int(n) for n in part.split("-")]
            numbers.update(range(bounds[0], bounds[-1] + 1))
    return numbers


def citation_correct(answer: str, passages: dict[int, str], golds: list[str]) -> float | None:
    """1 when a passage the answer cites holds a gold answer, 0 when none does; None when it
    cites no passage that was in its prompt."""
    numbers = cited(answer) & set(passages)
    if not numbers:
        return None
    return float(any(contains_gold(passages[n], golds) for n in numbers))


def faithfulness(answer: str, passages: dict[int, str]) -> float | None:
    """The share of the answer's words found in the passages it was given (citations left out);
    None for an answer with no words."""
    words = normalize(answer).split()  # citations are not words
    if not words:
        return None
    given = set(normalize(" ".join(passages.values())).split())
    return sum(w in given for w in words) / len(words)


def reciprocal_rank(ranked_doc_ids: list[str], gold: Collection[str]) -> float:
    """1 / the rank of the first gold document (any of them), 0 when none was retrieved."""
    for rank, doc_id in enumerate(ranked_doc_ids, start=1):
        if doc_id in gold:
            return 1.0 / rank
    return 0.0


def recall_at(ranked_doc_ids: list[str], gold: Collection[str], k: int) -> float:
    """Whether a gold document is among the first k (a question has one gold passage)."""
    return float(any(doc_id in gold for doc_id in ranked_doc_ids[:k]))


@dataclass
class Outcome:
    """One question answered by one strategy."""

    answer: str
    golds: list[str]
    answerable: bool
    declined: bool
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    ranked_doc_ids: list[str] | None = None  # retrieval order, when the strategy retrieved
    gold_doc_ids: Collection[str] | None = None  # None: the question's gold document is unknown
    passages: dict[int, str] | None = None  # the prompt's passages by number (None: none, or not known)
    answerable_score: float | None = None  # the answerability check's score (None: it did not run)


@dataclass
class Summary:
    questions: int
    exact_match: float | None
    f1: float | None
    exact_match_answerable: float | None  # SQuAD 2.0's HasAns_exact: on answerable questions only
    f1_answerable: float | None  # HasAns_f1 (NoAns_exact is decline_rate)
    contains: float | None
    decline_rate: float | None  # on unanswerable questions: higher is better
    false_decline_rate: float | None  # on answerable questions: lower is better
    answerable_auc: float | None  # the answerability check's scores: chance that an answerable question scores higher
    recall_at_k: float | None
    mrr: float | None
    cites: float | None  # answerable questions whose answer cites a passage of its prompt
    citation_accuracy: float | None  # of those: the cited passage holds a gold answer
    faithfulness: float | None  # answers (not declines): share of their words found in their passages
    k: int
    prompt_tokens: float
    completion_tokens: float
    latency_p50_ms: float
    latency_p95_ms: float
    extra: dict = field(default_factory=dict)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else 0.0


def separation_auc(answerable: Collection[float], unanswerable: Collection[float]) -> float | None:
    """The chance that an answerable question scores higher than an unanswerable one (ties count half):
    how well a score tells them apart, whatever threshold is set on it. None without both kinds."""
    if not answerable or not unanswerable:
        return None
    wins = sum((a > u) + 0.5 * (a == u) for a in answerable for u in unanswerable)
    return wins / (len(answerable) * len(unanswerable))


def answer_score(o: Outcome, metric) -> float:
    """`metric` (exact_match, token_f1) on an answerable question; on an unanswerable one,
    SQuAD 2.0's rule: declining is the exact (and whole) answer."""
    return metric(o.answer, o.golds) if o.answerable else float(o.declined)


def summarize(outcomes: list[Outcome], k: int) -> Summary:
    answerable = [o for o in outcomes if o.answerable]
    unanswerable = [o for o in outcomes if not o.answerable]

    retrieved = [o for o in outcomes if o.ranked_doc_ids is not None and o.gold_doc_ids]
    with_passages = [o for o in outcomes if o.passages]
    citations = [c for o in with_passages if o.answerable if (c := citation_correct(o.answer, o.passages, o.golds)) is not None]
    faithful = [f for o in with_passages if not o.declined if (f := faithfulness(o.answer, o.passages)) is not None]
    return Summary(
        questions=len(outcomes),
        exact_match=_mean([answer_score(o, exact_match) for o in outcomes]),
        f1=_mean([answer_score(o, token_f1) for o in outcomes]),
        exact_match_answerable=_mean([exact_match(o.answer, o.golds) for o in answerable]),
        f1_answerable=_mean([token_f1(o.answer, o.golds) for o in answerable]),
        contains=_mean([contains_gold(o.answer, o.golds) for o in answerable]),
        decline_rate=_mean([float(o.declined) for o in unanswerable]),
        false_decline_rate=_mean([float(o.declined) for o in answerable]),
        answerable_auc=separation_auc([o.answerable_score for o in answerable if o.answerable_score is not None],
                                      [o.answerable_score for o in unanswerable if o.answerable_score is not None]),
        recall_at_k=_mean([recall_at(o.ranked_doc_ids, o.gold_doc_ids, k) for o in retrieved]),
        mrr=_mean([reciprocal_rank(o.ranked_doc_ids, o.gold_doc_ids) for o in retrieved]),
        cites=_mean([float(bool(cited(o.answer) & set(o.passages))) for o in with_passages if o.answerable]),
        citation_accuracy=_mean(citations),
        faithfulness=_mean(faithful),
        k=k,
        prompt_tokens=statistics.fmean(o.prompt_tokens for o in outcomes) if outcomes else 0.0,
        completion_tokens=statistics.fmean(o.completion_tokens for o in outcomes) if outcomes else 0.0,
        latency_p50_ms=_percentile([o.seconds * 1000 for o in outcomes], 0.5),
        latency_p95_ms=_percentile([o.seconds * 1000 for o in outcomes], 0.95),
    )
