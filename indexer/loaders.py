"""File loaders: bytes of one file in, documents made of text blocks out.

Each block keeps the heading path it sits under (Markdown, reStructuredText, HTML,
docx) and, for PDFs, its page, so chunks can carry them as metadata. Formats are parsed
with well-kept libraries; a file that cannot be read raises :class:`LoadError` with a
reason a person can act on, and the indexer skips it.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ragtune.settings import RecordSettings


class LoadError(Exception):
    """This file cannot be indexed; the message says why."""


@dataclass(frozen=True)
class Block:
    text: str
    headings: tuple[str, ...] = ()
    page: int | None = None


@dataclass
class Document:
    doc_id: str
    blocks: list[Block]
    title: str | None = None
    metadata: dict = field(default_factory=dict)


_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def _paragraphs(text: str, **block_fields) -> list[Block]:
    return [Block(p.strip(), **block_fields) for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM) or BOM-marked UTF-16; anything else is refused, not guessed."""
    if not data.strip():
        raise LoadError("empty file")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise LoadError(f"undecodable UTF-16 text: {exc.reason} at byte {exc.start}") from exc
    if b"\x00" in data[:8192]:
        raise LoadError("binary content (NUL bytes) in a text file type")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); convert the file to UTF-8"
        ) from exc


def load_text(data: bytes, doc_id: str, _records: RecordSettings) -> list[Document]:
    return [Document(doc_id, _paragraphs(decode_text(data)))]


def load_markdown(data: bytes, doc_id: str, _records: RecordSettings) -> list[Document]:
    from markdown_it import MarkdownIt

    text = decode_text(data)
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    blocks: list[Block] = []
    headings: list[str] = []
    title = None
    pending_level = 0
    for token in tokens:
        if token.type == "heading_open":
            pending_level = int(token.tag[1])
        elif token.type == "inline" and pending_level:
            headings = headings[: pending_level - 1] + [token.content.strip()]
            title = title or headings[0]
            pending_level = 0
        elif token.type == "inline" and token.content.strip():
            blocks.append(Block(token.content.strip(), tuple(headings)))
        elif token.type in ("fence", "code_block") and token.content.strip():
            blocks.append(Block(token.content.strip(), tuple(headings)))
    return [Document(doc_id, blocks, title=title)]


def load_rst(data: bytes, doc_id: str, _records: RecordSettings) -> list[Document]:
    from docutils import nodes
    from docutils.core import publish_doctree

    text = decode_text(data)
    # report_level 5 keeps docutils quiet; unknown directives still parse as text.
    tree = publish_doctree(text, settings_overrides={"report_level": 5, "halt_level": 5, "file_insertion_enabled": False, "raw_enabled": False})
    blocks: list[Block] = []

    def walk(node: nodes.Node, headings: tuple[str, ...]) -> None:
        for child in node.children:
            if isinstance(child, nodes.section):
                title = child.next_node(nodes.title)
                walk(child, headings + ((title.astext(),) if title else ()))
            elif isinstance(child, (nodes.title, nodes.system_message, nodes.comment)):
                continue
            elif isinstance(child, nodes.TextElement):
                if child.astext().strip():
                    blocks.append(Block(child.astext().strip(), headings))
            elif isinstance(child, nodes.Element):
                walk(child, headings)

    doc_title = tree.next_node(nodes.title)
    start = (doc_title.astext(),) if doc_title is not None and doc_title.parent is tree else ()
    walk(tree, start)
    return [Document(doc_id, blocks, title=start[0] if start else None)]


_HTML_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_HTML_BLOCKS = ("p", "li", "pre", "blockquote", "td", "th", "dt", "dd", "figcaption", "caption")


def load_html(data: bytes, doc_id: str, _records: RecordSettings) -> list[Document]:
    from bs4 import BeautifulSoup

    if not data.strip():
        raise LoadError("empty file")
    soup = BeautifulSoup(data, "lxml")
    for tag in soup(["script", "style", "noscript", "template", "nav"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    blocks: list[Block] = []
    headings: list[str] = []
    for element in soup.find_all(_HTML_HEADINGS + _HTML_BLOCKS):
        text = element.get_text(" ", strip=True)
        if not text:
            continue
        if element.name in _HTML_HEADINGS:
            level = int(element.name[1])
            headings = headings[: level - 1] + [""] * max(0, level - 1 - len(headings)) + [text]
            continue
        if element.find_parent(_HTML_BLOCKS):  # its text is part of the enclosing block
            continue
        blocks.append(Block(text, tuple(h for h in headings if h)))
    if not blocks and soup.body is not None:
        blocks = _paragraphs(soup.body.get_text("\n\n", strip=True))
    return [Document(doc_id, blocks, title=title)]


def load_pdf(data: bytes, doc_id: str, _records: RecordSettings) -> list[Document]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise LoadError("encrypted PDF; decrypt it first")
        blocks = [
            block
            for number, page in enumerate(reader.pages, start=1)
            for block in _paragraphs(page.extract_text() or "", page=number)
        ]
        title = (reader.metadata or {}).get("/Title") if reader.metadata else None
    except LoadError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LoadError(f"corrupt PDF: {exc}") from exc
    if not blocks:
        raise LoadError("PDF has no extractable text (a scan? run OCR first)")
    return [Document(doc_id, blocks, title=str(title) if title else None)]


def load_docx(data: bytes, doc_id: str, _records: RecordSettings) -> list[Document]:
    import zipfile

    import docx

    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise LoadError(f"corrupt .docx: {exc}") from exc
    blocks: list[Block] = []
    headings: list[str] = []
    title = document.core_properties.title or None
    for paragraph in document.paragraphs:
        text = paragraph.text.strip()
        style = paragraph.style.name if paragraph.style is not None else ""
        if not text:
            continue
        if style == "Title":
            title = title or text
        elif style.startswith("Heading") and style[7:].strip().isdigit():
            level = int(style[7:])
            headings = headings[: level - 1] + [text]
        else:
            blocks.append(Block(text, tuple(headings)))
    for table in document.tables:
        for row in table.rows:
            cells = [cell.text.strip() for cell in row.cells if cell.text.strip()]
            if cells:
                blocks.append(Block(" | ".join(dict.fromkeys(cells)), tuple(headings)))
    return [Document(doc_id, blocks, title=title)]


def _not_text(value: object) -> bool:
    """A string JSON can hold but text cannot: an unpaired surrogate escape ("\\ud800")."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _record_document(record: object, where: str, doc_id: str, index: int, cfg: RecordSettings) -> Document:
    if not isinstance(record, dict):
        raise LoadError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    broken = next((key for key, value in record.items() if _not_text(key) or _not_text(value)), None)
    if broken is not None:
        raise LoadError(f"{where}: field {broken.encode('utf-8', 'backslashreplace').decode()!r} holds an unpaired "
                        "surrogate escape (such as \\ud800), which is not text")
    text_field = next((f for f in cfg.text_fields if isinstance(record.get(f), str) and record[f].strip()), None)
    if text_field is None:
        raise LoadError(f"{where}: no text in any of the fields {cfg.text_fields}")
    suffix = record.get(cfg.id_field, index)
    metadata = {
        key: value
        for key, value in record.items()
        if key not in (text_field, cfg.id_field) and isinstance(value, (str, int, float, bool))
    }
    title = record.get(cfg.title_field)
    return Document(f"{doc_id}#{suffix}", _paragraphs(record[text_field]), title=title if isinstance(title, str) else None, metadata=metadata)


def load_records(data: bytes, doc_id: str, cfg: RecordSettings, *, lines: bool) -> tuple[list[Document], list[str]]:
    """JSON array (or one object) or JSON Lines. Returns documents and per-record problems."""
    text = decode_text(data)
    if lines:
        items = []
        problems: list[str] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    items.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    problems.append(f"line {number}: invalid JSON ({exc.msg})")
    else:
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LoadError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
        records = parsed if isinstance(parsed, list) else [parsed]
        items = [(f"record {i}", record) for i, record in enumerate(records)]
        problems = []
    documents: list[Document] = []
    seen: set[str] = set()
    for index, (where, record) in enumerate(items):
        try:
            document = _record_document(record, where, doc_id, index, cfg)
        except LoadError as exc:
            problems.append(str(exc))
            continue
        if document.doc_id in seen:
            problems.append(f"{where}: duplicate id {document.doc_id!r}, skipped")
            continue
        seen.add(document.doc_id)
        documents.append(document)
    if not documents:
        raise LoadError("; ".join(problems[:3]) or "no records")
    return documents, problems


Loader = Callable[[bytes, str, RecordSettings], list[Document]]

LOADERS: dict[str, Loader] = {
    ".txt": load_text,
    ".text": load_text,
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".rst": load_rst,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
    ".docx": load_docx,
}
RECORD_SUFFIXES = {".json": False, ".jsonl": True, ".ndjson": True}
SUPPORTED_SUFFIXES = frozenset(LOADERS) | frozenset(RECORD_SUFFIXES)


def load_file(path: Path, data: bytes, doc_id: str, records: RecordSettings) -> tuple[list[Document], list[str]]:
    """Documents in one file, and warnings about parts of it that were skipped.

    Whatever a parser raises on a malformed file (zlib, lxml, pypdf's decompression limits, a
    recursion too deep...) becomes a LoadError: one bad file is skipped with its reason and
    never aborts an ingest."""
    suffix = path.suffix.lower()
    if suffix not in RECORD_SUFFIXES and suffix not in LOADERS:
        raise LoadError(f"unsupported file type {suffix or '(none)'!r}")
    try:
        if suffix in RECORD_SUFFIXES:
            return load_records(data, doc_id, records, lines=RECORD_SUFFIXES[suffix])
        documents = LOADERS[suffix](data, doc_id, records)
    except LoadError:
        raise
    except RecursionError:
        raise LoadError(f"cannot parse this {suffix} file: it is nested too deeply") from None
    except Exception as exc:  # a parser's own error on a malformed file
        kind = _KIND.get(suffix, suffix)
        raise LoadError(f"corrupt {kind}: {type(exc).__name__}: {str(exc)[:200] or 'unreadable'}") from exc
    if not any(document.blocks for document in documents):
        raise LoadError("no text content")
    return documents, []


_KIND = {".pdf": "PDF", ".docx": ".docx", ".html": "HTML", ".htm": "HTML", ".json": "JSON", ".jsonl": "JSON Lines",
         ".ndjson": "JSON Lines", ".md": "Markdown", ".markdown": "Markdown", ".rst": "reStructuredText"}
