"""The answerability check (prompt.answerable_check): before answering from passages, the model is asked
whether the passages state the answer, and the answer is declined when its yes is not likely enough.

The judgement is the first token of the model's reply when ASK follows the answer's own prompt (its system
prompt, passages and question) as a user turn of its own: log P(yes) - log P(no), summed over the
spellings of each. Nothing is generated, and as the check's prompt starts with the answer's, a backend
that caches prefixes (OpenVINO GenAI and vLLM do by default) prefills the passages once for both: the
answer after the check costs its decoding alone. bench/answerability.py measures how well it separates.
"""

from __future__ import annotations

import math

from service.generation.base import Messages

ASK = "Do the passages above state the answer to this question? Reply Yes or No."
JUDGE_YES, JUDGE_NO = "Yes", "No"  # a judge adapter's targets (ragtune finetune train --judge)


def check_messages(messages: Messages) -> Messages:
    """The check's prompt: the answer's prompt unchanged, then ASK as a user turn of its own."""
    return [*messages, {"role": "user", "content": ASK}]


def yes_no_margin(top: list[tuple[str, float]]) -> float:
    """log P(yes) - log P(no) from the first token's likeliest (text, logprob) pairs. A side not among
    them counts as likely as the least likely one listed (an upper bound of its share)."""
    if not top:
        raise ValueError("no token log probabilities to judge from")
    floor = min(logprob for _, logprob in top)

    def mass(word: str) -> float:
        found = [logprob for text, logprob in top if text.strip().lower() == word]
        return _logsumexp(found) if found else floor

    return mass("yes") - mass("no")


# prompt.decline_below_similarity = auto: the floor measured for an embedder (by its name), on SQuAD with one
# article left out of the index (bench/RESULTS.md); an embedder not listed gets none.
MEASURED_FLOORS = {"sentence-transformers/all-MiniLM-L6-v2": 0.3}


def similarity_floor(setting: str | float, embedder_name: str) -> float | None:
    """What prompt.decline_below_similarity means for the embedder that built the index: None for off."""
    if setting == "off":
        return None
    if setting == "auto":
        return MEASURED_FLOORS.get(embedder_name)
    return float(setting)


def best_similarity(passages: list) -> float:
    """Retrieval's evidence: the best packed passage's similarity to the question (none packed: 0)."""
    return max((p.score for p in passages), default=0.0)


def score(margin: float, best: float, retrieval_weight: float) -> float:
    """What prompt.answerable_check compares: the model's margin plus retrieval_weight times best_similarity."""
    return margin + retrieval_weight * best


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
