"""The running service picks up index versions the indexer commits, without failing a request."""

from __future__ import annotations

import shutil
import threading

import httpx
import pytest

from tests.conftest import REPO
from tests.helpers import Server, free_port, ragtune_cmd, ragtune_env, run_ragtune

pytestmark = pytest.mark.slow

NEW_DOC = """# Parking

Staff park in the blue garage on Keller Street. Visitor passes are issued by the front desk.
"""


def test_new_versions_are_served_while_requests_keep_succeeding(tmp_path):
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    shutil.copytree(REPO / "examples" / "corpus", corpus)
    assert run_ragtune("index", "add", str(corpus), "--index-dir", str(index)).returncode == 0
    port = free_port()
    env = ragtune_env(RAGTUNE_SERVICE__RELOAD_CHECK_SECONDS="0")
    cmd = ragtune_cmd("serve", "--index-dir", str(index), "--port", str(port))
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def keep_asking(url: str) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while not stop.is_set():
                r = client.post("/ask", json={"question": "Where do staff park?", "max_tokens": 1})
                results.append((r.status_code, r.json().get("index_version")))

    with Server(cmd, port, tmp_path / "server.log", env) as server:
        server.start("/ready")
        first = httpx.get(f"{server.url}/ready").json()["checks"]["index"]
        askers = [threading.Thread(target=keep_asking, args=(server.url,)) for _ in range(2)]
        for t in askers:
            t.start()
        try:
            (corpus / "parking.md").write_text(NEW_DOC)
            added = run_ragtune("index", "add", str(corpus), "--index-dir", str(index))
            assert added.returncode == 0, added.stderr
            (corpus / "vacation.rst").unlink()  # a second version, with removals
            removed = run_ragtune("index", "add", str(corpus), "--index-dir", str(index))
            assert removed.returncode == 0, removed.stderr
            answer = httpx.post(f"{server.url}/ask", json={"question": "Where do staff park?", "max_tokens": 30}, timeout=120).json()
        finally:
            stop.set()
            for t in askers:
                t.join(timeout=120)

    assert results and all(status == 200 for status, _ in results), results
    assert answer["index_version"] != first
    assert any(c["source"].endswith("parking.md") for c in answer["citations"])
    seen = list(dict.fromkeys(version for _, version in results))
    assert seen[0] == first and len(seen) >= 2  # requests ran across at least one reload
