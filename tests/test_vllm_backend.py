"""The vLLM backend against a server speaking vLLM's protocol (backed by the embedded engine).

Every process is real: the vLLM-protocol server, the ragtune service in front of it, and
the official openai client in front of that. Faults (slow, failing, down, missing
/tokenize) are injected in the vLLM-protocol server, never in the client under test.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import Server, free_port, ragtune_cmd, ragtune_env, run_ragtune

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MAX_MODEL_LEN = 1536  # below ragtune's default window: the service must adopt vLLM's


def vllm_server(port: int, log) -> Server:
    cmd = [sys.executable, str(Path(__file__).with_name("vllm_protocol_server.py")), "--port", str(port), "--max-model-len", str(MAX_MODEL_LEN)]
    return Server(cmd, port, log)


def ragtune_on_vllm(index, urls: list[str], log, read_timeout: float = 8.0) -> Server:
    port = free_port()
    env = ragtune_env(
        RAGTUNE_GENERATION__BACKEND="vllm",
        RAGTUNE_GENERATION__VLLM__URLS=json.dumps(urls),
        RAGTUNE_GENERATION__VLLM__READ_TIMEOUT=str(read_timeout),
        RAGTUNE_GENERATION__VLLM__CONNECT_TIMEOUT="1",
    )
    return Server(ragtune_cmd("serve", "--index-dir", str(index), "--port", str(port)), port, log, env)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("vllm-logs")


def warm_up(server: Server) -> None:
    """One small request, so the first timed one is not a cold start."""
    httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, timeout=120)


@pytest.fixture(scope="module")
def vllm(logs):
    with vllm_server(free_port(), logs / "vllm.log") as server:
        server.start("/health")
        warm_up(server)
        yield server


@pytest.fixture(scope="module")
def service(squad_index, vllm, logs):
    # The first replica is never up: every other request must skip it and still succeed.
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with ragtune_on_vllm(squad_index, [dead, f"{vllm.url}/v1"], logs / "ragtune.log") as server:
        yield server.start("/ready").url


@pytest.fixture
def faults(vllm):
    def inject(**values):
        httpx.post(f"{vllm.url}/_test/faults", json=values).raise_for_status()

    yield inject
    inject()


@pytest.fixture
def client(service):
    return openai.OpenAI(base_url=f"{service}/v1", api_key="unused", max_retries=0)


# -- the client's requests are ones vLLM accepts (fast, no network) ---------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_request_bodies_fit_vllms_request_model(stream):
    from ragtune.settings import GenerationSettings
    from service.generation.base import GenerationParams
    from service.generation.vllm import VllmGenerator
    from tests.vllm_protocol_server import ChatCompletionRequest

    generator = VllmGenerator(GenerationSettings(backend="vllm"))
    params = GenerationParams(max_tokens=20, temperature=0.3, stop=("\n\n",), seed=7, model="my-adapter",
                              repetition_penalty=1.1, frequency_penalty=0.5, presence_penalty=0.2)
    body = generator._body([{"role": "user", "content": "hi"}], params, stream)
    parsed = ChatCompletionRequest(**json.loads(json.dumps(body)))  # extra fields would be refused
    assert parsed.model == "my-adapter" and parsed.max_tokens == 20 and parsed.stop == ["\n\n"]
    assert (parsed.repetition_penalty, parsed.frequency_penalty, parsed.presence_penalty) == (1.1, 0.5, 0.2)
    assert (parsed.stream_options is not None) is stream


def test_server_root_accepts_both_url_styles():
    from service.generation.vllm import server_root

    assert server_root("http://h:8000/v1/") == server_root("http://h:8000") == "http://h:8000"


# -- end to end -------------------------------------------------------------------------------
@pytest.mark.slow
def test_chat_completion_through_vllm(client):
    response = client.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "Who was the duke in the battle of Hastings?"}], max_tokens=40,
    )
    assert "William" in response.choices[0].message.content
    assert response.usage.prompt_tokens > 50 and response.usage.completion_tokens > 0
    assert response.model_extra["sources"]


@pytest.mark.slow
def test_streaming_through_vllm(client):
    chunks = list(client.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": "In what country is Normandy located?"}],
        max_tokens=30, stream=True, stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and not text.startswith(" ")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


@pytest.mark.slow
def test_budget_is_counted_by_vllms_tokenizer_and_window(service):
    body = httpx.post(f"{service}/ask", json={"question": "What is the Sky UK satellite service called?", "max_tokens": 30}, timeout=120).json()
    ledger = body["ledger"]
    assert ledger["context_window"] == MAX_MODEL_LEN  # learned from vLLM's /v1/models
    assert ledger["prompt_tokens"] == body["usage"]["prompt_tokens"]  # /tokenize counted what vLLM then saw
    assert ledger["prompt_tokens"] <= MAX_MODEL_LEN - ledger["reserved_answer_tokens"]


@pytest.mark.slow
def test_models_and_ready(client, service):
    cards = client.models.list().data
    assert [m.id for m in cards if m.kind == "generation"] == [BASE_MODEL]
    assert [m.kind for m in cards if m.id != BASE_MODEL] == ["embedding"]  # the embedder retrieval uses
    assert httpx.get(f"{service}/ready").json()["checks"]["backend"] == "ok"


@pytest.mark.slow
def test_backend_error_is_a_502_in_openai_shape(client, faults):
    faults(status=500)
    with pytest.raises(openai.APIStatusError) as caught:  # a question the index covers: one it does not is declined
        client.chat.completions.create(model=BASE_MODEL, messages=[{"role": "user", "content": "Where is Normandy?"}],
                                       max_tokens=5)
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "backend_error" and "injected failure" in caught.value.body["message"]


@pytest.mark.slow
def test_slow_backend_is_a_504_not_a_hang(service, faults):
    faults(delay=30)
    started = time.monotonic()
    response = httpx.post(f"{service}/ask", json={"question": "Where is Normandy?", "max_tokens": 5}, timeout=60)
    assert response.status_code == 504 and response.json()["error"]["code"] == "backend_timeout"
    assert time.monotonic() - started < 20  # read_timeout is 8 s


@pytest.mark.slow
def test_slow_stream_ends_with_an_error_event(service, faults):
    faults(delay=30)
    with httpx.stream("POST", f"{service}/ask", json={"question": "Where is Normandy?", "stream": True}, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "backend_timeout"


@pytest.mark.slow
def test_without_tokenize_the_budget_falls_back_to_tiktoken(squad_index, vllm, faults, logs, tmp_path):
    faults(no_tokenize=True)
    with ragtune_on_vllm(squad_index, [f"{vllm.url}/v1"], tmp_path / "ragtune.log") as server:
        server.start("/ready")
        body = httpx.post(f"{server.url}/ask", json={"question": "Where is Normandy?", "max_tokens": 20}, timeout=120).json()
    ledger = body["ledger"]
    # The estimate is deliberately high: it may not match, but it must not undercount.
    assert ledger["prompt_tokens"] >= body["usage"]["prompt_tokens"]
    assert "tiktoken" in (tmp_path / "ragtune.log").read_text()


@pytest.mark.slow
def test_down_backend_gives_503_and_the_service_recovers_by_itself(squad_index, logs, tmp_path):
    port = free_port()
    # A generous read timeout: what is tested is refusal while down (a connect error, 1 s) and recovery, not
    # speed; a first RAG-sized prompt on a just-restarted engine can take longer than the usual 8 s here.
    with ragtune_on_vllm(squad_index, [f"http://127.0.0.1:{port}/v1"], tmp_path / "ragtune.log", read_timeout=60) as server:
        server.start("/health")
        assert httpx.get(f"{server.url}/ready").status_code == 503
        started = time.monotonic()
        down = httpx.post(f"{server.url}/ask", json={"question": "Where is Normandy?"}, timeout=60)
        assert down.status_code == 503 and down.json()["error"]["code"] == "backend_unavailable"
        assert time.monotonic() - started < 10
        with vllm_server(port, tmp_path / "vllm.log") as backend:
            backend.start("/health")
            warm_up(backend)  # recovery is under test, not a cold engine's first pass against the 8 s timeout
            assert httpx.get(f"{server.url}/ready").status_code == 200
            up = httpx.post(f"{server.url}/ask", json={"question": "Who was the duke in the battle of Hastings?", "max_tokens": 30}, timeout=120)
            assert up.status_code == 200 and "William" in up.json()["answer"]


@pytest.mark.slow
def test_ragtune_ask_on_vllm_answers_and_a_down_backend_is_one_clear_line(squad_index, vllm):
    def ask(url: str):
        return run_ragtune(
            "ask", "Who was the duke in the battle of Hastings?", "--index-dir", str(squad_index), "--max-tokens", "30",
            RAGTUNE_GENERATION__BACKEND="vllm", RAGTUNE_GENERATION__VLLM__URLS=json.dumps([url]),
            RAGTUNE_GENERATION__VLLM__CONNECT_TIMEOUT="1",
        )

    answered = ask(f"{vllm.url}/v1")
    assert answered.returncode == 0, answered.stderr
    assert "William" in answered.stdout and "[1] " in answered.stdout
    down = ask(f"http://127.0.0.1:{free_port()}/v1")
    assert down.returncode == 1 and "error: the vllm generation backend is not ready" in down.stderr
    assert "Traceback" not in down.stderr
