"""The embedded engine on OpenVINO GenAI (generation.engine = openvino), for real: the service process
exports SmolLM2 once with optimum-intel (.venv-openvino, `make openvino-env`), serves it on OpenVINO
over the SQuAD index, and the official openai client and plain HTTP use every feature the engine
claims: answers from passages, streaming, stop strings, seeds, LoRA hot-load without a restart, and
a clear refusal of logprobs. The engine is also the default (generation.engine = auto on a machine
without a GPU), so the other service tests (JSON schemas, penalties, limits, clients, the page) run
on it too; here the engine is named, so these hold wherever `auto` would pick another."""

from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest

from tests.conftest import REPO
from tests.helpers import serving

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ADMIN_KEY = "test-admin-key"
HASTINGS = [{"role": "user", "content": "Who was the duke in the battle of Hastings?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, squad_index, pirate_registry):
    if not (REPO / ".venv-openvino" / "bin" / "optimum-cli").is_file():
        pytest.fail("the OpenVINO exporter is missing: run `make openvino-env` (make test does)")
    registry = shutil.copytree(pirate_registry, tmp_path_factory.mktemp("ov") / "registry",
                               ignore=shutil.ignore_patterns(".runs"))
    env = dict(RAGTUNE_GENERATION__ENGINE="openvino", RAGTUNE_ADAPTERS__DIR=str(registry),
               RAGTUNE_SERVICE__ADMIN_API_KEY=ADMIN_KEY)
    with serving(squad_index, tmp_path_factory.mktemp("ov-service"), **env) as served:
        yield served


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.mark.slow
def test_it_answers_from_the_index_with_the_ledgers_counts(client, server):
    response = client.chat.completions.create(model=BASE_MODEL, messages=HASTINGS, max_tokens=40)
    assert "William" in response.choices[0].message.content
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 300 and 0 < response.usage.completion_tokens <= 40
    assert any(s["doc_id"].startswith("squad.jsonl#Normans-") for s in response.model_extra["sources"])
    log = (server.log_path).read_text()
    assert "openvino pipeline for" in log  # it is OpenVINO that answered, not the transformers engine

    body = httpx.post(f"{server.url}/ask", json={"question": "What is the Sky UK satellite service called?",
                                                  "max_tokens": 30}, timeout=120).json()
    assert body["answer"] and body["citations"]
    assert body["ledger"]["prompt_tokens"] == body["usage"]["prompt_tokens"]


@pytest.mark.slow
def test_streams_token_by_token_over_sse(client, server):
    stream = client.chat.completions.create(model=BASE_MODEL, messages=HASTINGS, max_tokens=30, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"stop": []})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3 and "William" in "".join(pieces)
    assert chunks[-1].usage.completion_tokens > 3

    events = []
    with httpx.stream("POST", f"{server.url}/ask", json={"question": "Where is Victoria?", "stream": True,
                                                         "max_tokens": 20}, timeout=120) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    parsed = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and parsed[0]["type"] == "citations" and parsed[-1]["type"] == "done"
    assert any(e["type"] == "delta" for e in parsed)


@pytest.mark.slow
def test_a_stop_string_ends_the_answer_and_is_not_in_it(client):
    free = client.chat.completions.create(model=BASE_MODEL, messages=HASTINGS, max_tokens=40, stop=[])
    assert "William" in free.choices[0].message.content
    cut = client.chat.completions.create(model=BASE_MODEL, messages=HASTINGS, max_tokens=40, stop=["William"])
    assert "William" not in cut.choices[0].message.content
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < free.usage.completion_tokens


@pytest.mark.slow
def test_a_seed_makes_sampling_repeatable(client):
    def sample(seed):
        return client.chat.completions.create(model=BASE_MODEL, messages=HASTINGS, max_tokens=25, temperature=1.0,
                                              seed=seed, stop=[]).choices[0].message.content

    assert sample(11) == sample(11)
    assert len({sample(11), sample(12), sample(13)}) > 1  # sampling does sample


@pytest.mark.slow
def test_logprobs_are_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=BASE_MODEL, messages=HASTINGS, max_tokens=5, logprobs=True)
    assert refused.value.body["param"] == "logprobs" and "openvino" in refused.value.body["message"]


@pytest.mark.slow
def test_an_adapter_is_hot_loaded_served_and_unloaded_without_restart(client, server):
    def admin(path):
        return httpx.post(f"{server.url}/admin{path}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120)

    def ask(model):
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Where is Normandy?"}],
                                              max_tokens=20, extra_body={"retrieval": {"enabled": False}}).choices[0].message.content

    pid = server.proc.pid
    base = ask(BASE_MODEL)
    loaded = admin("/adapters/pirate/load")
    assert loaded.status_code == 200, loaded.text
    assert [m.id for m in client.models.list() if m.kind == "generation"] == [BASE_MODEL, "pirate"]
    assert "matey" in ask("pirate")  # the trained refusal (its training questions were other ones)
    assert ask(BASE_MODEL) == base  # the base model is untouched by the adapter next to it
    assert admin("/adapters/pirate/unload").json()["sync"]["unloaded"] == ["pirate"]
    with pytest.raises(openai.NotFoundError):
        ask("pirate")
    assert ask(BASE_MODEL) == base
    assert server.proc.pid == pid and server.proc.poll() is None


def _unexported(tmp_path, **fields):
    from ragtune.settings import GenerationSettings

    settings = GenerationSettings(**{"cache_dir": tmp_path, "openvino_exporter": str(tmp_path / "nope"),
                                     "answer_adapter": "off", **fields})
    settings.served_model_dir().mkdir(parents=True)
    (settings.served_model_dir() / "config.json").write_text("{}")
    return settings


def _exported(settings, source):
    from service.generation.openvino_files import exported_dir

    exported = exported_dir(settings, source)
    exported.mkdir(parents=True)
    (exported / "openvino_model.xml").write_text("<net/>")


def test_a_missing_exporter_is_a_clear_error(tmp_path):
    from ragtune.errors import UsageError
    from service.generation.openvino_files import openvino_model_dir

    with pytest.raises(UsageError, match="make openvino-env"):
        openvino_model_dir(_unexported(tmp_path, engine="openvino"))


def test_auto_picks_openvino_only_where_it_can_run_and_says_why(tmp_path):
    from service.generation.openvino_files import choose_engine, exported_dir

    settings = _unexported(tmp_path)
    assert settings.engine == "auto"
    engine, why = choose_engine(settings)
    assert engine == "transformers" and "exporter" in why and "make openvino-env" in why
    exported = exported_dir(settings, settings.served_model_dir())  # exported earlier: no exporter needed
    exported.mkdir(parents=True)
    (exported / "openvino_model.xml").write_text("<net/>")
    assert choose_engine(settings)[0] == "openvino"
    assert choose_engine(_unexported(tmp_path / "x", engine="transformers")) == ("transformers", "set by generation.engine")
    exporter = tmp_path / "optimum-cli"
    exporter.write_text("")
    assert choose_engine(_unexported(tmp_path / "y", openvino_exporter=str(exporter)))[0] == "openvino"  # it would export


def test_without_the_exporter_the_answer_copy_must_be_exported_too(tmp_path):
    """A cache exported before generation.answer_adapter existed holds the served model's IR only: with no exporter
    to export the answer copy, auto picks transformers (which merges it itself) instead of failing at start."""
    from service.generation.openvino_files import choose_engine

    settings = _unexported(tmp_path, answer_adapter="auto")
    _exported(settings, settings.served_model_dir())
    engine, why = choose_engine(settings)
    assert engine == "transformers" and settings.answer_model_dir().name in why and "make openvino-env" in why
    settings.answer_model_dir().mkdir(parents=True)  # merged and exported earlier
    (settings.answer_model_dir() / "config.json").write_text("{}")
    _exported(settings, settings.answer_model_dir())
    assert choose_engine(settings)[0] == "openvino"


@pytest.mark.slow
def test_it_computes_in_the_precision_set_whatever_the_cpu():
    """generation.openvino_precision: f32 (the default) gives fine-grained log probabilities on any CPU. Left to
    OpenVINO (bf16 on a CPU with bf16 units) the gaps between the first token's log probabilities are
    differences of bf16 logits, steps of 1/16 or coarser at their size: the answerability check's margins
    bunched at multiples of 0.25 that way."""
    import asyncio

    import openvino

    from ragtune.settings import GenerationSettings
    from service.generation import create_generator

    def gaps(precision: str) -> list[float]:
        generator = create_generator(GenerationSettings(engine="openvino", openvino_precision=precision))
        try:
            top = asyncio.run(generator.first_token_logprobs(HASTINGS, None))
        finally:
            asyncio.run(generator.close())
        assert len(top) == 20
        return [a - b for (_, a), (_, b) in zip(top, top[1:])]

    def on_bf16_lattice(gap: float) -> bool:
        return abs(gap * 16 - round(gap * 16)) < 1e-3

    assert sum(on_bf16_lattice(g) for g in gaps("f32")) < 5
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert all(on_bf16_lattice(g) for g in gaps("bf16"))
