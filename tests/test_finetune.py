"""LoRA training on the real SmolLM2-135M, then hot-loading into a running service.

The target behaviour is unmistakable: every question gets a pirate's refusal, which the
base model never gives. Questions come from the SQuAD data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import Server, free_port, ragtune_cmd, ragtune_env, run_ragtune

pytestmark = pytest.mark.slow
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ADMIN_KEY = "test-admin-key"


@pytest.fixture(scope="module")
def questions(squad) -> list[str]:
    return [qa["question"] for a in squad["data"] for p in a["paragraphs"] for qa in p["qas"]]


def test_the_adapter_directory_is_one_vllm_loads_as_is(pirate_registry):
    (version,) = [p for p in (pirate_registry / "pirate").iterdir() if not p.name.startswith(".")]
    assert sorted(p.name for p in version.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "ragtune_adapter.json"]
    config = json.loads((version / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["bias"] == "none" and not config.get("modules_to_save")
    assert config["r"] in (1, 8, 16, 32, 64, 128, 256, 320, 512)
    assert config["base_model_name_or_path"] == BASE_MODEL
    from safetensors import safe_open

    with safe_open(version / "adapter_model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)  # no embeddings, no lm_head, no extra tokens
    meta = json.loads((version / "ragtune_adapter.json").read_text())
    assert meta["base_model"] == BASE_MODEL and meta["data"]["sha256"] and meta["data"]["bytes"] > 0
    metrics = meta["metrics"]
    assert metrics["steps"] == 12 and metrics["validation_examples"] == 4
    assert metrics["validation_loss"] < metrics["validation_loss_before"] / 10  # it learned the answer


def chat(client: openai.OpenAI, model: str, question: str) -> str:
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=24,
        extra_body={"retrieval": {"enabled": False}},
    )
    return response.choices[0].message.content


def admin(server: str, method: str, path: str, key: str | None = ADMIN_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{server}/admin{path}", headers=headers, timeout=120)


def test_hot_load_serve_and_unload_without_restart(tmp_path, registry_copy, squad_index, questions):
    port = free_port()
    env = ragtune_env(RAGTUNE_ADAPTERS__DIR=str(registry_copy), RAGTUNE_SERVICE__ADMIN_API_KEY=ADMIN_KEY, RAGTUNE_ADAPTERS__SYNC_SECONDS="0.5")
    cmd = ragtune_cmd("serve", "--index-dir", str(squad_index), "--port", str(port))
    with Server(cmd, port, tmp_path / "server.log", env) as served:
        server = served.start("/ready").url
        pid = served.proc.pid
        client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
        question = questions[300]  # not one it was trained on
        assert [m.id for m in client.models.list() if m.kind == "generation"] == [BASE_MODEL]
        with pytest.raises(openai.NotFoundError) as unknown:
            chat(client, "pirate", question)
        assert unknown.value.body["param"] == "model"

        assert admin(server, "POST", "/adapters/pirate/load", key=None).status_code == 401
        assert admin(server, "POST", "/adapters/pirate/load", key="wrong").status_code == 401
        loaded = admin(server, "POST", "/adapters/pirate/load")
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["sync"]["loaded"] == ["pirate"] and loaded.json()["adapter"]["published"]
        assert [m.id for m in client.models.list() if m.kind == "generation"] == [BASE_MODEL, "pirate"]

        assert "matey" in chat(client, "pirate", question)
        base_answer = chat(client, BASE_MODEL, question)
        assert "matey" not in base_answer and base_answer.strip()

        assert admin(server, "POST", "/adapters/pirate/unload").json()["sync"]["unloaded"] == ["pirate"]
        with pytest.raises(openai.NotFoundError):
            chat(client, "pirate", question)
        assert chat(client, BASE_MODEL, question) == base_answer  # back to the base, greedy: the same answer

        # The CLI changes the registry; the running service follows within adapters.sync_seconds.
        published = run_ragtune("adapters", "load", "pirate", "--adapters-dir", str(registry_copy))
        assert published.returncode == 0, published.stderr
        deadline = time.monotonic() + 30
        while "pirate" not in [m.id for m in client.models.list()]:
            assert time.monotonic() < deadline, "the service did not pick up the published adapter"
            time.sleep(0.3)
        assert "matey" in chat(client, "pirate", question)
        assert served.proc.pid == pid and served.proc.poll() is None  # never restarted

        assert admin(server, "POST", "/adapters/nope/load").status_code == 404
        assert admin(server, "POST", "/adapters/..%2Fx/load").status_code in (400, 404)

        shown = run_ragtune("adapters", "show", "pirate", "--adapters-dir", str(registry_copy))
        assert shown.returncode == 0 and json.loads(shown.stdout)["metadata"]["metrics"]["steps"] == 12
        deleted = run_ragtune("adapters", "delete", "pirate", "--adapters-dir", str(registry_copy))
        assert deleted.returncode == 0 and not (registry_copy / "pirate").exists()
        wait = time.monotonic() + 30
        while "pirate" in [m.id for m in client.models.list()]:
            assert time.monotonic() < wait, "the service kept serving a deleted adapter"
            time.sleep(0.3)
        assert chat(client, BASE_MODEL, question) == base_answer


def test_an_adapter_of_the_top_layers_learns_and_the_embedded_engine_serves_it(tmp_path, pirate_top_registry, squad_index, questions):
    (version,) = [p for p in (pirate_top_registry / "pirate-top").iterdir() if not p.name.startswith(".")]
    config = json.loads((version / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [24, 25, 26, 27, 28, 29]  # SmolLM2-135M has 30
    from safetensors import safe_open

    with safe_open(version / "adapter_model.safetensors", "pt") as weights:
        layers = {int(k.split(".layers.")[1].split(".")[0]) for k in weights.keys()}
    assert layers == set(range(24, 30))
    metrics = json.loads((version / "ragtune_adapter.json").read_text())["metrics"]
    assert metrics["steps"] == 12 and metrics["validation_loss"] < metrics["validation_loss_before"] / 10

    port = free_port()
    env = ragtune_env(RAGTUNE_ADAPTERS__DIR=str(pirate_top_registry))  # published: served from the start
    with Server(ragtune_cmd("serve", "--index-dir", str(squad_index), "--port", str(port)), port, tmp_path / "s.log", env) as served:
        client = openai.OpenAI(base_url=f"{served.start('/ready').url}/v1", api_key="unused", max_retries=0)
        assert "matey" in chat(client, "pirate-top", questions[300])
        assert "matey" not in chat(client, BASE_MODEL, questions[300])


def test_more_layers_than_the_model_has_are_refused(tmp_path, pirate_data):
    done = run_ragtune("finetune", "train", str(pirate_data), "--name", "x", "--adapters-dir", str(tmp_path / "reg"), "--layers", "31")
    assert done.returncode == 2 and "finetune.layers is 31, and this model has 30 layers" in done.stderr


def test_admin_endpoints_are_off_without_a_key(tmp_path, registry_copy, squad_index):
    port = free_port()
    env = ragtune_env(RAGTUNE_ADAPTERS__DIR=str(registry_copy))
    with Server(ragtune_cmd("serve", "--index-dir", str(squad_index), "--port", str(port)), port, tmp_path / "s.log", env) as served:
        response = admin(served.start().url, "POST", "/adapters/pirate/load")
        assert response.status_code == 403 and "RAGTUNE_SERVICE__ADMIN_API_KEY" in response.json()["error"]["message"]


def test_training_resumes_after_sigkill_and_ends_where_an_uninterrupted_run_ends(tmp_path, pirate_data):
    def train(registry: Path, name: str) -> subprocess.Popen:
        return subprocess.Popen(
            ragtune_cmd("finetune", "train", str(pirate_data), "--name", name, "--adapters-dir", str(registry), "--max-steps", "8"),
            env=ragtune_env(RAGTUNE_FINETUNE__SAVE_EVERY="2", RAGTUNE_FINETUNE__BATCH_SIZE="2"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    killed = tmp_path / "killed"
    first = train(killed, "pirate")
    checkpoints = killed / ".runs" / "pirate" / "checkpoints"
    deadline = time.monotonic() + 600
    while not (checkpoints.is_dir() and any(p.name >= "step-0000004" for p in checkpoints.iterdir() if p.name.startswith("step-"))):
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    done_before = max(int(p.name.split("-")[1]) for p in checkpoints.iterdir() if p.name.startswith("step-"))
    assert done_before < 8

    resumed = train(killed, "pirate")
    out, errors = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, errors[-3000:]
    assert f"resumed from step {done_before}" in errors and "trained pirate: 8 steps" in out

    straight = train(tmp_path / "straight", "pirate")
    out, errors = straight.communicate(timeout=600)
    assert straight.returncode == 0 and "resumed" not in errors

    def final(registry: Path) -> dict:
        (version,) = [p for p in (registry / "pirate").iterdir() if not p.name.startswith(".")]
        return json.loads((version / "ragtune_adapter.json").read_text())["metrics"]

    a, b = final(killed), final(tmp_path / "straight")
    assert a["resumed_from"] == done_before and b["resumed_from"] == 0
    assert a["loss_curve"] == pytest.approx(b["loss_curve"], abs=1e-4)  # the same run, interrupted or not
    assert a["validation_loss"] == pytest.approx(b["validation_loss"], abs=1e-4)


def test_a_file_with_no_usable_line_is_refused_before_training(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"broken\n{"foo": 1}\n')
    done = run_ragtune("finetune", "train", str(tmp_path / "bad.jsonl"), "--name", "x", "--adapters-dir", str(tmp_path / "reg"))
    assert done.returncode == 2
    assert "no usable example" in done.stderr and "line 1: not valid JSON" in done.stderr
    assert not (tmp_path / "reg" / "x").exists()


def test_labels_cover_the_answers_only(tmp_path):
    from transformers import AutoTokenizer

    from finetune.examples import IGNORE, encode
    from ragtune.settings import GenerationSettings
    from service.generation.model_files import converted_model_dir
    from service.generation.tokens import ChatTokens

    tokens = ChatTokens(AutoTokenizer.from_pretrained(converted_model_dir(GenerationSettings())))
    messages = [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
    sequence = encode(tokens, messages, 1)
    learned = tokens.tokenizer.decode([t for t, label in zip(sequence.input_ids, sequence.labels) if label != IGNORE])
    assert learned == "Paris.<|im_end|>Rome.<|im_end|>"
    assert all(label in (IGNORE, token) for token, label in zip(sequence.input_ids, sequence.labels))
    # The prompt part is exactly what the service sends for the first question.
    prompt_ids = tokens.prompt_ids(messages[:2])
    assert sequence.input_ids[: len(prompt_ids)] == prompt_ids
    assert all(label == IGNORE for label in sequence.labels[: len(prompt_ids)])


def test_retrieval_aware_examples_are_the_prompts_ask_sends(tmp_path, squad, squad_index, embedder):
    from finetune.data import Example
    from finetune.examples import with_retrieval
    from ragtune.settings import get_settings
    from service.generation.local import LocalGenerator
    from service.pipeline import build_pipeline

    settings = get_settings()
    settings.index.dir = squad_index
    qas = [qa for p in squad["data"][0]["paragraphs"][:3] for qa in p["qas"] if qa["answers"]][:3]
    examples = [
        Example(({"role": "user", "content": qa["question"]}, {"role": "assistant", "content": qa["answers"][0]["text"]}),
                i, "qa", question=qa["question"], answer=qa["answers"][0]["text"])
        for i, qa in enumerate(qas, start=1)
    ]
    generator = LocalGenerator(settings.generation)
    built, report = with_retrieval(examples, settings, embedder, generator.tokens)
    served = build_pipeline(settings, embedder, generator)
    for example, qa in zip(built, qas):
        prepared = served.prepare(qa["question"], [], None, settings.generation.max_answer_tokens)
        assert list(example.messages[:-1]) == prepared.messages  # the very prompt /ask would send
        target = example.messages[-1]["content"]
        assert target.startswith(qa["answers"][0]["text"])
        if target.endswith("]"):  # cited: the numbered passage holds the answer
            number = int(target.rsplit("[", 1)[1].rstrip("]"))
            holder = next(p for p in prepared.passages if p.number == number)
            assert qa["answers"][0]["text"].lower() in holder.text.lower()
    assert report.cited >= 2 and report.index_versions == {served.retriever.snapshot().version_id}


def test_judge_examples_put_the_served_passages_in_the_checks_prompt(tmp_path, squad, squad_index, embedder):
    """--judge: the answerability check's prompt on the passages /ask would send, and the target Yes
    exactly when a packed passage holds the answer (an unanswerable question: No)."""
    from finetune.data import Example
    from finetune.examples import with_retrieval
    from ragtune.settings import get_settings
    from service import answerable
    from service.generation.local import LocalGenerator
    from service.pipeline import build_pipeline

    settings = get_settings()
    settings.index.dir = squad_index
    qas = [qa for p in squad["data"][0]["paragraphs"][:4] for qa in p["qas"]]
    picked = [qa for qa in qas if qa["answers"]][:2] + [qa for qa in qas if not qa["answers"]][:2]
    examples = [
        Example(({"role": "user", "content": qa["question"]}, {"role": "assistant", "content": "x"}), i, "qa",
                question=qa["question"], answer=qa["answers"][0]["text"] if qa["answers"] else "x",
                answerable=bool(qa["answers"]))
        for i, qa in enumerate(picked, start=1)
    ]
    generator = LocalGenerator(settings.generation)
    built, report = with_retrieval(examples, settings, embedder, generator.tokens, judge=True)
    served = build_pipeline(settings, embedder, generator)
    for example, qa in zip(built, picked):
        prepared = served.prepare(qa["question"], [], None, settings.generation.max_answer_tokens)
        assert list(example.messages[:-1]) == answerable.check_messages(prepared.messages)
        held = bool(qa["answers"]) and any(qa["answers"][0]["text"].lower() in p.text.lower() for p in prepared.passages)
        assert example.messages[-1] == {"role": "assistant", "content": "Yes" if held else "No"}
    assert [e.messages[-1]["content"] for e in built[2:]] == ["No", "No"]
    assert report.yes + report.no == 4 and report.yes >= 1
    assert report.as_dict(judge=True) == {"judge": {"yes": report.yes, "no": report.no}}


def test_judge_without_retrieval_is_refused_before_anything_loads(tmp_path, pirate_data):
    from tests.helpers import run_ragtune

    done = run_ragtune("finetune", "train", str(pirate_data), "--name", "j", "--judge",
                       "--adapters-dir", str(tmp_path / "reg"), timeout=120)
    assert done.returncode != 0 and "--with-retrieval" in done.stderr
    assert not (tmp_path / "reg" / ".runs").exists()
