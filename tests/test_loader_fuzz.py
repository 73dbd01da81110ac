"""A corpus of mutated real files (truncated, bit-flipped, spliced, hostile by construction):
every file either loads or is refused with a LoadError that says why, and an ingest of them
all commits the good files and reports each bad one with its reason."""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path

import pytest

from indexer.loaders import LoadError, load_file
from ragtune.settings import RecordSettings

SEED = 20261126


def real_files() -> dict[str, bytes]:
    """One real file of each type, written by its format's own library."""
    import docx
    from fpdf import FPDF

    pdf = FPDF()
    for page in range(2):
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.multi_cell(0, 8, f"Page {page + 1}. The harbour master keeps the tide tables. " * 4)
    document = docx.Document()
    document.add_heading("Tides", level=1)
    document.add_paragraph("Spring tides come twice a month.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "high", "6.1 m"
    buffer = io.BytesIO()
    document.save(buffer)
    return {
        "tides.pdf": bytes(pdf.output()),
        "tides.docx": buffer.getvalue(),
        "tides.html": b"<html><head><title>Tides</title></head><body><h1>Tides</h1><p>Neap tides are weak.</p>"
                      b"<ul><li>one</li><li>two</li></ul><table><tr><td>a</td></tr></table></body></html>",
        "tides.json": json.dumps([{"id": i, "title": "Tide", "text": f"Record {i} about tides.", "n": i} for i in range(3)]).encode(),
        "tides.jsonl": "\n".join(json.dumps({"id": i, "text": f"Line {i} about tides."}) for i in range(3)).encode(),
        "tides.md": b"# Tides\n\n## Spring\n\nTwice a month.\n\n```\ncode\n```\n",
        "tides.rst": b"Tides\n=====\n\nSpring\n------\n\nTwice a month.\n\n.. note:: careful\n",
        "tides.txt": "Tides rise and fall.\n\nTwice a day, mostly. Ünïcode too.".encode(),
    }


def mutants(name: str, data: bytes, rng: random.Random, count: int) -> list[bytes]:
    out = [data[: len(data) * k // 8] for k in range(1, 8)]  # truncations
    while len(out) < count:
        mutated = bytearray(data)
        kind = rng.randrange(4)
        if kind == 0:  # flip bytes
            for _ in range(rng.randint(1, 12)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        elif kind == 1:  # cut a slice out
            start = rng.randrange(len(mutated))
            del mutated[start : start + rng.randint(1, 200)]
        elif kind == 2:  # splice random bytes in
            start = rng.randrange(len(mutated))
            mutated[start:start] = rng.randbytes(rng.randint(1, 64))
        else:  # duplicate a slice
            start = rng.randrange(len(mutated))
            mutated[start:start] = mutated[start : start + rng.randint(1, 300)]
        out.append(bytes(mutated))
    return out


def hostile() -> dict[str, bytes]:
    """Files built to hurt a parser: deep nesting, decompression bombs, damaged containers."""
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", b"<Types" + b" " * 50_000_000 + b"/>")
    damaged_docx = io.BytesIO()
    with zipfile.ZipFile(damaged_docx, "w") as z:
        z.writestr("[Content_Types].xml", b"<?xml version='1.0'?><Types><Default Extension='xml'")
        z.writestr("word/document.xml", b"<w:document")
    return {
        "deep.json": b"[" * 200_000 + b"]" * 200_000,
        "deep.jsonl": b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "deep.html": b"<div>" * 100_000 + b"text" + b"</div>" * 100_000,
        "deep.md": b"> " * 50_000 + b"quote",
        "bomb.docx": bomb.getvalue(),
        "damaged.docx": damaged_docx.getvalue(),
        "nul.txt": b"text\x00" * 100,
        "latin1.md": "café".encode("latin-1"),
        "empty.pdf": b"%PDF-1.7\n%%EOF",
        "loop.pdf": b"%PDF-1.4\n1 0 obj<</Type/Pages/Kids[1 0 R]/Count 1>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF",
    }


def corpus() -> list[tuple[str, bytes]]:
    rng = random.Random(SEED)
    files = [(name, data) for name, data in real_files().items()]
    for name, data in real_files().items():
        files += [(f"m{i}-{name}", m) for i, m in enumerate(mutants(name, data, rng, 120))]
    return files + list(hostile().items())


@pytest.mark.slow
def test_every_mutated_file_loads_or_is_refused_with_a_reason():
    outcomes = {"loaded": 0, "refused": 0}
    files = corpus()
    assert len(files) > 950
    for name, data in files:
        try:
            documents, warnings = load_file(Path(name), data, name, RecordSettings())
        except LoadError as exc:
            assert str(exc).strip(), name
            outcomes["refused"] += 1
            continue
        assert all(block.text.strip() for document in documents for block in document.blocks), name
        outcomes["loaded"] += 1
    assert outcomes["loaded"] > 100 and outcomes["refused"] > 100, outcomes


@pytest.mark.slow
def test_an_ingest_of_good_and_crafted_files_commits_the_good_ones(tmp_path, ingestor, settings):
    from indexer.snapshot import IndexSnapshot

    folder = tmp_path / "corpus"
    folder.mkdir()
    good = real_files()
    for name, data in good.items():
        (folder / name).write_bytes(data)
    for name, data in hostile().items():
        (folder / name).write_bytes(data)
    rng = random.Random(SEED)
    for name, data in good.items():
        for i, mutated in enumerate(mutants(name, data, rng, 12)[-5:]):
            (folder / f"m{i}-{name}").write_bytes(mutated)
    settings.index.max_file_bytes = 4 * 2**20
    (folder / "huge.txt").write_bytes(b"word " * (1_000_000))  # 5 MB: over the limit set above

    report = ingestor.ingest([str(folder)], settings.index.dir)
    names = {Path(p).name for p in report.added} | {Path(p).name: r for p, r in report.skipped}.keys()
    assert names == {p.name for p in folder.iterdir()}, "every file is either indexed or reported"
    assert all(reason.strip() for _, reason in report.skipped)
    assert set(good) <= {Path(p).name for p in report.added}
    assert set(hostile()) - {"deep.html"} <= {Path(p).name for p, _ in report.skipped}  # lxml caps the nesting: its text loads
    assert any("max_file_bytes" in reason for p, reason in report.skipped if p.endswith("huge.txt"))
    texts = " ".join(c.text for c in IndexSnapshot(settings.index.dir).all_chunks())
    for phrase in ("harbour master", "Spring tides", "Neap tides", "Record 2 about tides", "Line 1 about tides", "Tides rise"):
        assert phrase in texts


@pytest.mark.slow
def test_a_long_single_line_is_chunked_in_linear_time(tmp_path, embedder):
    """One 4 MB line, twice as long as another: about twice the time, not four times."""
    import time

    from indexer.chunking import Chunker
    from ragtune.settings import ChunkingSettings

    chunker = Chunker(embedder.tokenizer, embedder.max_text_tokens, ChunkingSettings())
    seconds = []
    for megabytes in (2, 4):
        line = ("tide " * (megabytes * 200_000)).encode()
        (document,), _ = load_file(Path("line.txt"), line, "line", RecordSettings())
        started = time.perf_counter()
        chunks = chunker.chunk(document)
        seconds.append(time.perf_counter() - started)
        assert all(c.token_count <= 200 and len(c.text) <= 200 * 12 for c in chunks)
    assert seconds[1] < 3 * seconds[0], seconds
    nonspace = load_file(Path("x.txt"), b"x" * 1_000_000, "x", RecordSettings())[0][0]
    assert max(len(c.text) for c in chunker.chunk(nonspace)) <= 200 * 12  # one [UNK] token, not one 1 MB chunk
