"""Ingest with the real embedder and real FAISS: incremental updates, bad input, safety."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from indexer import store
from indexer.snapshot import IndexSnapshot
from ragtune.errors import IndexIncompatible, IndexLocked, IndexNotFound, UsageError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def snapshot(settings):
    return IndexSnapshot(settings.index.dir)


def search_top(snap, embedder, question):
    scores, ids = snap.search(embedder.embed([question]), 1)
    return snap.chunks([int(ids[0][0])])[0]


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    write(root / "cats.md", "# Cats\n\nCats sleep sixteen hours a day and purr when content.\n")
    write(root / "rockets.txt", "Rockets carry satellites to orbit using liquid oxygen and kerosene.\n")
    write(root / "sub" / "bread.html", "<h1>Bread</h1><p>Sourdough bread rises thanks to wild yeast.</p>")
    return root


def test_add_then_readd_is_a_noop(ingestor, settings, corpus, embedder):
    first = ingestor.ingest([str(corpus)], settings.index.dir)
    assert len(first.added) == 3 and first.chunks_added == 3 and not first.skipped
    second = ingestor.ingest([str(corpus)], settings.index.dir)
    assert len(second.unchanged) == 3 and not (second.added or second.replaced or second.removed)
    assert second.version_id == first.version_id  # nothing committed
    snap = snapshot(settings)
    assert snap.stats()["chunks"] == snap.index.ntotal == 3
    assert search_top(snap, embedder, "how long do cats sleep").doc_id.endswith("cats.md")


def test_edit_replaces_exactly_that_files_chunks(ingestor, settings, corpus, embedder):
    ingestor.ingest([str(corpus)], settings.index.dir)
    write(corpus / "rockets.txt", "Bicycles are powered by pedals and chains.\n\nThey need no fuel at all.\n")
    report = ingestor.ingest([str(corpus)], settings.index.dir)
    assert [os.path.basename(p) for p in report.replaced] == ["rockets.txt"]
    assert len(report.unchanged) == 2 and report.chunks_removed == 0
    snap = snapshot(settings)
    texts = [c.text for c in snap.all_chunks()]
    assert not any("Rockets" in t for t in texts)
    assert any("Bicycles" in t for t in texts)
    assert snap.index.ntotal == len(texts) == 3
    top = search_top(snap, embedder, "what powers a bicycle")
    assert "pedals" in top.text
    # No vector of the old text is left behind to be found.
    scores, ids = snap.search(embedder.embed(["liquid oxygen rocket fuel"]), 3)
    assert all("Rockets" not in c.text for c in snap.chunks([int(i) for i in ids[0]]))


def test_deleted_file_is_removed_when_its_directory_is_added_again(ingestor, settings, corpus):
    ingestor.ingest([str(corpus)], settings.index.dir)
    (corpus / "sub" / "bread.html").unlink()
    report = ingestor.ingest([str(corpus)], settings.index.dir)
    assert [os.path.basename(p) for p in report.removed] == ["bread.html"] and report.chunks_removed == 1
    snap = snapshot(settings)
    assert snap.index.ntotal == 2 and all("Sourdough" not in c.text for c in snap.all_chunks())


def test_remove_by_path_and_by_directory(ingestor, settings, corpus):
    ingestor.ingest([str(corpus)], settings.index.dir)
    report = ingestor.remove([str(corpus / "cats.md")], settings.index.dir)
    assert [os.path.basename(p) for p in report.removed] == ["cats.md"]
    report = ingestor.remove([str(corpus / "sub")], settings.index.dir)
    assert [os.path.basename(p) for p in report.removed] == ["bread.html"]
    assert snapshot(settings).index.ntotal == 1
    assert ingestor.remove(["nope"], settings.index.dir).skipped == [("nope", "not in the index")]


def test_root_makes_ids_relative_and_stable(ingestor, settings, corpus):
    ingestor.ingest([str(corpus)], settings.index.dir, root=corpus)
    ids = sorted(s["source_id"] for s in snapshot(settings).sources())
    assert ids == ["cats.md", "rockets.txt", "sub/bread.html"]


def test_ids_are_relative_to_the_paths_as_given_never_the_machines_layout(ingestor, settings, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ingestor.ingest(["corpus", str(corpus / "sub" / "bread.html")], settings.index.dir)
    ids = sorted(s["source_id"] for s in snapshot(settings).sources())
    assert ids == ["corpus/cats.md", "corpus/rockets.txt", "corpus/sub/bread.html"]  # the directory's name first
    assert str(tmp_path) not in " ".join(ids)
    moved = tmp_path / "elsewhere" / "corpus"  # the corpus moves: the same ids, its documents replaced, not doubled
    moved.parent.mkdir()
    corpus.rename(moved)
    report = ingestor.ingest([str(moved)], settings.index.dir)
    assert sorted(s["source_id"] for s in snapshot(settings).sources()) == ids and not report.added
    write(tmp_path / "other" / "corpus" / "cats.md", "# Dogs\n\nDogs sleep less than cats.\n")  # same name, another file
    ingestor.ingest([str(tmp_path / "other" / "corpus")], settings.index.dir)
    sources = {s["source_id"] for s in snapshot(settings).sources()}
    assert "corpus/cats.md" in sources and str(tmp_path / "other" / "corpus" / "cats.md") in sources  # nothing overwritten
    with pytest.raises(UsageError, match="would both be known as 'corpus/cats.md'; give --root"):
        ingestor.ingest([str(moved), str(tmp_path / "other" / "corpus")], tmp_path / "fresh-index")


def test_an_index_whose_ids_are_absolute_paths_keeps_them(ingestor, settings, corpus, monkeypatch):
    """Indexes made when ids were absolute paths: adding the same files again changes nothing."""
    from indexer.ingest import Ingestor

    relative = Ingestor.source_id
    monkeypatch.setattr(Ingestor, "source_id", lambda self, path, root, base=None: relative(self, path, root))
    ingestor.ingest([str(corpus)], settings.index.dir)
    absolute = sorted(s["source_id"] for s in snapshot(settings).sources())
    assert absolute == sorted(str(p) for p in corpus.rglob("*.*"))
    monkeypatch.setattr(Ingestor, "source_id", relative)
    report = ingestor.ingest([str(corpus)], settings.index.dir)
    assert len(report.unchanged) == 3 and not report.added and not report.removed
    assert sorted(s["source_id"] for s in snapshot(settings).sources()) == absolute


def test_json_records_are_documents_with_their_own_ids(ingestor, settings, tmp_path):
    path = write(tmp_path / "faq.jsonl", '{"id": "q1", "text": "Parking is free on weekends.", "team": "ops"}\n')
    ingestor.ingest([str(path)], settings.index.dir, root=tmp_path)
    (chunk,) = snapshot(settings).all_chunks()
    assert chunk.doc_id == "faq.jsonl#q1" and chunk.metadata == {"team": "ops"}


def test_glob_patterns(ingestor, settings, corpus):
    report = ingestor.ingest([str(corpus / "**" / "*.html")], settings.index.dir)
    assert [os.path.basename(p) for p in report.added] == ["bread.html"]


def test_bad_files_are_reported_and_skipped_and_the_good_ones_commit(ingestor, settings, corpus):
    bad = corpus / "bad"
    bad.mkdir()
    (bad / "empty.txt").write_bytes(b"")
    (bad / "binary.md").write_bytes(b"\x00\xff\x00\xfe" * 50)
    (bad / "latin1.txt").write_bytes("na\xefve caf\xe9".encode("latin-1"))
    (bad / "corrupt.pdf").write_bytes(b"%PDF-1.7\n garbage")
    (bad / "corrupt.docx").write_bytes(b"not a zip at all")
    (bad / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    os.symlink(bad / "gone.txt", bad / "dangling.txt")  # unreadable: the target does not exist
    report = ingestor.ingest([str(corpus)], settings.index.dir)
    reasons = {os.path.basename(p): r for p, r in report.skipped}
    assert set(reasons) == {"empty.txt", "binary.md", "latin1.txt", "corrupt.pdf", "corrupt.docx", "picture.png", "dangling.txt"}
    assert reasons["empty.txt"] == "empty file"
    assert "binary" in reasons["binary.md"]
    assert "UTF-8" in reasons["latin1.txt"]
    assert "corrupt PDF" in reasons["corrupt.pdf"]
    assert "corrupt .docx" in reasons["corrupt.docx"]
    assert "unsupported file type" in reasons["picture.png"]
    assert reasons["dangling.txt"].startswith("unreadable")
    assert len(report.added) == 3 and not report.failed
    assert snapshot(settings).index.ntotal == 3


def test_a_file_that_turns_bad_keeps_its_previous_version(ingestor, settings, corpus):
    ingestor.ingest([str(corpus)], settings.index.dir)
    (corpus / "rockets.txt").write_bytes(b"\x00\x01binary now")
    report = ingestor.ingest([str(corpus)], settings.index.dir)
    assert "previously indexed version is kept" in report.skipped[0][1]
    assert any("Rockets" in c.text for c in snapshot(settings).all_chunks())


def test_nothing_indexable_is_a_failure(ingestor, settings, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"")
    report = ingestor.ingest([str(tmp_path / "a.txt")], settings.index.dir)
    assert report.failed
    with pytest.raises(IndexNotFound, match="ragtune index add"):
        snapshot(settings)


def test_missing_path_is_a_usage_error_before_any_work(ingestor, settings, tmp_path):
    with pytest.raises(UsageError, match="path not found: .*missing"):
        ingestor.ingest([str(tmp_path / "missing")], settings.index.dir)
    with pytest.raises(UsageError, match="path not found"):
        ingestor.ingest([str(tmp_path / "*.nothing")], settings.index.dir)
    assert not (settings.index.dir / store.CURRENT).exists()


def _edit_manifest(settings, **changes):
    version_dir = store.committed_version_dir(settings.index.dir)
    manifest = json.loads((version_dir / store.MANIFEST).read_text())
    for key, value in changes.items():
        manifest[key] = value
    (version_dir / store.MANIFEST).write_text(json.dumps(manifest))


def test_index_built_with_another_embedding_model_is_refused(ingestor, settings, corpus):
    ingestor.ingest([str(corpus)], settings.index.dir)
    _edit_manifest(settings, embedding={"name": "intfloat/e5-large", "dimension": 1024, "fingerprint": "0" * 16, "max_seq_length": 512})
    with pytest.raises(IndexIncompatible, match="built with embedding model intfloat/e5-large .*RAGTUNE_EMBEDDING__MODEL"):
        ingestor.ingest([str(corpus)], settings.index.dir)


def test_index_from_a_newer_format_is_refused(ingestor, settings, corpus):
    ingestor.ingest([str(corpus)], settings.index.dir)
    _edit_manifest(settings, format_version=store.FORMAT_VERSION + 1)
    with pytest.raises(IndexIncompatible, match="newer than this ragtune reads.*upgrade"):
        ingestor.ingest([str(corpus)], settings.index.dir)
    with pytest.raises(IndexIncompatible, match="upgrade"):
        snapshot(settings)


def test_other_chunking_settings_are_refused(ingestor, settings, corpus, embedder):
    from indexer.ingest import Ingestor

    ingestor.ingest([str(corpus)], settings.index.dir)
    settings.chunking.chunk_tokens = 120
    with pytest.raises(IndexIncompatible, match="chunked with"):
        Ingestor(settings, embedder).ingest([str(corpus)], settings.index.dir)


def test_a_second_writer_is_refused_with_a_clear_message(ingestor, settings, corpus):
    with ingestor.writer(settings.index.dir):
        with pytest.raises(IndexLocked, match=f"being written by pid {os.getpid()}; wait"):
            ingestor.ingest([str(corpus)], settings.index.dir)
    assert ingestor.ingest([str(corpus)], settings.index.dir).added  # the lock is released


def test_an_exception_mid_ingest_leaves_the_index_as_it_was(ingestor, settings, corpus, monkeypatch):
    first = ingestor.ingest([str(corpus)], settings.index.dir)
    write(corpus / "new.txt", "Penguins live in the southern hemisphere.")

    def boom(*args, **kwargs):
        raise RuntimeError("embedder died")

    monkeypatch.setattr(ingestor.embedder, "embed", boom)
    with pytest.raises(RuntimeError):
        ingestor.ingest([str(corpus)], settings.index.dir)
    snap = snapshot(settings)
    assert snap.version_id == first.version_id and snap.index.ntotal == 3
    assert not list((settings.index.dir / store.STAGING).glob("*"))


def test_old_versions_stay_readable_after_new_commits(ingestor, settings, corpus, embedder):
    ingestor.ingest([str(corpus)], settings.index.dir)
    reader = snapshot(settings)
    for i in range(2):
        write(corpus / f"extra{i}.txt", f"Extra document number {i} about volcanoes.")
        ingestor.ingest([str(corpus)], settings.index.dir)
    assert reader.index.ntotal == 3 and len(reader.all_chunks()) == 3  # still the old version
    assert snapshot(settings).index.ntotal == 5
    versions = list((settings.index.dir / store.VERSIONS).iterdir())
    assert len(versions) == settings.index.keep_versions


def test_hnsw_above_the_threshold_with_removal_by_rebuild(ingestor, settings, corpus, embedder):
    settings.index.hnsw_threshold = 3
    ingestor.ingest([str(corpus)], settings.index.dir)
    snap = snapshot(settings)
    assert snap.manifest.index_kind == "hnsw" and snap.index.ntotal == 3
    ingestor.remove([str(corpus / "cats.md")], settings.index.dir)
    snap = snapshot(settings)
    assert snap.manifest.index_kind == "flat" and snap.index.ntotal == 2  # fell below: exact again
    scores, ids = snap.search(embedder.embed(["wild yeast"]), 2)
    assert np.all(ids[0] > 0)
