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


def inflating_pdf(chars: int) -> bytes:
    """A PDF of a few kilobytes whose one compressed content stream holds `chars` characters of text."""
    import zlib

    text = ("(" + "tide " * 200 + ") Tj T* ") * (chars // 1000)
    stream = zlib.compress(f"BT /F1 10 Tf 72 720 Td 12 TL {text} ET".encode(), 9)
    objects = [b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
               b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]/Resources<</Font<</F1 5 0 R>>>>/Contents 4 0 R>>",
               b"<</Length %d/Filter/FlateDecode>>stream\n" % len(stream) + stream + b"\nendstream",
               b"<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return bytes(out + b"trailer<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))


def many_paragraphs_docx(paragraphs: int) -> bytes:
    """A .docx written by hand (python-docx builds one this size for minutes): one body of `paragraphs`
    one-letter paragraphs, a few dozen kilobytes zipped."""
    main = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
    namespace = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    relation = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
                   'content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
                   f'relationships+xml"/><Override PartName="/word/document.xml" ContentType="{main}"/></Types>')
        z.writestr("_rels/.rels", '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/'
                   f'2006/relationships"><Relationship Id="r1" Type="{relation}" Target="word/document.xml"/></Relationships>')
        z.writestr("word/document.xml", f'<?xml version="1.0"?><w:document xmlns:w="{namespace}"><w:body>'
                   + "<w:p><w:r><w:t>x</w:t></w:r></w:p>" * paragraphs + "</w:body></w:document>")
    return buffer.getvalue()


def amplifying() -> dict[str, bytes]:
    """Files far smaller than what they cost to parse: inside index.max_file_bytes, over the rest."""
    nested = "".join("  " * depth + f"- item {depth}\n\n" for depth in range(40))
    return {
        "inflating.pdf": inflating_pdf(2_000_000),  # ~6 KB: two million characters of text
        "paragraphs.docx": many_paragraphs_docx(200_000),  # python-docx takes minutes over it
        "nested.rst": (nested * 4_500).encode(),  # 9 MB of nested lists: docutils takes a minute and ~0.8 GB
        "long.txt": b"word " * 600_000,  # 3 MB of plain text
        "bad-record.jsonl": b'{"id": "ok", "text": "A good record about tides."}\n{"id": "bad", "text": "bad \\ud800"}\n'
                            b'{"id": "bad\\udfff", "text": "a bad id"}\n',
    }


@pytest.mark.slow
def test_files_that_amplify_are_skipped_within_the_limits_and_memory_stays_flat(tmp_path, ingestor, settings):
    """Each file is parsed in a worker within index.max_file_chars, max_parse_seconds and
    max_parse_memory_bytes; the ingesting process does not grow with what the files cost."""
    import time

    import psutil

    from indexer.snapshot import IndexSnapshot

    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, data in {**amplifying(), "good.md": b"# Tides\n\nSpring tides come twice a month."}.items():
        (folder / name).write_bytes(data)
    settings.index.max_file_chars, settings.index.max_parse_seconds = 1_000_000, 5
    settings.index.max_parse_memory_bytes = 512 * 2**20
    process = psutil.Process()
    before = process.memory_info().rss
    started = time.perf_counter()
    report = ingestor.ingest([str(folder)], settings.index.dir)
    seconds = time.perf_counter() - started
    grown = (process.memory_info().rss - before) / 2**20
    reasons = {Path(p).name: r for p, r in report.skipped}
    assert "index.max_file_chars" in reasons["inflating.pdf"] and "index.max_file_chars" in reasons["long.txt"]
    assert "index.max_parse_seconds" in reasons["paragraphs.docx"]
    assert "index.max_parse_memory_bytes" in reasons["nested.rst"] or "index.max_parse_seconds" in reasons["nested.rst"]
    assert sorted(Path(p).name for p in report.added) == ["bad-record.jsonl", "good.md"]
    assert sum("unpaired surrogate" in m for _, m in report.warnings) == 2
    texts = " ".join(c.text for c in IndexSnapshot(settings.index.dir).all_chunks())
    assert "Spring tides" in texts and "A good record about tides" in texts
    assert seconds < 60, seconds
    assert grown < 150, f"the ingesting process grew {grown:.0f} MiB"
