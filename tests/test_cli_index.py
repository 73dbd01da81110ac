"""The `ragtune index` commands as a user runs them: real process, exit codes, messages."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_ragtune

pytestmark = pytest.mark.slow


def test_index_commands_end_to_end(tmp_path):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\n\nThe quick brown fox jumps over the lazy dog.")
    (corpus / "b.txt").write_bytes(b"\x00\x01\x02 binary, not text \xfd")
    index = str(tmp_path / "ix")

    added = run_ragtune("index", "add", str(corpus), "--index-dir", index)
    assert added.returncode == 0, added.stderr
    assert "skipped" in added.stderr and "b.txt" in added.stderr
    assert "1 added, 0 unchanged, 0 replaced, 0 removed, 1 skipped" in added.stdout
    assert " DEBUG " not in added.stderr  # libraries stay at warnings by default (bm25s sets its own level)

    stats = run_ragtune("index", "stats", "--index-dir", index, "--json")
    figures = json.loads(stats.stdout)
    assert figures["chunks"] == figures["vectors"] == 1
    assert figures["embedding"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"

    listed = json.loads(run_ragtune("index", "list", "--index-dir", index, "--json").stdout)
    assert [s["path"].rsplit("/", 1)[-1] for s in listed] == ["a.md"]

    again = run_ragtune("index", "add", str(corpus), "--index-dir", index, "--json")
    assert json.loads(again.stdout)["unchanged"] == [str(corpus / "a.md")]

    removed = run_ragtune("index", "remove", str(corpus / "a.md"), "--index-dir", index)
    assert removed.returncode == 0 and "1 removed" in removed.stdout


def test_cli_errors_are_one_line_with_an_exit_code(tmp_path):
    only_bad = tmp_path / "bad.txt"
    only_bad.write_bytes(b"")
    index = str(tmp_path / "ix")

    nothing = run_ragtune("index", "add", str(only_bad), "--index-dir", index)
    assert nothing.returncode == 1 and "nothing could be indexed" in nothing.stderr

    missing = run_ragtune("index", "add", str(tmp_path / "nowhere"), "--index-dir", index)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == f"error: path not found: {tmp_path / 'nowhere'}"

    no_index = run_ragtune("index", "stats", "--index-dir", index)
    assert no_index.returncode == 2 and "no index at" in no_index.stderr and "ragtune index add" in no_index.stderr
    assert "Traceback" not in no_index.stderr + missing.stderr + nothing.stderr


def test_a_second_writer_process_is_told_to_wait(tmp_path, ingestor, settings):
    doc = tmp_path / "a.txt"
    doc.write_text("Some text to index.")
    with ingestor.writer(settings.index.dir):
        second = run_ragtune("index", "add", str(doc), "--index-dir", str(settings.index.dir))
    assert second.returncode == 3
    assert "is being written by pid" in second.stderr and "wait for it" in second.stderr
