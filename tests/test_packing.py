"""Token budget with the generation model's real tokenizer and a small context window."""

from __future__ import annotations

import json

import pytest

from ragtune.settings import GenerationSettings, PromptSettings
from service.packing import Packer, PromptTooLong, _overlap_join, lost_in_the_middle
from service.retrieval import Hit, Retriever

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generator():
    from service.generation.local import LocalGenerator

    return LocalGenerator(GenerationSettings(context_window=512))


@pytest.fixture
def retriever(ingestor, settings, squad, tmp_path, embedder):
    records = [{"id": f"{a['title']}-{i}", "text": p["context"]} for a in squad["data"][:1] for i, p in enumerate(a["paragraphs"])]
    (tmp_path / "normans.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    ingestor.ingest([str(tmp_path / "normans.jsonl")], settings.index.dir, root=tmp_path)
    return Retriever(settings.index.dir, settings.index, embedder, 0)


def test_overlapping_neighbour_chunks_join_without_repeating_text():
    assert _overlap_join("One. Two. Three.", "Three. Four.") == "One. Two. Three. Four."
    assert _overlap_join("Alpha.", "Beta.") == "Alpha. Beta."


def test_lost_in_the_middle_puts_the_best_at_both_ends():
    assert lost_in_the_middle([1, 2, 3, 4, 5]) == [1, 3, 5, 4, 2]
    assert lost_in_the_middle([1, 2]) == [1, 2]


@pytest.mark.parametrize("answer_tokens", [64, 200, 350])
def test_prompt_never_exceeds_the_window_and_the_ledger_adds_up(generator, retriever, answer_tokens):
    packer = Packer(PromptSettings(), generator)
    hits, below = retriever.search("Who was the Norman leader in Italy?", 10)
    messages, passages, ledger = packer.pack("Who was the Norman leader in Italy?", [], hits, below, answer_tokens)
    total = generator.count_chat_tokens(messages)
    assert total == ledger.prompt_tokens <= 512 - answer_tokens
    assert ledger.prompt_tokens == ledger.base_tokens + sum(p["tokens"] for p in ledger.packed) + ledger.join_tokens
    assert abs(ledger.join_tokens) <= len(passages) + 1
    accounted = {i for p in ledger.packed for i in p["chunk_ids"]} | {d["chunk_id"] for d in ledger.dropped}
    assert accounted == {r["chunk_id"] for r in ledger.retrieved}
    if answer_tokens == 350:
        assert any(d["reason"] == "budget" for d in ledger.dropped)
    # Numbered in the order shown; the most relevant first, the second most relevant last.
    assert [p.number for p in passages] == list(range(1, len(passages) + 1))
    if len(passages) >= 2:
        by_score = sorted(passages, key=lambda p: -p.score)
        assert passages[0] is by_score[0] and passages[-1] is by_score[1]
    user = messages[-1]["content"]
    for p in passages:
        assert f"[{p.number}]" in user


def test_a_question_too_long_for_the_window_is_refused(generator, retriever):
    packer = Packer(PromptSettings(), generator)
    question = "why " * 600
    with pytest.raises(PromptTooLong, match="shorten"):
        packer.pack(question, [], [], [], 64)


def test_duplicate_chunks_are_dropped_with_a_reason(generator, retriever):
    packer = Packer(PromptSettings(), generator)
    hits, _ = retriever.search("Normans", 3)
    duplicate = Hit(hits[0].chunk, hits[0].score - 0.01, 4)
    _, passages, ledger = packer.pack("Normans?", [], hits + [duplicate], [], 64)
    assert {"chunk_id": hits[0].chunk.id, "score": round(duplicate.score, 4), "reason": "duplicate", "of": hits[0].chunk.id} in ledger.dropped


# Texts where a tokenizer could join or split differently at a newline: trailing spaces and
# tabs, blank lines, CRLF, contractions and digits after a newline, non-ASCII, a special
# token's text inside a message, and a message that starts or ends with newlines.
AWKWARD = [
    "ends with spaces   \nand a tab\t\nthen\n\n\nthree blank lines",
    "Windows\r\nline\r\n\r\nendings.\r\n",
    "\n's and 't after a newline\n've\n1066\n2024.\n(1)\n[2]\n",
    "naïve café\n日本語のテキスト。\n🙂 emoji\n\u00a0no-break space\n",
    "a literal <|im_end|>\nin the text\n<|im_start|>user\nspoofed",
    "",
    "\n\nstarts and ends with newlines\n\n",
    "def f(x):\n    return x  \n\n\tindented\n        more\n",
    # runs of newlines before text, cut before their last newline
    "Passages:\n\n\n\nQuestion: after four newlines?",
    "x\n\n\n\n\n\n1066 digits\n\n's\n\n\n-dash\n\n😀\n\n\n日本\n\n<|im_end|>\n\n\n",
    "x\n\n\u00a0no-break\n\n\u3000ideographic\n\n\u2028line separator\n\n\x0cform feed\n\n\x1cfile sep",
    "\n\n\n\nstarts with a run\n\r\n\nmixed\r\n\r\nruns",
]


def test_the_prompt_count_is_the_chat_templates_own_tokenization(generator, squad):
    """What packing counts is what the model is given: apply_chat_template's own ids, on real
    passages and on awkward texts; passages counted alone, as candidates, as the tokenizer does."""
    contexts = [p["context"] for a in squad["data"] for p in a["paragraphs"]][:24]
    prompts = [
        [{"role": "system", "content": "Answer from the passages; cite them as [1]."},
         {"role": "user", "content": PromptSettings().context_template.format(
             passages="\n\n".join(f"[{n}] Normans\n{c}" for n, c in enumerate(contexts[i : i + 4], 1)),
             question=AWKWARD[i // 4])},
         {"role": "assistant", "content": "In 1066 [2]."}, {"role": "user", "content": contexts[i][:80]}]
        for i in range(0, len(contexts), 4)
    ] + [[{"role": "user", "content": text}, {"role": "assistant", "content": text}, {"role": "user", "content": text}] for text in AWKWARD]
    for messages in prompts:
        reference = generator.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert generator.tokens.prompt_ids(messages) == reference["input_ids"]
        assert generator.count_chat_tokens(messages) == len(reference["input_ids"]), messages
    for text in AWKWARD + contexts:
        assert generator.count_text_tokens([text]) == [len(generator.tokenizer(text, add_special_tokens=False)["input_ids"])]
