"""Chunking with the embedder's real tokenizer: limits, boundaries, overlap, headings."""

from __future__ import annotations

import re

import pytest

from indexer.chunking import Chunker
from indexer.loaders import Block, Document
from ragtune.settings import ChunkingSettings


def sentences(n: int, start: int = 0) -> list[str]:
    return [f"Sentence number {i} says that the {i}th widget weighs {i * 7} grams." for i in range(start, start + n)]


def tokens(embedder, text: str) -> int:
    return len(embedder.tokenizer(text, add_special_tokens=True)["input_ids"])


@pytest.fixture
def chunker(embedder):
    return Chunker(embedder.tokenizer, embedder.max_text_tokens, ChunkingSettings(chunk_tokens=60, overlap_tokens=20))


def test_chunks_fit_the_model_and_lose_no_sentence(chunker, embedder):
    text = " ".join(sentences(40))
    chunks = chunker.chunk(Document("d", [Block(text)]))
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.token_count <= 60
        assert chunk.token_count == tokens(embedder, chunk.embedding_input) - 2
        assert tokens(embedder, chunk.embedding_input) <= embedder.max_seq_length
        assert chunk.text.endswith("grams.")  # cut at sentence ends
    joined = " ".join(c.text for c in chunks)
    for sentence in sentences(40):
        assert sentence in joined
    assert [c.position for c in chunks] == list(range(len(chunks)))


def test_consecutive_chunks_overlap_by_whole_sentences(chunker):
    chunks = chunker.chunk(Document("d", [Block(" ".join(sentences(20)))]))
    for before, after in zip(chunks, chunks[1:]):
        first_of_next = re.match(r".*?grams\.", after.text).group(0)
        assert first_of_next in before.text


def test_a_sentence_longer_than_a_chunk_is_cut_at_token_edges(chunker, embedder):
    words = " ".join(f"word{i}" for i in range(300))  # one "sentence", far past 60 tokens
    chunks = chunker.chunk(Document("d", [Block(words)]))
    assert len(chunks) > 3
    assert all(c.token_count <= 60 for c in chunks)
    assert "word0" in chunks[0].text and "word299" in chunks[-1].text


def test_headings_are_metadata_and_embedding_context(chunker):
    doc = Document("d", [Block("Install with pip.", ("Guide", "Setup")), Block("Call run().", ("Guide", "Use"))], title="Guide")
    chunks = chunker.chunk(doc)
    assert [(c.text, c.headings, c.context) for c in chunks] == [
        ("Install with pip.", ("Guide", "Setup"), "Guide > Setup"),
        ("Call run().", ("Guide", "Use"), "Guide > Use"),
    ]
    assert chunks[0].embedding_input == "Guide > Setup\nInstall with pip."


def test_paragraphs_of_one_section_share_a_chunk(chunker):
    doc = Document("d", [Block("Short one."), Block("Short two.")])
    (chunk,) = chunker.chunk(doc)
    assert chunk.text == "Short one.\n\nShort two."


def test_chunk_size_above_the_model_limit_is_refused(embedder):
    with pytest.raises(ValueError, match="silently truncated"):
        Chunker(embedder.tokenizer, embedder.max_text_tokens, ChunkingSettings(chunk_tokens=300, overlap_tokens=10))


def test_overlap_must_stay_below_half_a_chunk():
    with pytest.raises(ValueError, match="overlap"):
        ChunkingSettings(chunk_tokens=100, overlap_tokens=60)
