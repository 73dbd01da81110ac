"""Retrieved few-shot demonstrations: nearest QA pairs as earlier turns, inside the token budget."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generator():
    from ragtune.settings import GenerationSettings
    from service.generation.local import LocalGenerator

    return LocalGenerator(GenerationSettings())


@pytest.fixture
def qa_file(tmp_path, squad):
    rows = [{"question": qa["question"], "answers": [a["text"] for a in qa["answers"]], "article": a_["title"]}
            for a_ in squad["data"] for p in a_["paragraphs"] for qa in p["qas"] if qa["answers"]]
    path = tmp_path / "demos.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path, {r["question"]: r["article"] for r in rows}


def pipeline(settings, embedder, generator, squad_index, qa_file, **fewshot):
    from service.pipeline import build_pipeline

    settings.index.dir = squad_index
    settings.fewshot = settings.fewshot.model_copy(update={"file": qa_file, **fewshot})
    return build_pipeline(settings, embedder, generator)


def demo_turns(messages):
    """The (question, answer) pairs shown before the real question."""
    turns = [m for m in messages if m["role"] in ("user", "assistant")][:-1]
    return [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns), 2)]


def test_the_nearest_pairs_are_shown_before_the_question(settings, embedder, generator, squad_index, qa_file):
    path, article_of = qa_file
    rag = pipeline(settings, embedder, generator, squad_index, path, k=3)
    question = next(q for q, article in article_of.items() if article == "Normans")
    prepared = rag.prepare(question, [], None, 100)
    shown = demo_turns(prepared.messages)
    assert len(shown) == 3 and prepared.ledger.demonstrations == 3 and prepared.ledger.demonstration_tokens > 0
    assert question not in [q for q, _ in shown]  # its own answer never leaks in
    assert sum(article_of[q] == "Normans" for q, _ in shown) >= 2  # nearest: about the same subject
    assert prepared.messages[-1]["role"] == "user" and question in prepared.messages[-1]["content"]
    assert prepared.ledger.prompt_tokens == generator.count_chat_tokens(prepared.messages) <= 2048 - 100


def test_demonstrations_take_at_most_half_the_room_the_question_leaves(settings, embedder, squad_index, qa_file):
    from ragtune.settings import GenerationSettings
    from service.generation.local import LocalGenerator

    small = LocalGenerator(GenerationSettings(context_window=400))
    rag = pipeline(settings, embedder, small, squad_index, qa_file[0], k=6)
    question = "What is the original meaning of the word Norman?"
    prepared = rag.prepare(question, [], None, 100)
    ledger = prepared.ledger
    assert 0 < ledger.demonstrations < 6  # some dropped for the budget
    room_without = 400 - 100 - (ledger.base_tokens - ledger.demonstration_tokens)
    assert ledger.demonstration_tokens <= room_without // 2
    assert ledger.prompt_tokens == small.count_chat_tokens(prepared.messages) <= 400 - 100


def test_off_unless_asked_and_a_request_can_turn_it_down(settings, embedder, generator, squad_index, qa_file):
    from ragtune.errors import UsageError
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    rag = pipeline(settings, embedder, generator, squad_index, qa_file[0], k=2)
    question = "Who was the duke in the battle of Hastings?"
    assert len(demo_turns(rag.prepare(question, [], RetrievalOptions(fewshot_k=0), 100).messages)) == 0
    assert len(demo_turns(rag.prepare(question, [], RetrievalOptions(fewshot_k=4), 100).messages)) == 4

    settings.fewshot = settings.fewshot.model_copy(update={"file": None})
    plain = build_pipeline(settings, embedder, generator)
    assert demo_turns(plain.prepare(question, [], None, 100).messages) == []
    with pytest.raises(UsageError, match="RAGTUNE_FEWSHOT__FILE"):
        plain.prepare(question, [], RetrievalOptions(fewshot_k=2), 100)
