"""Parsing files apart from the process that ingests them, within limits of time, memory and text.

A small file can be built to cost far more than its size: a PDF whose streams inflate to tens of
megabytes of text, a .docx of a few kilobytes holding 200,000 paragraphs (minutes in
python-docx), deeply nested markup that leaves gigabytes resident after docutils is done with
it. So each file is parsed by `indexer.loaders` in a worker process of its own
(`IsolatedParser`): its address space is capped (`index.max_parse_memory_bytes`), a file that
takes longer than `index.max_parse_seconds` has its worker killed, and a file whose text is longer
than `index.max_file_chars` is refused; each is skipped with the reason, as any unreadable file
is. The worker is replaced after it was stopped or ran out of memory, and whenever it has grown,
so the memory parsing took goes back to the system and the ingesting process stays flat.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from indexer.loaders import Document, LoadError, load_file
from ragtune.settings import IndexSettings, RecordSettings

RECYCLE_BYTES = 512 * 2**20  # a worker resident past this after a file is replaced


def text_chars(documents: list[Document]) -> int:
    return sum(len(block.text) for document in documents for block in document.blocks)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def serve(fd: int, memory: int, max_chars: int) -> None:
    """The worker (`python -c`, so no one's main module is imported again): parse what comes down
    the socket `fd`, answer (documents, warnings) or an error's reason."""
    import logging
    import warnings

    logging.getLogger().setLevel(logging.ERROR)  # a parser's complaints about a malformed file: the skip reason says it
    warnings.simplefilter("ignore")
    conn = Connection(fd)
    resource.setrlimit(resource.RLIMIT_AS, (_address_space() + memory, resource.RLIM_INFINITY))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        name, data, doc_id, records = request
        try:
            documents, warnings = load_file(Path(name), data, doc_id, records)
            chars = text_chars(documents)
            if chars > max_chars:
                raise LoadError(f"{chars:,} characters of text, over the limit of {max_chars:,} (setting index.max_file_chars)")
            answer = ("ok", documents, warnings, _resident_bytes())
        except LoadError as exc:
            answer = ("refused", str(exc), None, _resident_bytes())
        except MemoryError:
            answer = ("refused", f"parsing it needs more than {memory:,} bytes of memory (setting "
                                 "index.max_parse_memory_bytes)", None, RECYCLE_BYTES + 1)
        del request, data
        conn.send(answer)


class IsolatedParser:
    """`load(path, data, doc_id)`: what `indexer.loaders.load_file` gives, parsed in a worker process
    within the limits of `index` settings; LoadError with the reason otherwise. Close it (or use it
    as a context manager) to stop the worker."""

    def __init__(self, index: IndexSettings, records: RecordSettings):
        self.index, self.records = index, records
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None

    def __enter__(self) -> IsolatedParser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> Connection:
        if self._process is None or self._process.poll() is not None:
            ours, theirs = socket.socketpair()
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # imports resolve as they do here
            code = (f"from indexer.parsing import serve; serve({theirs.fileno()}, {self.index.max_parse_memory_bytes}, "
                    f"{self.index.max_file_chars})")
            self._process = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()], env=env,
                                             stdin=subprocess.DEVNULL)
            theirs.close()
            self._conn = Connection(ours.detach())
        return self._conn

    def close(self) -> None:
        """Stop the worker: it ends when its socket closes."""
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = self._conn = None

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None

    def load(self, path: Path, data: bytes, doc_id: str) -> tuple[list[Document], list[str]]:
        conn = self._start()
        seconds = self.index.max_parse_seconds
        try:
            conn.send((path.name, data, doc_id, self.records))
            if not conn.poll(seconds):
                self._kill()
                raise LoadError(f"parsing took longer than {seconds:g} s (setting index.max_parse_seconds)")
            status, first, warnings, resident = conn.recv()
        except (EOFError, OSError, BrokenPipeError):  # the worker died: out of memory, or killed
            self._kill()
            raise LoadError(f"the parser stopped on this file (more than {self.index.max_parse_memory_bytes:,} bytes "
                            "of memory? setting index.max_parse_memory_bytes)") from None
        if resident > RECYCLE_BYTES:
            self.close()
        if status != "ok":
            raise LoadError(first)
        return first, warnings
