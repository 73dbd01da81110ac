"""The real service process on a real SQuAD index, driven by the official openai client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.helpers import serving

pytestmark = pytest.mark.slow
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
BROWSER_APP = "http://app.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory, squad_index):
    cors = json.dumps([BROWSER_APP])
    with serving(squad_index, tmp_path_factory.mktemp("service"), RAGTUNE_SERVICE__CORS_ORIGINS=cors) as served:
        yield served.url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused")


def test_chat_completion_answers_from_the_index(client):
    response = client.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "Who was the duke in the battle of Hastings?"}], max_tokens=40,
    )
    answer = response.choices[0].message.content
    assert "William" in answer
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 50 and response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    sources = response.model_extra["sources"]
    assert any(s["doc_id"].startswith("squad.jsonl#Normans-") for s in sources)
    assert [s["number"] for s in sources] == list(range(1, len(sources) + 1))


def test_streaming_chunks_parse_and_usage_arrives(client):
    stream = client.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "In what country is Normandy located?"}],
        max_tokens=30, stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)  # the client parses every SSE event and stops at [DONE]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_the_default_answers_held_out_questions_in_a_few_words_from_the_passages(server, squad):
    """The default model carries the grounded-answers adapter (generation.answer_adapter = auto): on questions
    about articles it was never trained on, short answers that match the gold span and cite their passage.
    The model as published scores 5.5% token F1 on this half (docs/measurements.md)."""
    from evaluation.metrics import cited, token_f1
    from evaluation.qa import split_squad

    held_out = [q for q in split_squad(squad, 0.5, 0).test if q.answerable][:24]  # the half the measurements use
    scores, tokens, citing = [], [], 0
    for item in held_out:
        body = httpx.post(f"{server}/ask", json={"question": item.question, "max_tokens": 32}, timeout=120).json()
        scores.append(token_f1(body["answer"], list(item.answers)))
        tokens.append(body["usage"]["completion_tokens"])
        citing += bool(cited(body["answer"]))
    assert sum(scores) / len(scores) >= 0.18, list(zip([q.question for q in held_out], scores))
    assert sum(tokens) / len(tokens) < 15 and citing >= 18


def test_a_question_the_documents_do_not_cover_is_declined_without_generating(client, server):
    """prompt.decline_below_similarity (auto: 0.3 for the default embedder), on by default."""
    off_topic = "What is the boiling point of liquid nitrogen in kelvin?"
    asked = httpx.post(f"{server}/ask", json={"question": off_topic}, timeout=120).json()
    assert asked["answer"] == "I do not know: the passages do not say."
    assert asked["usage"]["completion_tokens"] == 0
    assert max(p["score"] for p in asked["ledger"]["retrieved"]) < 0.3  # what it decided on, shown
    chat = client.chat.completions.create(model=BASE_MODEL, messages=[{"role": "user", "content": off_topic}])
    assert chat.choices[0].message.content == asked["answer"] and chat.usage.completion_tokens == 0
    streamed = client.chat.completions.create(model=BASE_MODEL, messages=[{"role": "user", "content": off_topic}],
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == asked["answer"]
    own = client.chat.completions.create(model=BASE_MODEL, messages=[{"role": "user", "content": off_topic}],
                                         max_tokens=8, extra_body={"retrieval": {"enabled": False}})
    assert own.usage.completion_tokens > 0  # without retrieval there is nothing to decline on
    covered = httpx.post(f"{server}/ask", json={"question": "In what country is Normandy located?"}, timeout=120).json()
    assert covered["usage"]["completion_tokens"] > 0 and covered["answer"] != asked["answer"]


def test_models_list_has_the_base_model(client):
    import time

    assert [m.id for m in client.models.list()] == [BASE_MODEL, "sentence-transformers/all-MiniLM-L6-v2"]
    model = client.models.retrieve(BASE_MODEL)  # GET /v1/models/{id}, the id holding a slash
    assert model.id == BASE_MODEL and 0 < time.time() - model.created < 3600  # when this service loaded it
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_browsers_on_an_allowed_origin_may_call_the_api(server):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = httpx.options(f"{server}/v1/chat/completions", headers={"Origin": BROWSER_APP, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == BROWSER_APP
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    other = httpx.options(f"{server}/v1/chat/completions", headers={"Origin": "http://elsewhere.example", **preflight})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    listed = httpx.get(f"{server}/v1/models", headers={"Origin": BROWSER_APP})
    assert listed.headers["access-control-allow-origin"] == BROWSER_APP


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
        ({}, 400, "question: Field required"),
        ("[1, 2]", 400, "body: Input should be an object"),
        ({"question": "hi", "topk": 3}, 400, "topk: Extra inputs are not permitted"),
        ({"question": "hi", "repetition_penalty": 0}, 400, "repetition_penalty"),
    ],
)
def test_bad_ask_requests_get_a_4xx_that_says_what_to_fix(server, body, status, fragment):
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(f"{server}/ask", content=content, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "param"),
    [({"model": BASE_MODEL, "messages": []}, "messages"), ({"model": BASE_MODEL, "messages": [{"role": "user"}], "n": 2}, "n")],
)
def test_bad_chat_requests_name_the_parameter(server, body, param):
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_openapi_describes_the_request_bodies(server):
    schema = httpx.get(f"{server}/openapi.json").json()
    components = schema["components"]["schemas"]
    for path, model, field in (("/ask", "AskRequest", "question"), ("/v1/chat/completions", "ChatCompletionRequest", "messages")):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"}
        assert field in components[model]["required"]
    refs = {ref for ref in json.dumps(schema).split('"$ref": "')[1:]}
    assert all(ref.split('"')[0].rsplit("/", 1)[1] in components for ref in refs)


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


def test_metrics_count_requests_stages_and_tokens(server):
    from prometheus_client.parser import text_string_to_metric_families

    answered = httpx.post(f"{server}/ask", json={"question": "Where is Normandy?", "max_tokens": 8}, timeout=120).json()
    httpx.post(f"{server}/ask", json={"question": ""}, timeout=60)
    response = httpx.get(f"{server}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert samples[("ragtune_http_requests_total", (("method", "POST"), ("route", "/ask"), ("status", "200")))] >= 1
    assert samples[("ragtune_http_requests_total", (("method", "POST"), ("route", "/ask"), ("status", "400")))] >= 1
    for stage in ("retrieval", "packing", "generation"):
        assert samples[("ragtune_stage_duration_seconds_count", (("stage", stage),))] >= 1
    completion_tokens = samples[("ragtune_tokens_total", (("kind", "completion"), ("model", BASE_MODEL)))]
    assert completion_tokens >= answered["usage"]["completion_tokens"] > 0


def test_embeddings_are_the_vectors_the_index_holds(client, server, squad_index):
    import numpy as np

    from indexer.snapshot import IndexSnapshot

    snapshot = IndexSnapshot(squad_index)
    chunks = snapshot.all_chunks()[:5]
    texts = [f"{c.context}\n{c.text}" if c.context else c.text for c in chunks]  # what the indexer embedded
    stored = np.vstack([snapshot.index.reconstruct(c.id) for c in chunks])
    model = "sentence-transformers/all-MiniLM-L6-v2"

    response = client.embeddings.create(model=model, input=texts)  # the openai client asks for base64
    served = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert served.shape == stored.shape
    assert [d.index for d in response.data] == list(range(5)) and response.usage.prompt_tokens > 5 * 20
    floats = httpx.post(f"{server}/v1/embeddings", json={"model": model, "input": texts[0], "encoding_format": "float"}).json()
    alone = np.array(floats["data"][0]["embedding"], dtype=np.float32)
    if snapshot.manifest.embedding.backend == "torch":
        assert np.abs(served - stored).max() < 1e-5 and np.abs(alone - stored[0]).max() < 1e-5
    else:  # int8: activation scales are per batch, so a vector moves a little with the texts embedded beside it
        assert np.sum(served * stored, axis=1).min() > 0.99 and float(alone @ stored[0]) > 0.99
    again = client.embeddings.create(model=model, input=texts)  # the same input gives the same vectors
    assert np.array_equal(np.array([d.embedding for d in again.data], dtype=np.float32), served)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    too_long = httpx.post(f"{server}/v1/embeddings", json={"model": model, "input": "word " * 400})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"


def test_text_completions_answer_from_the_index(client):
    """POST /v1/completions, the path LlamaIndex's OpenAILike takes by default: the prompt is the question."""
    response = client.completions.create(model=BASE_MODEL, prompt="Who was the duke in the battle of Hastings?", max_tokens=30)
    assert response.object == "text_completion" and "William" in response.choices[0].text
    assert response.usage.prompt_tokens > 50 and response.choices[0].finish_reason in ("stop", "length")
    assert any(s["doc_id"].startswith("squad.jsonl#Normans-") for s in response.model_extra["sources"])

    bare = client.completions.create(model=BASE_MODEL, prompt="Say hello.", max_tokens=5, extra_body={"retrieval": {"enabled": False}})
    assert bare.model_extra["sources"] == [] and bare.usage.prompt_tokens < 50

    chunks = list(client.completions.create(model=BASE_MODEL, prompt="In what country is Normandy located?", max_tokens=20,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip()
    assert chunks[0].model_extra["sources"] and chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model=BASE_MODEL, prompt="x", logprobs=2)
    with pytest.raises(openai.BadRequestError, match="one prompt"):
        client.completions.create(model=BASE_MODEL, prompt=["a", "b"])


def test_structured_output_on_the_embedded_engine(client):
    """response_format enforced token by token (xgrammar): valid JSON, and for a schema, JSON that matches it."""
    schema = {"type": "object", "properties": {"duke": {"type": "string", "maxLength": 40}, "year": {"type": "integer"}},
              "required": ["duke", "year"], "additionalProperties": False}
    response = client.chat.completions.create(
        model=BASE_MODEL, max_tokens=60,
        messages=[{"role": "user", "content": "Who was the duke in the battle of Hastings, and in which year?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "battle", "schema": schema}},
    )
    answer = json.loads(response.choices[0].message.content)
    assert set(answer) == {"duke", "year"} and isinstance(answer["duke"], str) and isinstance(answer["year"], int)
    assert response.model_extra["sources"]  # retrieval ran as usual

    stream = client.chat.completions.create(
        model=BASE_MODEL, max_tokens=40, stream=True, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe Normandy as JSON."}],
    )
    chunks = [c for c in stream if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    if chunks[-1].choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut by max_tokens: still the start of an object
        assert text.startswith("{")


VICTORIA = [{"role": "user", "content": "Tell me about Victoria in Australia."},
            {"role": "assistant", "content": "Victoria is a state in the south-east of Australia."}]


def test_a_follow_up_question_retrieves_with_the_conversation(client):
    follow_up = {"role": "user", "content": "What is its largest city?"}
    alone = client.chat.completions.create(model=BASE_MODEL, messages=[follow_up], max_tokens=2)
    assert not alone.model_extra["sources"][0]["doc_id"].endswith("#Victoria_(Australia)-5")  # "its" is nobody's
    answered = client.chat.completions.create(model=BASE_MODEL, messages=[*VICTORIA, follow_up], max_tokens=2)
    assert answered.model_extra["sources"][0]["doc_id"].endswith("#Victoria_(Australia)-5")  # the paragraph on Melbourne
    ledger = answered.model_extra["ledger"]
    assert ledger["query"] == "Tell me about Victoria in Australia.\nWhat is its largest city?"
    assert ledger["query_from"] == "prepended" and ledger["dropped_turns"] == 0


def test_a_long_conversation_drops_its_oldest_turns_not_the_question(client):
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i}: " + "filler " * 200} for i in range(12)]
    question = {"role": "user", "content": "Who was the duke in the battle of Hastings?"}
    answered = client.chat.completions.create(model=BASE_MODEL, messages=[*history, question], max_tokens=8)
    ledger = answered.model_extra["ledger"]
    assert ledger["dropped_turns"] >= 2 and ledger["dropped_turns"] % 2 == 0  # whole exchanges, oldest first
    assert ledger["packed"] and ledger["budget"] >= 256  # passages kept their floor (prompt.min_passage_tokens)
    assert answered.usage.prompt_tokens + 8 <= 2048
    bare = client.chat.completions.create(model=BASE_MODEL, messages=[*history, question], max_tokens=8,
                                          extra_body={"retrieval": {"enabled": False}})
    assert bare.model_extra["ledger"]["dropped_turns"] >= 1 and bare.usage.prompt_tokens + 8 <= 2048


def test_the_model_can_rewrite_a_follow_up_into_a_standalone_query(squad_index, embedder):
    """retrieval.followups = model: the embedded model writes the query (or, when its rewrite is unusable, the
    cheap prepend is used); either way the ledger says which."""
    import asyncio

    from ragtune.settings import GenerationSettings, get_settings
    from service.generation.local import LocalGenerator
    from service.pipeline import build_pipeline

    settings = get_settings(retrieval={"followups": "model"})
    settings.index.dir = squad_index
    generator = LocalGenerator(GenerationSettings())
    rag = build_pipeline(settings, embedder, generator)
    question = "What is its largest city?"
    query, how = asyncio.run(rag.search_query(question, VICTORIA))
    assert how in ("rewritten", "prepended (rewrite unusable)") and query.strip()
    if how == "rewritten":
        assert "\n" not in query and len(query) < 400
    assert asyncio.run(rag.search_query(question, [])) == (question, "question")  # nothing to follow up on
    prepared = rag.prepare(question, VICTORIA, None, 8, query=query)
    assert prepared.ledger.query == query


@pytest.fixture(scope="module")
def transformers_client(tmp_path_factory, squad_index):
    """The service on the transformers engine, the one that computes logprobs (the default engine here is OpenVINO's)."""
    with serving(squad_index, tmp_path_factory.mktemp("service-pt"), RAGTUNE_GENERATION__ENGINE="transformers") as served:
        yield openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused")


def test_logprobs_on_the_transformers_engine(transformers_client):
    """From the scores the engine computes anyway (the model's, before penalties, as vLLM reports them): greedy
    decoding without a penalty picks each step's likeliest token."""
    client = transformers_client
    response = client.chat.completions.create(model=BASE_MODEL, messages=[{"role": "user", "content": "Where is Normandy?"}],
                                              max_tokens=6, logprobs=True, top_logprobs=3, frequency_penalty=0)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for step in content:
        assert step.logprob <= 0 and len(step.top_logprobs) == 3
        assert step.top_logprobs[0].token == step.token and abs(step.top_logprobs[0].logprob - step.logprob) < 1e-6
        assert step.top_logprobs[0].logprob >= step.top_logprobs[1].logprob >= step.top_logprobs[2].logprob


def test_penalties_stop_a_greedy_loop_on_the_embedded_engine(client):
    """frequency_penalty (OpenAI's) and repetition_penalty (vLLM's), honoured by the embedded engine too: an answer
    that loops under greedy decoding repeats itself less with either."""
    ask = dict(model=BASE_MODEL, messages=[{"role": "user", "content": "Write the word 'hello' twenty times."}],
               max_tokens=40, temperature=0)
    off = {"retrieval": {"enabled": False}}

    def repeated(response) -> float:  # the share of words that occurred before
        words = response.choices[0].message.content.lower().split()
        return 1 - len(set(words)) / max(1, len(words))

    plain = repeated(client.chat.completions.create(**ask, frequency_penalty=0, extra_body=off))
    assert plain > 0.5  # the loop this is about
    assert repeated(client.chat.completions.create(**ask, frequency_penalty=0, extra_body={**off, "repetition_penalty": 1.5})) < plain
    assert repeated(client.chat.completions.create(**ask, frequency_penalty=1.0, extra_body=off)) < plain  # the default
    assert repeated(client.chat.completions.create(**ask, extra_body=off)) < plain
