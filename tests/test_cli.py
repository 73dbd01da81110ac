"""The `ragtune` command's own manners, in a real process: settings errors are one line naming the
variable, only the sections a command uses can stop it, typos are warned about, argument and path
errors come before any model loads, defaults show in help, logging is configured once."""

from __future__ import annotations

import json
import socket

import pytest

from ragtune import __version__
from tests.conftest import SQUAD
from tests.helpers import run_ragtune

# Were a command to load a model before checking its arguments, it would fail on these instead.
NO_MODELS = {"RAGTUNE_EMBEDDING__MODEL": "/no/embedding/model", "RAGTUNE_GENERATION__LOCAL_MODEL_PATH": "/no/generation/model"}


def test_version():
    done = run_ragtune("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"ragtune {__version__}"


def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path):
    done = run_ragtune("index", "stats", "-i", str(tmp_path), RAGTUNE_INDEX__MAX_FILE_BYTES="lots")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: RAGTUNE_INDEX__MAX_FILE_BYTES='lots': Input should be a valid integer, unable to parse string as an "
        "integer; fix or unset it"]
    listed = run_ragtune("index", "stats", "-i", str(tmp_path), RAGTUNE_SERVICE__API_KEYS="key-without-brackets")
    assert "ignored, as this command does not use it: RAGTUNE_SERVICE__API_KEYS is not JSON" in listed.stderr
    assert listed.stderr.strip().splitlines()[-1].startswith("error: no index at")  # not a section `stats` reads
    served = run_ragtune("ask", "hi", RAGTUNE_SERVICE__API_KEYS="key-without-brackets")
    assert served.stderr.strip().splitlines()[-1].startswith("error: RAGTUNE_SERVICE__API_KEYS is not JSON")


@pytest.mark.parametrize("value", ['{"secret-key-1": "default"}', '{"secret-key-1": [5]}', '{"secret-key-1": ["a"], "k2": {}}'])
def test_a_bad_key_collections_value_never_echoes_a_key(tmp_path, value):
    done = run_ragtune("ask", "hi", RAGTUNE_SERVICE__KEY_COLLECTIONS=value)
    assert done.returncode == 2 and "secret-key-1" not in done.stderr and "k2" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: RAGTUNE_SERVICE__KEY_COLLECTIONS: a key's entry:")
    bad_key = run_ragtune("ask", "hi", RAGTUNE_SERVICE__API_KEYS='["secret-key-2", 7]')
    assert bad_key.returncode == 2 and "secret-key-2" not in bad_key.stderr, bad_key.stderr


def test_a_bad_setting_in_a_section_the_command_does_not_use_is_only_a_warning(tmp_path):
    done = run_ragtune("index", "stats", "-i", str(tmp_path / "none"), RAGTUNE_FINETUNE__RANK="7")
    assert "ignored, as this command does not use it: RAGTUNE_FINETUNE__RANK='7': rank 7 cannot be served by vLLM" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: no index at")  # what stats itself found
    (tmp_path / "data.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    trained = run_ragtune("finetune", "train", str(tmp_path / "data.jsonl"), "--name", "x", RAGTUNE_FINETUNE__RANK="7")
    assert trained.returncode == 2 and "error: RAGTUNE_FINETUNE__RANK='7'" in trained.stderr


def test_a_misspelled_setting_is_warned_about(tmp_path):
    done = run_ragtune("index", "stats", "-i", str(tmp_path), RAGTUNE_INDEX__KEEP_VERSION="3", RAGTUNE_PORT="8000")
    assert "warning: RAGTUNE_INDEX__KEEP_VERSION is not a setting (did you mean RAGTUNE_INDEX__KEEP_VERSIONS?)" in done.stderr
    assert "RAGTUNE_PORT" not in done.stderr  # compose's own variables are not settings and not typos


@pytest.mark.parametrize("args, message", [
    (("index", "add", "/no/such/file.md"), "error: path not found: /no/such/file.md"),
    (("index", "remove", "a.md"), "error: no index at"),
    (("ask", "What is it?"), "error: no index at"),
    (("finetune", "train", "/no/data.jsonl", "--name", "x"), "error: training data /no/data.jsonl does not exist"),
    (("finetune", "train", "/no/data.jsonl", "--name", "../x"), "error: training data"),
    (("eval", "run", str(SQUAD)), "error: no index at"),
    (("eval", "run", "/no/qa.jsonl"), "error: QA file /no/qa.jsonl does not exist"),
])
def test_argument_and_path_errors_come_before_any_model_loads(tmp_path, args, message):
    done = run_ragtune(*args, "--index-dir", str(tmp_path / "none"), **NO_MODELS)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(message), done.stderr


def test_a_port_in_use_is_said_before_the_models_load(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_ragtune("serve", "--host", "127.0.0.1", "--port", str(port), "-i", str(tmp_path), **NO_MODELS)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        f"error: port {port} on 127.0.0.1 is in use; pick another with --port or RAGTUNE_SERVICE__PORT")


def test_help_shows_the_defaults():
    def shown(*args: str) -> str:
        return " ".join(run_ragtune(*args, "--help").stdout.split())

    assert "[default: setting index.dir, env RAGTUNE_INDEX__DIR]" in shown("index", "add")
    assert "[default: setting generation.max_answer_tokens]" in shown("ask")
    assert "[default: 0]" in shown("eval", "run")  # --seed
    serve = shown("serve")
    assert "[default: 8000, or setting service.port]" in serve and "[default: 127.0.0.1, or setting service.host]" in serve


def test_logs_can_be_json_lines(tmp_path):
    done = run_ragtune("index", "stats", "-i", str(tmp_path), RAGTUNE_FINETUNE__RANK="7", RAGTUNE_LOG__FORMAT="json")
    entry = json.loads(next(line for line in done.stderr.splitlines() if line.startswith("{")))
    assert entry["level"] == "WARNING" and entry["logger"] == "ragtune.settings" and "RAGTUNE_FINETUNE__RANK" in entry["message"]
    assert entry["time"][:2] == "20"


def test_ingest_reports_progress_while_it_embeds(tmp_path, settings):
    """The bar moves per step of embedding, not once per group: many steps for one big file."""
    from indexer.fake import FakeEmbedder
    from indexer.ingest import EMBED_STEP, Ingestor

    calls: list[tuple[str, int]] = []

    class Recorder:
        def start(self, files: int) -> None:
            calls.append(("start", files))

        def read(self, chunks: int) -> None:
            calls.append(("read", chunks))

        def embedded(self, chunks: int) -> None:
            calls.append(("embedded", chunks))

    (tmp_path / "big.md").write_text("\n\n".join(f"Paragraph {i}: " + "word " * 120 for i in range(3 * EMBED_STEP)))
    (tmp_path / "small.md").write_text("One short line.")
    report = Ingestor(settings, FakeEmbedder()).ingest([str(tmp_path / "big.md"), str(tmp_path / "small.md")],
                                                       settings.index.dir, progress=Recorder())
    read = [n for kind, n in calls if kind == "read"]
    embedded = [n for kind, n in calls if kind == "embedded"]
    assert calls[0] == ("start", 2) and len(read) == 2
    assert sum(embedded) == sum(read) == report.chunks_added and len(embedded) >= 3 and max(embedded) <= EMBED_STEP
