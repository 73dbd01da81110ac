"""`ragtune eval` resumes: answers are kept as they come, and a run with the same setup answers
only what is missing (an interrupted run loses at most the answer being written). A unit test
of the runner with a scripted answerer; the real answerers are tested in test_eval.py."""

from __future__ import annotations

import asyncio

import pytest

from evaluation.runner import Answer, Strategy, evaluate
from ragtune.qa import QAItem

ITEMS = [QAItem(f"q{i}", f"Question {i}?", (f"answer {i}",)) for i in range(4)]
STRATEGIES = [Strategy("zero-shot", retrieval=False), Strategy("rag", retrieval=True)]


class Scripted:
    """Answers "answer N [1]" with one passage; fails on the question named in `fail_on`."""

    def __init__(self, model="m", fail_on=None):
        self.model, self.fail_on, self.asked = model, fail_on, []

    def describe(self):
        return {"model": self.model}

    async def start(self, strategies):
        pass

    async def use(self, strategy):
        pass

    async def answer(self, item, strategy):
        if item.id == self.fail_on:
            raise KeyboardInterrupt  # the run is stopped here
        self.asked.append((strategy.name, item.id))
        passages = {1: f"The {item.answers[0]} is here."} if strategy.retrieval else None
        return Answer(f"{item.answers[0]} [1]", 10, 3, 0.5, ["d"] if strategy.retrieval else None, "v1", passages)

    async def close(self):
        pass


def run(answerer, cache, setup=None):
    return asyncio.run(evaluate(answerer, ITEMS, STRATEGIES, None, "I do not know.", cache=cache, setup=setup or {"top_k": 5}))


def test_an_interrupted_run_resumes_with_the_answers_it_had(tmp_path):
    cache = tmp_path / "answers.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run(Scripted(fail_on="q2"), cache)
    with cache.open("a") as torn:
        torn.write('{"setup": "half a line')  # killed while writing
    again = Scripted()
    resumed = run(again, cache)
    assert resumed.reused == 2  # zero-shot q0, q1
    assert again.asked == [("zero-shot", "q2"), ("zero-shot", "q3")] + [("rag", q.id) for q in ITEMS]
    third = Scripted()
    complete = run(third, cache)
    assert third.asked == [] and complete.reused == 8
    assert complete.rows == resumed.rows  # the same report, passages and all
    assert complete.rows[0]["results"]["rag"]["citation_correct"] == 1.0


def test_another_setup_answers_everything_again(tmp_path):
    cache = tmp_path / "answers.jsonl"
    run(Scripted(), cache)
    other_model, other_setting = Scripted(model="other"), Scripted()
    assert run(other_model, cache).reused == 0 and len(other_model.asked) == 8
    assert run(other_setting, cache, {"top_k": 3}).reused == 0 and len(other_setting.asked) == 8
