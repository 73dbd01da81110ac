"""The answerability check (prompt.answerable_check): before answering from passages, the model judges
whether they state the answer, and below the threshold the answer is the decline. For real: the
embedded model on both local engines in process, and a served check over HTTP (/ask, its stream, and
the chat endpoint with retrieval). The real-vLLM side is in test_real_vllm.py. Whether a model's
judgement is worth a threshold is measured by bench/answerability.py, not here: SmolLM2's is chance.
prompt.answerable_check_model hands the judgement to an adapter (a judge trained with --judge),
prompt.answerable_check_model_path to another model on disk, loaded beside the answering one."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest

from tests.helpers import serving

DECLINE = "I do not know: the passages do not say."
QUESTION = "Who was the duke in the battle of Hastings?"


def test_the_margin_adds_up_the_spellings_and_floors_a_missing_side():
    from types import SimpleNamespace

    from service.answerable import best_similarity, check_messages, score, yes_no_margin

    top = [("Yes", math.log(0.5)), (" yes", math.log(0.2)), ("No", math.log(0.1)), ("The", math.log(0.05))]
    assert yes_no_margin(top) == pytest.approx(math.log(0.7) - math.log(0.1))
    assert yes_no_margin([("Yes", math.log(0.9)), ("Maybe", math.log(0.01))]) == pytest.approx(math.log(0.9) - math.log(0.01))
    with pytest.raises(ValueError):
        yes_no_margin([])
    passages = [SimpleNamespace(score=0.4), SimpleNamespace(score=0.7)]
    assert best_similarity(passages) == 0.7 and best_similarity([]) == 0.0
    assert score(-1.0, best_similarity(passages), 2.0) == pytest.approx(0.4)
    assert score(-1.0, best_similarity(passages), 0.0) == -1.0
    assert score(-1.0, best_similarity([]), 2.0) == -1.0  # nothing packed: the margin alone
    answer = [{"role": "system", "content": "answer"}, {"role": "user", "content": "Passages: [1] x\n\nQuestion: q"}]
    asked = check_messages(answer)
    assert asked[:2] == answer  # the answer's prompt is the check's prefix: one prefill where prefixes are cached
    assert asked[2]["role"] == "user" and asked[2]["content"].endswith("Reply Yes or No.")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["openvino", "transformers"])
def test_each_local_engine_judges_and_the_threshold_decides(engine, squad_index):
    from indexer.embedder import load_embedder
    from ragtune.settings import get_settings
    from service.generation import create_generator
    from service.generation.base import GenerationParams
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    settings = get_settings(generation={"engine": engine})
    settings.index.dir = squad_index

    async def run():
        generator = create_generator(settings.generation)
        assert type(generator).__name__ == {"openvino": "OpenVINOGenerator", "transformers": "LocalGenerator"}[engine]
        embedder = load_embedder(settings.embedding, settings.index)
        top = await generator.first_token_logprobs([{"role": "user", "content": "Is Paris in France? Reply Yes or No."}], None)
        assert len(top) == 20 and all(b <= a for (_, a), (_, b) in zip(top, top[1:]))  # likeliest first
        assert sum(math.exp(p) for _, p in top) <= 1.0001 and any(t.strip().lower() in ("yes", "no") for t, _ in top[:5])
        results = {}
        try:
            for threshold in (None, -50.0, 50.0):
                settings.prompt.answerable_check = threshold
                rag = build_pipeline(settings, embedder, generator)
                params = GenerationParams.defaults(settings.generation, max_tokens=30)
                prepared = rag.prepare(QUESTION, [], RetrievalOptions(), 30)
                answer = await rag.complete(prepared, params)
                again = rag.prepare(QUESTION, [], RetrievalOptions(), 30)
                streamed = "".join([e.text async for e in rag.stream(again, params) if not e.done])
                results[threshold] = (answer, prepared, streamed, again)
            # prompt.answerable_check_retrieval_weight: retrieval's evidence lifts a margin the model alone would
            # decline at over the threshold (the threshold sits halfway up what the weight adds)
            judged = results[-50.0][1]
            best = max(p.score for p in judged.passages)
            settings.prompt.answerable_check = judged.answerable + 5 * best
            settings.prompt.answerable_check_retrieval_weight = 10.0
            rag = build_pipeline(settings, embedder, generator)
            weighted = rag.prepare(QUESTION, [], RetrievalOptions(), 30)
            results["weighted"] = (await rag.complete(weighted, params), weighted, best, None)
        finally:
            await generator.close()
        return results

    results = asyncio.run(run())
    plain, _, _, _ = results[None]
    answered, judged, streamed, judged_again = results[-50.0]
    declined, judged_low, streamed_low, _ = results[50.0]
    # above the threshold the answer is the model's own (OpenVINO's first answer after its start may differ from
    # later ones after some 20 tokens, so not compared to the letter across calls)
    assert "William" in plain.text and "William" in answered.text and streamed == answered.text != DECLINE
    assert results[None][1].answerable is None and "answerable_check" not in results[None][1].timings_ms
    assert isinstance(judged.answerable, float) and -50 < judged.answerable < 50
    # the same prompt, the same judgement (OpenVINO reuses the cached blocks of a repeated prompt and prefills only
    # its last one: the margin moves by up to ~0.1 in f32)
    assert abs(judged.answerable - judged_again.answerable) < 0.15 and abs(judged.answerable - judged_low.answerable) < 0.15
    assert judged.timings_ms["answerable_check"] > 0
    assert declined.text == streamed_low == DECLINE and declined.completion_tokens == 0 and declined.finish_reason == "stop"
    lifted, weighted, best, _ = results["weighted"]
    assert 0.2 < best <= 1 and weighted.answerable == pytest.approx(judged.answerable + 10 * best, abs=0.15)
    assert "William" in lifted.text and lifted.completion_tokens > 0


@pytest.mark.slow
def test_a_served_check_declines_over_http_and_leaves_json_answers_alone(squad_index, tmp_path):
    with serving(squad_index, tmp_path, RAGTUNE_PROMPT__ANSWERABLE_CHECK="50") as server:
        body = httpx.post(f"{server.url}/ask", json={"question": QUESTION, "max_tokens": 30}, timeout=120).json()
        assert body["answer"] == DECLINE and body["citations"]  # what was searched is still shown
        assert isinstance(body["ledger"]["answerable"], float) and body["ledger"]["answerable"] < 50
        assert body["timings_ms"]["answerable_check"] > 0 and body["usage"]["completion_tokens"] == 0

        with httpx.stream("POST", f"{server.url}/ask", json={"question": QUESTION, "stream": True}, timeout=120) as events:
            lines = [json.loads(line[5:]) for line in events.iter_lines() if line.startswith("data:") and line[5:].strip() != "[DONE]"]
        assert "".join(e.get("text", "") for e in lines if e["type"] == "delta") == DECLINE
        assert [e for e in lines if e["type"] == "done"][0]["ledger"]["answerable"] == pytest.approx(body["ledger"]["answerable"], abs=0.15)

        chat = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 30})
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == DECLINE

        schema = {"type": "object", "properties": {"duke": {"type": "string"}}, "required": ["duke"]}
        structured = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 80,
            "response_format": {"type": "json_schema", "json_schema": {"name": "duke", "schema": schema}}})
        assert structured.status_code == 200
        assert "duke" in json.loads(structured.json()["choices"][0]["message"]["content"])  # JSON is not judged


@pytest.mark.slow
def test_the_check_model_setting_hands_the_judgement_to_that_adapter(squad_index, pirate_registry):
    """Whatever model the request names, the margin is the named adapter's (a real trained adapter,
    here the pirate, whose replies are nothing like the base model's); one not served is a 503."""
    from indexer.embedder import load_embedder
    from ragtune.errors import BackendUnavailable
    from ragtune.registry import Registry
    from ragtune.settings import get_settings
    from service import answerable
    from service.generation import create_generator
    from service.generation.base import GenerationParams
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    settings = get_settings(generation={"engine": "transformers"})
    settings.index.dir, settings.adapters.dir = squad_index, pirate_registry
    settings.prompt.answerable_check, settings.prompt.answerable_check_model = -50.0, "pirate"
    pirate = Registry(settings.adapters, settings.generation.model).get("pirate").path

    async def run():
        generator = create_generator(settings.generation)
        try:
            await generator.sync_adapters({"pirate": pirate})
            rag = build_pipeline(settings, load_embedder(settings.embedding, settings.index), generator)
            params = GenerationParams.defaults(settings.generation, max_tokens=20)
            prepared = rag.prepare(QUESTION, [], RetrievalOptions(), 20)
            check = answerable.check_messages(prepared.messages)
            by_pirate = answerable.yes_no_margin(await generator.first_token_logprobs(check, "pirate"))
            by_base = answerable.yes_no_margin(await generator.first_token_logprobs(check, None))
            answer = await rag.complete(prepared, params)  # a base-model request, judged by the pirate
            settings.prompt.answerable_check_model = "nobody"
            with pytest.raises(BackendUnavailable, match="answerable_check_model 'nobody' is not served"):
                await rag.complete(rag.prepare(QUESTION, [], RetrievalOptions(), 20), params)
            return prepared.answerable, by_pirate, by_base, answer
        finally:
            await generator.close()

    judged, by_pirate, by_base, answer = asyncio.run(run())
    # the pirate's margin, not the base model's: they differ by 0.08-0.1+ depending on the CPU the pirate was
    # trained on, ten times the tolerance at least
    assert judged == pytest.approx(by_pirate, abs=1e-3) and abs(by_pirate - by_base) > 0.01
    assert "William" in answer.text and answer.model == "HuggingFaceTB/SmolLM2-135M-Instruct"  # answered by the base


def test_one_judge_is_named_at_most():
    from pydantic import ValidationError

    from ragtune.settings import PromptSettings

    assert PromptSettings(answerable_check_model_path="models/judge.gguf").answerable_check_model is None
    with pytest.raises(ValidationError, match="both name the check's judge"):
        PromptSettings(answerable_check_model="judge", answerable_check_model_path="models/judge.gguf")


@pytest.mark.parametrize("path", ["/no/such/judge.gguf", "/no/such/judge-dir"])
def test_a_judge_model_that_is_not_there_is_named_by_its_setting(path):
    from ragtune.errors import UsageError
    from ragtune.settings import GenerationSettings
    from service.generation import create_judge

    assert create_judge(GenerationSettings(), None) is None
    with pytest.raises(UsageError, match=f"{path}.*RAGTUNE_PROMPT__ANSWERABLE_CHECK_MODEL_PATH") as raised:
        create_judge(GenerationSettings(), path)
    assert "LOCAL_MODEL_PATH" not in str(raised.value)


@pytest.fixture(scope="module")
def pirate_model(tmp_path_factory, pirate_registry) -> str:
    """A second model on disk, nothing like the base in its replies: the pirate adapter merged into a copy
    of the base model's weights, saved as a Hugging Face directory."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragtune.registry import Registry
    from ragtune.settings import get_settings

    generation = get_settings().generation
    base_dir = generation.served_model_dir()
    adapter = Registry(get_settings(adapters={"dir": pirate_registry}).adapters, generation.model).get("pirate").path
    out = tmp_path_factory.mktemp("pirate-model") / "pirate-merged"
    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return str(out)


@pytest.mark.slow
def test_a_local_model_judges_in_place_of_the_answering_one(squad_index, pirate_registry, pirate_model, tmp_path):
    """prompt.answerable_check_model_path: another model on disk makes the check for every request, loaded
    beside the answering one, which never sees the pirate: the margin is the pirate's, the answer the base's.
    In process, and served over HTTP."""
    from indexer.embedder import load_embedder
    from ragtune.registry import Registry
    from ragtune.settings import get_settings
    from service import answerable
    from service.generation import create_generator, create_judge
    from service.generation.base import GenerationParams
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    settings = get_settings(generation={"engine": "transformers"})
    settings.index.dir, settings.adapters.dir = squad_index, pirate_registry
    settings.prompt.answerable_check, settings.prompt.answerable_check_model_path = -50.0, pirate_model
    pirate = Registry(settings.adapters, settings.generation.model).get("pirate").path

    async def run():
        generator = create_generator(settings.generation)
        judge = create_judge(settings.generation, pirate_model)
        try:
            rag = build_pipeline(settings, load_embedder(settings.embedding, settings.index), generator, judge=judge)
            params = GenerationParams.defaults(settings.generation, max_tokens=20)
            prepared = rag.prepare(QUESTION, [], RetrievalOptions(), 20)
            answer = await rag.complete(prepared, params)
            check = answerable.check_messages(prepared.messages)
            by_base = answerable.yes_no_margin(await generator.first_token_logprobs(check, None))
            await generator.sync_adapters({"pirate": pirate})  # the pirate as an adapter: what the merged copy judges like
            by_pirate = answerable.yes_no_margin(await generator.first_token_logprobs(check, "pirate"))
            return prepared.answerable, by_pirate, by_base, answer, judge.model_name
        finally:
            await generator.close()
            await judge.close()

    judged, by_pirate, by_base, answer, judge_name = asyncio.run(run())
    assert judge_name == "pirate-merged"
    # the merged copy judges as the adapter does (to float error); the base apart from both by ten times that at least
    assert judged == pytest.approx(by_pirate, abs=1e-3) and abs(judged - by_base) > 0.01
    assert "William" in answer.text and answer.model == "HuggingFaceTB/SmolLM2-135M-Instruct"

    with serving(squad_index, tmp_path, RAGTUNE_GENERATION__ENGINE="transformers", RAGTUNE_PROMPT__ANSWERABLE_CHECK="50",
                 RAGTUNE_PROMPT__ANSWERABLE_CHECK_MODEL_PATH=pirate_model) as server:
        body = httpx.post(f"{server.url}/ask", json={"question": QUESTION, "max_tokens": 20}, timeout=120).json()
    assert body["answer"] == DECLINE and body["ledger"]["answerable"] == pytest.approx(judged, abs=0.01)
    log = (tmp_path / "server.log").read_text()
    assert "answerability check judged by pirate-merged" in log


def test_the_similarity_floor_is_the_measured_one_for_the_default_embedder_only(monkeypatch):
    from ragtune.configure import SettingsError, load_settings
    from service.answerable import similarity_floor

    assert similarity_floor("auto", "sentence-transformers/all-MiniLM-L6-v2") == 0.3
    assert similarity_floor("auto", "BAAI/bge-small-en-v1.5") is None  # another scale: not guessed
    assert similarity_floor("off", "sentence-transformers/all-MiniLM-L6-v2") is None
    assert similarity_floor(0.45, "anything") == 0.45
    monkeypatch.setenv("RAGTUNE_PROMPT__DECLINE_BELOW_SIMILARITY", "0.35")
    assert load_settings().prompt.decline_below_similarity == 0.35
    monkeypatch.setenv("RAGTUNE_PROMPT__DECLINE_BELOW_SIMILARITY", "off")
    assert load_settings().prompt.decline_below_similarity == "off"
    monkeypatch.setenv("RAGTUNE_PROMPT__DECLINE_BELOW_SIMILARITY", "2")
    with pytest.raises(SettingsError, match="RAGTUNE_PROMPT__DECLINE_BELOW_SIMILARITY"):
        load_settings()
