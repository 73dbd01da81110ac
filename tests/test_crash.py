"""Kill an ingest with SIGKILL at each step of its commit; the index must survive whole."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from indexer import store
from indexer.snapshot import IndexSnapshot
from tests.helpers import ragtune_cmd, ragtune_env

pytestmark = pytest.mark.slow

CRASHPOINTS = ["chunks-written", "version-staged", "version-renamed", "current-swapped"]


def state(directory):
    """What a reader sees: version, (doc, position, text) of every chunk, vector count."""
    snap = IndexSnapshot(directory)
    chunks = snap.all_chunks()
    ids_in_faiss = {int(i) for i in snap.search(snap.index.reconstruct(int(chunks[0].id))[None, :], len(chunks))[1][0]}
    assert ids_in_faiss == {c.id for c in chunks}, "vectors and chunk rows disagree"
    rows = sorted((c.doc_id.rsplit("/", 1)[-1], c.position, c.text) for c in chunks)
    assert len(rows) == len(set(rows)), "duplicated chunks"
    return snap.version_id, rows


@pytest.mark.parametrize("point", CRASHPOINTS)
def test_sigkill_during_commit_leaves_a_whole_index_and_a_rerun_completes(point, ingestor, settings, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "keep.txt").write_text("The lighthouse keeper lights the lamp at dusk.")
    (corpus / "edit.txt").write_text("Old text: glaciers move slowly downhill.")
    (corpus / "drop.md").write_text("# Drop\n\nThis file will be deleted before the crash.")
    ingestor.ingest([str(corpus)], settings.index.dir)
    before = state(settings.index.dir)

    (corpus / "edit.txt").write_text("New text: deserts get very cold at night.")
    (corpus / "new.md").write_text("# New\n\nOwls can turn their heads a long way.")
    (corpus / "drop.md").unlink()
    marker = tmp_path / "reached"
    proc = subprocess.Popen(
        ragtune_cmd("index", "add", str(corpus), "--index-dir", str(settings.index.dir)),
        env=ragtune_env(RAGTUNE_CRASHPOINT=point, RAGTUNE_CRASHPOINT_FILE=str(marker)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, f"ingest ended before {point}: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, f"ingest never reached {point}"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    after_crash = state(settings.index.dir)
    if point == "current-swapped":
        assert after_crash[0] != before[0]  # the commit had completed
    else:
        assert after_crash == before  # the previous committed version, untouched

    current = store.current_version(settings.index.dir)
    orphans = [p.name for p in (settings.index.dir / store.VERSIONS).iterdir() if p.name > current]
    assert bool(orphans) == (point == "version-renamed")  # renamed, never pointed to
    report = ingestor.ingest([str(corpus)], settings.index.dir)  # the lock died with the process
    kept = sorted(p.name for p in (settings.index.dir / store.VERSIONS).iterdir())
    assert not set(orphans) & set(kept), "an orphan from the crash must not take a retention slot"
    assert kept[-1] == store.current_version(settings.index.dir)
    version, rows = state(settings.index.dir)
    texts = " ".join(text for _, _, text in rows)
    assert "deserts" in texts and "Owls" in texts and "lighthouse" in texts
    assert "glaciers" not in texts and "deleted before the crash" not in texts
    assert len(rows) == 3
    if point != "current-swapped":
        assert sorted(os.path.basename(p) for p in report.replaced) == ["edit.txt"]
    assert not list((settings.index.dir / store.STAGING).glob("*"))


def test_an_orphan_version_takes_no_retention_slot(ingestor, settings, tmp_path):
    """A commit killed between its rename and the CURRENT swap leaves a version nobody read:
    the next writer removes it, and readers keep `index.keep_versions` committed versions."""
    import shutil

    settings.index.keep_versions = 2
    doc = tmp_path / "doc.txt"
    committed = []
    for text in ("First text about owls.", "Second text about owls.", "Third text about owls."):
        doc.write_text(text)
        committed.append(ingestor.ingest([str(doc)], settings.index.dir).version_id)
    versions = settings.index.dir / store.VERSIONS
    orphan = versions / "999999-deadbeef"
    shutil.copytree(versions / committed[-1], orphan)  # as a killed commit leaves it
    doc.write_text("Fourth text about owls.")
    committed.append(ingestor.ingest([str(doc)], settings.index.dir).version_id)
    assert sorted(p.name for p in versions.iterdir()) == committed[-2:]
