"""Every loader on a real small file of its type, written by that format's own library."""

from __future__ import annotations

import json

import pytest

from indexer.loaders import LoadError, load_file
from ragtune.settings import RecordSettings

RECORDS = RecordSettings()


def load(path):
    return load_file(path, path.read_bytes(), "doc", RECORDS)


def test_text_splits_paragraphs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("First paragraph\nstill first.\n\nSecond paragraph.\n")
    (doc,), warnings = load(path)
    assert [b.text for b in doc.blocks] == ["First paragraph\nstill first.", "Second paragraph."]
    assert warnings == []


def test_markdown_keeps_heading_path(tmp_path):
    path = tmp_path / "a.md"
    path.write_text("# Guide\n\nIntro.\n\n## Install\n\nRun pip.\n\n```\ncode here\n```\n\n## Use\n\n- item one\n- item two\n")
    (doc,), _ = load(path)
    assert doc.title == "Guide"
    assert [(b.text, b.headings) for b in doc.blocks] == [
        ("Intro.", ("Guide",)),
        ("Run pip.", ("Guide", "Install")),
        ("code here", ("Guide", "Install")),
        ("item one", ("Guide", "Use")),
        ("item two", ("Guide", "Use")),
    ]


def test_rst_sections_become_headings(tmp_path):
    path = tmp_path / "a.rst"
    path.write_text("Title\n=====\n\nLead text.\n\nPart A\n------\n\nBody of A.\n\n* bullet\n")
    (doc,), _ = load(path)
    assert doc.title == "Title"
    assert [(b.text, b.headings) for b in doc.blocks] == [
        ("Lead text.", ("Title",)),
        ("Body of A.", ("Title", "Part A")),
        ("bullet", ("Title", "Part A")),
    ]


def test_html_headings_and_no_scripts(tmp_path):
    path = tmp_path / "a.html"
    path.write_text(
        "<html><head><title>T</title><script>var x = 'hidden';</script></head><body>"
        "<h1>Top</h1><p>One.</p><h2>Sub</h2><ul><li><p>Nested item.</p></li></ul>"
        "<table><tr><td>cell</td></tr></table></body></html>"
    )
    (doc,), _ = load(path)
    assert doc.title == "T"
    assert [(b.text, b.headings) for b in doc.blocks] == [
        ("One.", ("Top",)),
        ("Nested item.", ("Top", "Sub")),
        ("cell", ("Top", "Sub")),
    ]
    assert "hidden" not in " ".join(b.text for b in doc.blocks)


def test_pdf_text_with_page_numbers(tmp_path):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in ("The first page talks about apples.", "The second page talks about pears."):
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    path = tmp_path / "a.pdf"
    pdf.output(str(path))
    (doc,), _ = load(path)
    assert [(b.text, b.page) for b in doc.blocks] == [
        ("The first page talks about apples.", 1),
        ("The second page talks about pears.", 2),
    ]


def test_docx_headings_and_tables(tmp_path):
    import docx

    document = docx.Document()
    document.add_heading("Policy", level=1)
    document.add_paragraph("Everyone gets a laptop.")
    document.add_heading("Details", level=2)
    document.add_paragraph("Laptops are replaced every three years.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "Model"
    table.rows[0].cells[1].text = "X1"
    path = tmp_path / "a.docx"
    document.save(path)
    (doc,), _ = load(path)
    assert [(b.text, b.headings) for b in doc.blocks] == [
        ("Everyone gets a laptop.", ("Policy",)),
        ("Laptops are replaced every three years.", ("Policy", "Details")),
        ("Model | X1", ("Policy", "Details")),
    ]


def test_json_array_records_with_metadata(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([
        {"id": "r1", "title": "One", "text": "Alpha text.", "lang": "en", "nested": {"x": 1}},
        {"content": "Beta text."},
    ]))
    docs, warnings = load(path)
    assert [(d.doc_id, d.title, d.blocks[0].text, d.metadata) for d in docs] == [
        ("doc#r1", "One", "Alpha text.", {"title": "One", "lang": "en"}),
        ("doc#1", None, "Beta text.", {}),
    ]
    assert warnings == []


def test_jsonl_reports_bad_lines_and_keeps_good_ones(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": 1, "text": "good one"}\n{not json\n{"id": 2, "other": "no text"}\n\n{"id": 3, "text": "good two"}\n')
    docs, warnings = load(path)
    assert [d.doc_id for d in docs] == ["doc#1", "doc#3"]
    assert warnings[0].startswith("line 2: invalid JSON")
    assert warnings[1].startswith("line 3: no text")


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.txt", b"", "empty file"),
        ("blank.md", b"  \n\n ", "empty file"),
        ("binary.txt", b"\x00\x01\x02binary", "binary content"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "not valid UTF-8"),
        ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "corrupt PDF"),
        ("broken.docx", b"PK\x03\x04 not a zip", "corrupt .docx"),
        ("broken.json", b'{"text": ', "invalid JSON"),
        ("norecords.jsonl", b'{"x": 1}\n', "no text"),
        ("image.png", b"\x89PNG\r\n", "unsupported file type"),
    ],
)
def test_bad_files_raise_a_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LoadError, match=reason):
        load(path)


def test_utf16_with_bom_is_read(tmp_path):
    path = tmp_path / "u16.txt"
    path.write_bytes("héllo wörld".encode("utf-16"))
    (doc,), _ = load(path)
    assert doc.blocks[0].text == "héllo wörld"
