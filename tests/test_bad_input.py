"""A catalogue of bad input over every route, against the app with the real embedded engine,
embedder and index: each case is a 4xx in OpenAI's error shape, fast, and the service still
answers afterwards. Limits are settings (service.*); the defaults are what is tested."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import time

import psutil
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.adapters import fake_adapter
from tests.helpers import raw_multipart

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CLIENT = {"Authorization": "Bearer client-key"}
ADMIN = {"Authorization": "Bearer admin-key"}


@pytest.fixture(scope="module")
def generator():
    from ragtune.settings import GenerationSettings
    from service.generation.local import LocalGenerator

    return LocalGenerator(GenerationSettings())


@pytest.fixture(scope="module")
def client(tmp_path_factory, squad_index, embedder, generator):
    from ragtune.settings import get_settings

    settings = get_settings(service={"api_keys": ["client-key"], "admin_api_key": "admin-key"})
    settings.index.dir = squad_index
    settings.adapters.dir = tmp_path_factory.mktemp("adapters")
    with TestClient(create_app(settings, generator, embedder), raise_server_exceptions=False) as test_client:
        yield test_client


def chat(content="Where is Normandy?", **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **fields}


def ask(question="Where is Normandy?", **fields) -> dict:
    return {"question": question, "max_tokens": 2, **fields}


HISTORY = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 400} for i in range(10)]

# (route, body or raw bytes, extra headers, status, param, code, message fragment)
CASES = [
    ("/ask", ask(stop=["x" * 100_000]), {}, 400, "stop", "invalid_value", "service.max_stop_chars"),
    ("/ask", ask(stop=[f"s{i}" for i in range(1000)]), {}, 400, "stop", "invalid_value", "1000 stop strings"),
    ("/ask", ask(stop=[""]), {}, 400, "stop", "invalid_value", "empty stop string"),
    ("/v1/chat/completions", chat(stop="y" * 4000), {}, 400, "stop", "invalid_value", "4000 characters"),
    ("/ask", ask(seed=2**64), {}, 400, "seed", "invalid_value", "less than"),
    ("/ask", ask(seed=10**30), {}, 400, "seed", "invalid_value", "less than"),
    ("/v1/chat/completions", chat(seed=-2**63 - 1), {}, 400, "seed", "invalid_value", "greater than"),
    ("/v1/chat/completions", {**chat(), "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     {}, 400, "messages.0.content.0.text", "invalid_value", "string"),
    ("/v1/chat/completions", {**chat(), "messages": [{"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}]},
     {}, 400, "messages.0.content.0.text", "invalid_value", "string"),
    ("/v1/chat/completions", {**chat(), "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     {}, 400, "messages.0.content.0.type", "invalid_value", "'text'"),
    ("/ask", ask(filters={"metadata": {f"k{i}": i for i in range(999)}}), {}, 400, "filters.metadata", "invalid_value", "999 keys"),
    ("/ask", ask(filters={"doc_ids": [f"d{i}" for i in range(40_000)]}), {}, 400, "filters.doc_ids", "invalid_value", "40000"),
    ("/v1/chat/completions", chat(stream="yes"), {}, 400, "stream", "invalid_value", "boolean"),
    ("/ask", ask(max_tokens="3"), {}, 400, "max_tokens", "invalid_value", "integer"),
    ("/ask", ask(top_k="5"), {}, 400, "top_k", "invalid_value", "integer"),
    ("/ask", ask(top_k=100), {}, 400, "top_k", "invalid_value", "service.max_top_k"),
    ("/v1/chat/completions", chat(retrieval={"top_k": 50}), {}, 400, "retrieval.top_k", "invalid_value", "max_top_k"),
    ("/v1/chat/completions", {**chat(), "messages": [{"role": "system", "content": "word " * 5000}, *HISTORY,
                                                     {"role": "user", "content": "and then?"}],
                              "retrieval": {"enabled": False}}, {}, 400, "messages", "context_length_exceeded",
     "This model's maximum context length is 2048 tokens. However, you requested"),
    ("/v1/chat/completions", chat(max_tokens=5000, retrieval={"enabled": False}), {}, 400, "max_tokens",
     "context_length_exceeded", "max_tokens 5000"),
    ("/ask", ask(max_tokens=2048), {}, 400, "max_tokens", "context_length_exceeded", "no room"),
    ("/v1/chat/completions", chat(tools=[{"type": "function", "function": {"name": "f"}}]), {}, 400, "tools",
     "invalid_value", "not supported"),
    ("/v1/chat/completions", chat(response_format={"type": "xml"}), {}, 400, "response_format", "invalid_value",
     "json_object"),
    ("/v1/chat/completions", chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}), {}, 400,
     "response_format.json_schema", "invalid_value", "needs a name"),
    ("/v1/chat/completions", chat(top_logprobs=2), {}, 400, "top_logprobs", "invalid_value", "needs logprobs"),
    ("/v1/chat/completions", chat(logprobs=True, top_logprobs=50), {}, 400, "top_logprobs", "invalid_value", "0 to 20"),
    ("/v1/chat/completions", chat(logprobs=True, stream=True), {}, 400, "logprobs", "invalid_value", "without stream"),
    ("/v1/chat/completions", chat(logit_bias={"28": -100}), {}, 400, "logit_bias", "invalid_value", "not supported"),
    ("/v1/chat/completions", chat(frequency_penalty=3), {}, 400, "frequency_penalty", "invalid_value", "less than or equal to 2"),
    ("/v1/chat/completions", chat(n=2), {}, 400, "n", "invalid_value", "generates one choice"),
    ("/v1/chat/completions", chat(bogus=1), {}, 400, "bogus", "invalid_value", "unknown field"),
    ("/ask", ask(bogus=1), {}, 400, "bogus", "invalid_value", "Extra inputs"),
    ("/v1/chat/completions", {**chat(), "messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]},
     {}, 400, "messages[1].role", "invalid_value", "tool"),
    ("/v1/chat/completions", chat(content="z" * 40_000), {}, 400, "messages[0].content", "invalid_value", "max_message_chars"),
    ("/v1/chat/completions", {**chat(), "messages": [{"role": "user", "content": "q"}] * 300}, {}, 400, "messages",
     "invalid_value", "300 messages"),
    ("/ask", ask(question="   "), {}, 400, "question", "invalid_value", "empty"),
    ("/ask", ask(question="q" * 5000), {}, 400, "question", "invalid_value", "max_question_chars"),
    ("/ask", b'{"question": "unterminated', {}, 400, None, "invalid_value", "not valid JSON"),
    ("/ask", b"[1, 2]", {}, 400, None, "invalid_value", "should be an object"),
    ("/ask", json.dumps(ask()).encode(), {"content-type": "text/plain"}, 415, None, "unsupported_media_type", "JSON"),
    ("/ask", b"{}", {"content-type": ""}, 415, None, "unsupported_media_type", "Content-Type"),
    ("/ask", json.dumps(ask(question="x " * 600_000)).encode(), {}, 413, None, "request_too_large", "max_body_bytes"),
    # values the engines' float32 makes 0
    ("/ask", ask(top_p=1e-300), {}, 400, "top_p", "invalid_value", "greater than or equal to 0.000001"),
    ("/v1/chat/completions", chat(repetition_penalty=1e-300), {}, 400, "repetition_penalty", "invalid_value", "0.000001"),
    ("/v1/chat/completions", chat(repetition_penalty=5e-324), {}, 400, "repetition_penalty", "invalid_value", "0.000001"),
    ("/ask", ask(filters={"source_prefix": "s" * 50_001}), {}, 400, "filters.source_prefix", "invalid_value", "at most 4096"),
    *[("/v1/chat/completions", chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}),
       {}, 400, "response_format.json_schema.schema", "invalid_value", fragment)
      for schema, fragment in (({"type": "nope"}, 'Unsupported type "nope"'), ({"$ref": "#/defs/nothing"}, "Cannot find"),
                               ({"type": "string", "pattern": "(["}, "Unclosed"),
                               ({"type": "string", "pattern": "(a)\\1"}, "Backreference"),
                               ({"type": "array", "minItems": 5, "maxItems": 2}, "minItems is greater than maxItems"))],
    ("/v1/responses", {"model": MODEL, "input": "Where is Normandy?"}, {}, 404, None, "not_found", "POST /v1/chat/completions"),
]


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def still_answers(client) -> None:
    """The service still generates: a one-token answer to a short prompt (no passages, so it is quick)."""
    assert client.get("/v1/models", headers=CLIENT).status_code == 200
    quick = chat(content="Hi", max_tokens=1, retrieval={"enabled": False})
    assert client.post("/v1/chat/completions", json=quick, headers=CLIENT).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("route, body, headers, status, param, code, fragment", CASES,
                         ids=[f"{i}-{c[0]}-{c[5]}" for i, c in enumerate(CASES)])
def test_bad_request_is_a_clear_4xx_and_the_service_goes_on(client, route, body, headers, status, param, code, fragment):
    started = time.perf_counter()
    if isinstance(body, bytes):
        response = client.post(route, content=body, headers={**CLIENT, "content-type": "application/json", **headers})
    else:
        response = client.post(route, json=body, headers={**CLIENT, **headers})
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["param"] == param and error["code"] == code, error
    assert fragment in error["message"], error["message"]
    assert time.perf_counter() - started < 5, "a refused request must be refused fast"
    still_answers(client)


@pytest.mark.slow
def test_a_tiny_temperature_is_greedy_not_a_500(client):
    for temperature in (1e-300, 5e-324, 1e-6):
        response = client.post("/ask", json=ask(temperature=temperature, max_tokens=3), headers=CLIENT)
        assert response.status_code == 200, response.text


@pytest.mark.slow
def test_auth_and_method_errors_carry_their_headers(client):
    missing = client.post("/ask", json=ask())
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert error_of(missing)["code"] == "invalid_api_key"
    wrong_admin = client.get("/admin/adapters", headers=CLIENT)
    assert wrong_admin.status_code == 401 and wrong_admin.headers["www-authenticate"] == "Bearer"
    method = client.get("/ask", headers=CLIENT)
    assert method.status_code == 405 and method.headers["allow"] == "POST"
    error_of(method)
    assert error_of(client.get("/nope", headers=CLIENT))["message"] == "Not Found"


@pytest.mark.slow
def lora_weights(adapter) -> tuple[str, bytes]:
    return "adapter_model.safetensors", (adapter / "adapter_model.safetensors").read_bytes()


def test_adapter_uploads_are_checked_before_they_enter_the_registry(client, tmp_path):
    adapter = fake_adapter(tmp_path / "a")

    def upload(name, files):
        return client.put(f"/admin/adapters/{name}", headers=ADMIN, files=[("files", f) for f in files])

    config = ("adapter_config.json", (adapter / "adapter_config.json").read_bytes())
    random_weights = upload("random", [config, ("adapter_model.safetensors", os.urandom(2048))])
    assert random_weights.status_code == 400 and "not a safetensors file" in error_of(random_weights)["message"]
    registry_root = str(client.app.state.adapter_sync.registry.root)
    assert error_of(random_weights)["message"].startswith("the upload/adapter_model.safetensors")  # not the server's path
    assert registry_root not in error_of(random_weights)["message"]
    missing = client.post("/admin/adapters/nope/load", headers=ADMIN)
    assert missing.status_code == 404 and registry_root not in error_of(missing)["message"]
    stray = upload("stray", [config, ("evil.sh", b"rm -rf /")])
    assert stray.status_code == 400 and error_of(stray)["param"] == "files"
    newline = upload("abc%0A", [config])
    assert newline.status_code == 400 and "not allowed" in error_of(newline)["message"]
    for name, why in ((b"a\x00b.json", "control characters"), (b"n" * 256, "256 bytes; the limit is 255")):
        body, headers = raw_multipart(name, b"{}")
        odd = client.put("/admin/adapters/odd", headers={**ADMIN, **headers}, content=body)
        assert odd.status_code == 400 and why in error_of(odd)["message"], odd.text
    deep = upload("deep", [("adapter_config.json", b"[" * 100_000 + b"]" * 100_000), lora_weights(adapter)])
    assert deep.status_code == 400 and "nested too deeply" in error_of(deep)["message"], deep.text
    assert client.get("/admin/adapters", headers=ADMIN).json()["adapters"] == []
    assert not list((client.app.state.adapter_sync.registry.root / ".uploads").glob("*"))  # nothing left behind
    still_answers(client)


ADMIN_CASES = [  # (method, path, headers, status, code, message fragment)
    ("POST", "/admin/adapters/nope/load", ADMIN, 404, "adapter_not_found", "no adapter named 'nope'"),
    ("POST", "/admin/adapters/a%0A/load", ADMIN, 400, "invalid_value", "not allowed"),
    ("POST", "/admin/adapters/a..b/unload", ADMIN, 400, "invalid_value", "not allowed"),
    ("DELETE", "/admin/adapters/nope", ADMIN, 404, "adapter_not_found", "no adapter named 'nope'"),
    ("POST", "/admin/adapters/sync", CLIENT, 401, "invalid_api_key", "admin_api_key"),
    ("GET", "/admin/adapters", {}, 401, "invalid_api_key", "admin_api_key"),
    ("PUT", "/admin/adapters/x", {**ADMIN, "content-type": "application/json"}, 415, "unsupported_media_type", "multipart"),
]


@pytest.mark.slow
@pytest.mark.parametrize("method, path, headers, status, code, fragment", ADMIN_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in ADMIN_CASES])
def test_bad_admin_requests_are_clear_4xx(client, method, path, headers, status, code, fragment):
    response = client.request(method, path, headers=headers, content=b"{}" if method == "PUT" else None)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["code"] == code and fragment in error["message"], error
    still_answers(client)


@pytest.mark.slow
def test_an_adapter_uploaded_over_http_is_served(client, tmp_path):
    """Checked against the real base model's shapes, stored, published and loaded by the embedded engine."""
    adapter = fake_adapter(tmp_path / "ok")
    files = [("files", (name, (adapter / name).read_bytes())) for name in ("adapter_config.json", "adapter_model.safetensors")]
    uploaded = client.put("/admin/adapters/uploaded?publish=true", headers=ADMIN, files=files)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["adapter"]["published"] and "uploaded" in uploaded.json()["models"]
    answer = client.post("/ask", json=ask(model="uploaded"), headers=CLIENT)
    assert answer.status_code == 200 and answer.json()["model"] == "uploaded"
    assert client.delete("/admin/adapters/uploaded", headers=ADMIN).status_code == 200
    assert "uploaded" not in [m["id"] for m in client.get("/v1/models", headers=CLIENT).json()["data"]]


def settle() -> None:
    """Collect garbage and hand glibc's freed pages back, so RSS counts what is alive (freed memory kept
    in the allocator's arenas after many earlier tests read as growth otherwise)."""
    gc.collect()
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@pytest.mark.slow
def test_the_worst_allowed_request_keeps_memory_flat(client):
    """The longest stop strings the limits allow, repeated: no table grows with them, neither kept between
    requests (resident memory flat over a second round of 30) nor built for one (the process's peak)."""
    import resource

    worst = ask(stop=[chr(0x4E00 + i) * 64 for i in range(4)], max_tokens=12, temperature=0.7, seed=1)
    process = psutil.Process()

    def round_of_30():
        for _ in range(15):
            assert client.post("/ask", json=worst, headers=CLIENT).status_code == 200
            assert client.post("/ask", json=ask(stop=["x" * 100_000]), headers=CLIENT).status_code == 400
        settle()  # garbage and freed pages are not growth
        return process.memory_info().rss

    settle()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    after_first = round_of_30()  # the first round also pays first-use allocations (pools, caches)
    grown = (round_of_30() - after_first) / 2**20
    peak_grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10 - peak_before
    assert grown < 40, f"RSS grew {grown:.0f} MiB over the second 30 requests"
    assert peak_grown < 512, f"peak RSS rose {peak_grown:.0f} MiB while serving them"


@pytest.mark.slow
def test_a_stop_string_still_stops_the_local_engine(client):
    free = client.post("/ask", json=ask(max_tokens=40), headers=CLIENT).json()["answer"]
    assert len(free) >= 8
    stop = free[4:7]
    stopped = client.post("/ask", json=ask(max_tokens=40, stop=[stop]), headers=CLIENT).json()
    assert stopped["answer"] == free[:4].strip() and stopped["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] < 40


@pytest.mark.slow
def test_the_openapi_document_describes_the_errors(client):
    schema = client.get("/openapi.json").json()
    for path, method in (("/ask", "post"), ("/v1/chat/completions", "post"), ("/admin/adapters/{name}/load", "post")):
        responses = schema["paths"][path][method]["responses"]
        assert "400" in responses and "422" not in responses
        assert responses["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
