"""The real service process on a real SQuAD index, driven by the official openai client."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import httpx
import openai
import pytest

from tests.helpers import ragtune_cmd, ragtune_env

pytestmark = pytest.mark.slow
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, squad):
    from indexer.embedder import load_embedder
    from indexer.ingest import Ingestor
    from ragtune.settings import get_settings

    tmp = tmp_path_factory.mktemp("service")
    records = [
        {"id": f"{a['title']}-{i}", "title": a["title"].replace("_", " "), "text": p["context"]}
        for a in squad["data"] for i, p in enumerate(a["paragraphs"])
    ]
    (tmp / "squad.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    settings = get_settings()
    Ingestor(settings, load_embedder(settings.embedding)).ingest([str(tmp / "squad.jsonl")], tmp / "index", root=tmp)
    port = free_port()
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(
        ragtune_cmd("serve", "--index-dir", str(tmp / "index"), "--port", str(port)),
        env=ragtune_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "service did not become ready"
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused")


def test_chat_completion_answers_from_the_index(client):
    response = client.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "In what country is Normandy located?"}], max_tokens=40,
    )
    answer = response.choices[0].message.content
    assert "France" in answer
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 50 and response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    sources = response.model_extra["sources"]
    assert any(s["doc_id"].startswith("squad.jsonl#Normans-") for s in sources)
    assert [s["number"] for s in sources] == list(range(1, len(sources) + 1))


def test_streaming_chunks_parse_and_usage_arrives(client):
    stream = client.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "Who was the duke in the battle of Hastings?"}],
        max_tokens=30, stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)  # the client parses every SSE event and stops at [DONE]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_models_list_has_the_base_model(client):
    assert [m.id for m in client.models.list()] == [BASE_MODEL]


def test_unknown_model_is_a_404_in_openai_shape(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-adapter", messages=[{"role": "user", "content": "hi"}])
    error = caught.value.body
    assert error["param"] == "model" and error["code"] == "model_not_found" and "no-such-adapter" in error["message"]


def test_retrieval_can_be_turned_off_per_request(client):
    response = client.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=10,
        extra_body={"retrieval": {"enabled": False}},
    )
    assert response.model_extra["sources"] == [] and response.usage.prompt_tokens < 60


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ("{not json", 400, "not valid JSON"),
        ({"question": ""}, 400, "question"),
        ({"question": "x" * 5000}, 400, "limit is 4000"),
        ({"question": 42}, 400, "question"),
        ({"question": "hi", "top_k": "many"}, 400, "top_k"),
        ({"question": "hi", "model": "nope"}, 404, "does not exist"),
    ],
)
def test_bad_ask_requests_get_a_4xx_that_says_what_to_fix(server, body, status, fragment):
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(f"{server}/ask", content=content, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_ask_returns_answer_citations_and_a_ledger_that_adds_up(server):
    response = httpx.post(f"{server}/ask", json={"question": "What is the Sky UK satellite service called?", "max_tokens": 30}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] and body["citations"] and body["index_version"]
    ledger = body["ledger"]
    assert ledger["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert ledger["prompt_tokens"] <= ledger["context_window"] - ledger["reserved_answer_tokens"]
    assert ledger["prompt_tokens"] == ledger["base_tokens"] + sum(p["tokens"] for p in ledger["packed"]) + ledger["join_tokens"]
    assert abs(ledger["join_tokens"]) <= len(ledger["packed"]) + 2
    packed_ids = {i for p in ledger["packed"] for i in p["chunk_ids"]}
    assert packed_ids | {d["chunk_id"] for d in ledger["dropped"]} == {r["chunk_id"] for r in ledger["retrieved"]}
    assert {c["number"] for c in body["citations"]} == {p["number"] for p in ledger["packed"]}


def test_ask_streams_sse(server):
    events = []
    with httpx.stream("POST", f"{server}/ask", json={"question": "Where is Victoria?", "stream": True, "max_tokens": 20}, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert parsed[0]["type"] == "citations" and parsed[-1]["type"] == "done"
    assert any(e["type"] == "delta" for e in parsed)


def test_health_and_ready(server):
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/ready").json()
    assert ready["status"] == "ready" and ready["checks"]["backend"] == "ok"
