"""Training data validation, answer-only labels, and the adapter registry."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from finetune.data import DataError, load_training_data
from ragtune.registry import AdapterInvalid, AdapterNotFound, Registry
from ragtune.settings import AdapterSettings, PromptSettings
from tests.adapters import fake_adapter

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_every_shape_is_read_and_bad_lines_are_reported_with_their_number(tmp_path):
    prompt = PromptSettings()
    data = load_training_data(write_jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
        {"prompt": "2+2?", "completion": "4"},
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"question": "Capital of France?", "answer": "Paris", "context": "Paris is the capital of France."},
        {"question": "Capital of Mars?", "answers": ["none"], "answerable": False},
        "",
        "{broken",
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"prompt": "x", "completion": 3},
        {"question": "no answer"},
        {"text": "free text"},
        [1, 2],
    ]), prompt)
    assert [e.kind for e in data.examples] == ["chat", "instruction", "instruction", "qa", "qa"]
    assert data.examples[2].messages[0]["content"] == "Translate\n\nchat"
    with_context = data.examples[3].messages
    assert with_context[0]["content"] == prompt.system_prompt and "Paris is the capital of France." in with_context[1]["content"]
    assert data.examples[4].messages[-1]["content"] == prompt.decline_answer and not data.examples[4].answerable
    reasons = {b.line: b.reason for b in data.bad}
    assert sorted(reasons) == [7, 8, 9, 10, 11, 12]  # the blank line 6 is not an error
    assert "not valid JSON" in reasons[7]
    assert "last message must be the assistant" in reasons[8]
    assert '"completion" must be a string' in reasons[9]
    assert 'no "answers"' in reasons[10]
    assert "no known shape" in reasons[11] and "text" in reasons[11]
    assert "expected a JSON object" in reasons[12]


@pytest.mark.parametrize("lines", [[], ["", ""], ["{bad", {"foo": 1}]])
def test_an_empty_or_all_bad_file_is_refused(tmp_path, lines):
    with pytest.raises(DataError, match="no usable example"):
        load_training_data(write_jsonl(tmp_path / "d.jsonl", lines), PromptSettings())


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_training_data(tmp_path / "nope.jsonl", PromptSettings())


def test_registry_publishes_withdraws_and_deletes(tmp_path):
    registry = Registry(AdapterSettings(dir=tmp_path / "reg"), BASE)
    added = registry.add("support-v1", fake_adapter(tmp_path / "a"))
    assert not added.published and registry.published() == {}
    assert (added.path / "adapter_config.json").is_file() and added.path.parent.parent == (tmp_path / "reg").resolve()
    registry.set_published("support-v1", True)
    assert registry.published() == {"support-v1": added.path}
    newer = registry.add("support-v1", fake_adapter(tmp_path / "b", r=16))  # retrained: stays published, new path
    assert newer.version != added.version and registry.published() == {"support-v1": newer.path}
    registry.set_published("support-v1", False)
    assert registry.published() == {}
    registry.delete("support-v1")
    assert registry.list() == [] and not (tmp_path / "reg" / "support-v1").exists()
    with pytest.raises(AdapterNotFound):
        registry.set_published("support-v1", True)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 65, "semi;colon", "a..b"])
def test_unsafe_names_are_refused_and_nothing_is_written(tmp_path, name):
    registry = Registry(AdapterSettings(dir=tmp_path / "reg"), BASE)
    with pytest.raises(AdapterInvalid, match="not allowed"):
        registry.add(name, fake_adapter(tmp_path / "a"))
    assert registry.list() == []
    assert not any((tmp_path / "reg").glob("*/*")) if (tmp_path / "reg").exists() else True


def test_an_invalid_adapter_is_not_half_published(tmp_path):
    registry = Registry(AdapterSettings(dir=tmp_path / "reg"), BASE)
    with pytest.raises(AdapterInvalid, match="served model"):
        registry.add("wrong-base", fake_adapter(tmp_path / "a", base_model_name_or_path="other/model"))
    assert registry.list() == [] and not (tmp_path / "reg" / "wrong-base").exists()


def test_an_admin_change_gets_its_own_reconcile_even_when_the_periodic_one_sees_it_first(tmp_path):
    from service.adapters import AdapterSync
    from service.generation.base import AdapterSyncReport

    registry = Registry(AdapterSettings(dir=tmp_path / "reg"), BASE)
    registry.add("support-v1", fake_adapter(tmp_path / "a"))
    registry.set_published("support-v1", True)

    class Backend:  # records what it is asked to serve (the subject here is AdapterSync's ordering)
        served: dict = {}

        async def sync_adapters(self, desired):
            report = AdapterSyncReport([n for n in desired if n not in self.served], [n for n in self.served if n not in desired])
            self.served = dict(desired)
            return report

    def withdraw():
        registry.set_published("support-v1", False)
        time.sleep(0.1)  # meanwhile the periodic round wakes up and sees the registry changed

    async def main():
        sync = AdapterSync(registry, Backend(), interval=0.005, poll_backend=False)
        assert (await sync.sync()).loaded == ["support-v1"]
        rounds = asyncio.create_task(sync.run())
        try:
            return await sync.apply(withdraw)
        finally:
            rounds.cancel()

    assert asyncio.run(main()).unloaded == ["support-v1"]  # the admin's answer says what its change did
