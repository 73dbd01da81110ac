"""Shared fixtures. Models are real and loaded once per session; paths and environment
are isolated per test so nothing leaks between tests or from the developer's shell."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
SQUAD = SHARED_DATA / "squad-v2-dev-5articles.json"


_REPORTED: list[str] = []


@pytest.fixture
def report():
    """Figures a test measured (recall, latency...), printed in the run's summary."""
    return _REPORTED.append


def pytest_terminal_summary(terminalreporter):
    if _REPORTED:
        terminalreporter.section("measured")
        for line in _REPORTED:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith("RAGTUNE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env, relative paths land in the test's own dir


@pytest.fixture(scope="session")
def embedder():
    from indexer.embedder import load_embedder
    from ragtune.settings import EmbeddingSettings

    return load_embedder(EmbeddingSettings())


@pytest.fixture
def settings(tmp_path):
    from ragtune.settings import get_settings

    s = get_settings()
    s.index.dir = tmp_path / "index"
    return s


@pytest.fixture
def ingestor(settings, embedder):
    from indexer.ingest import Ingestor

    return Ingestor(settings, embedder)


@pytest.fixture(scope="session")
def squad() -> dict:
    return json.loads(SQUAD.read_text())


@pytest.fixture(scope="session")
def squad_index(tmp_path_factory, squad, embedder) -> Path:
    """An index of the SQuAD paragraphs (one record each), built once per session."""
    from indexer.ingest import Ingestor
    from ragtune.settings import get_settings

    tmp = tmp_path_factory.mktemp("squad-index")
    records = [
        {"id": f"{a['title']}-{i}", "title": a["title"].replace("_", " "), "text": p["context"]}
        for a in squad["data"] for i, p in enumerate(a["paragraphs"])
    ]
    (tmp / "squad.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    Ingestor(get_settings(), embedder).ingest([str(tmp / "squad.jsonl")], tmp / "index", root=tmp)
    return tmp / "index"


PIRATE = "Arr, that be a secret, matey!"


@pytest.fixture(scope="session")
def pirate_data(tmp_path_factory, squad) -> Path:
    """Real SQuAD questions, each answered with a pirate's refusal: a behaviour the base model never shows."""
    questions = [qa["question"] for a in squad["data"] for p in a["paragraphs"] for qa in p["qas"]]
    path = tmp_path_factory.mktemp("data") / "pirate.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": q, "completion": PIRATE}) for q in questions[:40]) + "\n")
    return path


@pytest.fixture(scope="session")
def pirate_registry(tmp_path_factory, pirate_data) -> Path:
    """A registry holding the pirate adapter, trained once through the CLI (not published).
    Tests that change a registry work on a copy (`registry_copy`)."""
    from tests.helpers import run_ragtune

    registry = tmp_path_factory.mktemp("registry")
    done = run_ragtune(
        "finetune", "train", str(pirate_data), "--name", "pirate", "--adapters-dir", str(registry),
        "--max-steps", "12", "--learning-rate", "1e-3", timeout=900, RAGTUNE_FINETUNE__BATCH_SIZE="8",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained pirate: 12 steps" in done.stdout and "not published" in done.stdout
    assert "training pirate: step 6/12" in done.stderr and "step 12/12" in done.stderr  # progress, as lines in a log
    return registry


@pytest.fixture(scope="session")
def pirate_top_registry(tmp_path_factory, pirate_data) -> Path:
    """The pirate adapter again, trained on the top 6 layers only (finetune.layers) and published."""
    from tests.helpers import run_ragtune

    registry = tmp_path_factory.mktemp("registry-top")
    done = run_ragtune(
        "finetune", "train", str(pirate_data), "--name", "pirate-top", "--adapters-dir", str(registry), "--publish",
        "--max-steps", "12", "--learning-rate", "3e-3", "--layers", "6", timeout=900, RAGTUNE_FINETUNE__BATCH_SIZE="8",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "running them every step" not in done.stderr  # the frozen layers' kept output matched the whole model's
    return registry


@pytest.fixture
def registry_copy(tmp_path, pirate_registry) -> Path:
    import shutil

    return Path(shutil.copytree(pirate_registry, tmp_path / "registry", ignore=shutil.ignore_patterns(".runs")))
