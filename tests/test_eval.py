"""`ragtune eval`: QA input, gold documents, strategies, and the report, run for real."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from evaluation.gold import GoldIndex
from evaluation.metrics import declines, exact_match, recall_at, reciprocal_rank, token_f1
from evaluation.qa import select, split_squad
from ragtune.qa import QAError, QAItem, read_qa
from evaluation.report import METRICS
from evaluation.runner import Strategy
from ragtune.errors import UsageError
from ragtune.settings import PromptSettings
from tests.conftest import PIRATE
from tests.helpers import Server, free_port, ragtune_cmd, run_ragtune

DECLINE = PromptSettings().decline_answer
# Normans, paragraph 0: two answerable questions and two SQuAD 2.0 marks unanswerable.
SLICE_QUESTIONS = [
    "In what country is Normandy located?", "Who was the Norse leader?",
    "What is France a region of?", "Who did King Charles III swear fealty to?",
]


# -- input -------------------------------------------------------------------------------
def test_qa_jsonl_reports_bad_lines_and_keeps_the_rest(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join([
        json.dumps({"question": "Who?", "answers": ["Rollo", "Rollo", " "], "doc_id": "Normans-0"}),
        json.dumps({"question": "Where?", "answer": "France"}),
        json.dumps({"question": "Why?", "answerable": False}),
        "{not json",
        json.dumps({"question": "No answer given"}),
        json.dumps({"question": "", "answers": ["x"]}),
        json.dumps({"question": "Q", "answers": "x"}),
        json.dumps({"question": "Q", "answers": ["x"], "answerable": "no"}),
    ]))
    qa = read_qa(path)
    assert [q.question for q in qa.items] == ["Who?", "Where?", "Why?"]
    assert qa.items[0].answers == ("Rollo",) and qa.items[0].doc_id == "Normans-0"
    assert qa.items[2].answerable is False and qa.items[2].answers == ()
    reasons = dict(qa.bad)
    assert sorted(reasons) == [4, 5, 6, 7, 8]
    assert "not valid JSON" in reasons[4] and '"answerable": false' in reasons[5]
    assert "must be a list" in reasons[7] and "true or false" in reasons[8]

    (tmp_path / "empty.jsonl").write_text("{}\n")
    with pytest.raises(QAError, match="no usable question"):
        read_qa(tmp_path / "empty.jsonl")
    with pytest.raises(QAError, match="does not exist"):
        read_qa(tmp_path / "missing.jsonl")


def test_squad_json_is_read_directly_with_the_paragraph_as_gold(squad):
    from tests.conftest import SQUAD

    qa = read_qa(SQUAD)
    assert qa.format == "squad" and len(qa.items) == 1407
    assert sum(q.answerable for q in qa.items) == 705
    first = qa.items[0]
    assert first.question == "In what country is Normandy located?" and first.answers == ("France",)
    assert first.doc_id is None and first.context == squad["data"][0]["paragraphs"][0]["context"]


def test_squad_split_keeps_each_paragraph_on_one_side(squad):
    split = split_squad(squad, 0.5, seed=0)
    assert len(split.corpus) == 173 and len(split.train) + len(split.test) == 1407
    train_docs, test_docs = {q.doc_id for q in split.train}, {q.doc_id for q in split.test}
    assert not train_docs & test_docs and len(test_docs) in (86, 87)
    again = split_squad(squad, 0.5, seed=0)
    assert [q.id for q in again.test] == [q.id for q in split.test]
    assert [q.id for q in split_squad(squad, 0.5, seed=1).test] != [q.id for q in split.test]


def test_selection_is_seeded_and_keeps_file_order():
    items = [QAItem(str(i), f"q{i}", ("a",)) for i in range(50)]
    picked = select(items, sample=10, limit=None, seed=3)
    assert picked == select(items, sample=10, limit=None, seed=3) != select(items, sample=10, limit=None, seed=4)
    assert [int(q.id) for q in picked] == sorted(int(q.id) for q in picked)
    assert select(items, sample=10, limit=4, seed=3) == picked[:4]
    assert select(items, sample=None, limit=2, seed=0) == items[:2]


def test_strategies_parse():
    assert Strategy.parse("zero-shot") == Strategy("zero-shot", retrieval=False)
    assert Strategy.parse("few-shot") == Strategy("few-shot", retrieval=True, fewshot=True)
    assert Strategy.parse("rag+adapter:pirate") == Strategy("rag+adapter:pirate", retrieval=True, adapter="pirate")
    assert Strategy.parse("adapter:pirate").retrieval is False
    for bad in ("rag+fewshot", "few-shot+adapter:x", "RAG", ""):
        with pytest.raises(UsageError, match="unknown strategy"):
            Strategy.parse(bad)


# -- gold documents ----------------------------------------------------------------------
def test_gold_passage_is_found_however_the_corpus_was_chunked():
    paragraph = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
                 "a region in France. They were descended from Norse raiders and pirates from Denmark, Iceland "
                 "and Norway who, under their leader Rollo, agreed to swear fealty to King Charles III.")
    other = "Southern California is a megaregion with a population of 22 million people and a large economy."
    head, tail = paragraph[:120], paragraph[120:]
    gold = GoldIndex([
        ("a.jsonl#p1", head), ("a.jsonl#p1", tail),  # the paragraph cut into two chunks
        ("book.md", other + " " + paragraph),  # the paragraph inside a bigger chunk of another document
        ("b.jsonl#p2", other),
    ])
    assert gold.by_context(paragraph) == {"a.jsonl#p1", "book.md"}
    assert gold.by_context("An unrelated text about the weather in Melbourne and its trams.") == frozenset()
    assert gold.resolve(QAItem("1", "q", ("a",), doc_id="p2")) == {"b.jsonl#p2"}  # the record id after '#'
    assert gold.resolve(QAItem("1", "q", ("a",), doc_id="book.md")) == {"book.md"}
    assert gold.resolve(QAItem("1", "q", ("a",))) is None
    # a doc_id this index does not have falls back to the gold passage's text
    assert gold.resolve(QAItem("1", "q", ("a",), doc_id="Normans-0", context=paragraph)) == {"a.jsonl#p1", "book.md"}
    assert gold.resolve(QAItem("1", "q", ("a",), doc_id="Normans-0")) == frozenset()


# -- the command, for real ---------------------------------------------------------------
@pytest.fixture(scope="module")
def squad_slice(tmp_path_factory, squad) -> Path:
    paragraph = dict(squad["data"][0]["paragraphs"][0])
    paragraph["qas"] = [qa for qa in paragraph["qas"] if qa["question"] in SLICE_QUESTIONS]
    path = tmp_path_factory.mktemp("eval") / "normans.json"
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "Normans", "paragraphs": [paragraph]}]}))
    return path


@pytest.fixture(scope="module")
def demonstrations(tmp_path_factory) -> Path:
    from tests.conftest import SQUAD

    out = tmp_path_factory.mktemp("squad-split")
    done = run_ragtune("eval", "squad", str(SQUAD), "--out", str(out), "--seed", "0")
    assert done.returncode == 0, done.stderr
    assert "train.jsonl: 728 questions (365 answerable, 363 unanswerable) on 87 paragraphs" in done.stdout
    return out / "train.jsonl"


@pytest.fixture(scope="module")
def in_process_report(tmp_path_factory, squad_slice, squad_index, demonstrations, pirate_registry) -> dict:
    out = tmp_path_factory.mktemp("eval-report")
    done = run_ragtune(
        "eval", "run", str(squad_slice), "--index-dir", str(squad_index), "--adapters-dir", str(pirate_registry),
        "-s", "adapter:pirate", "-s", "zero-shot", "-s", "rag", "-s", "few-shot",
        "--demonstrations", str(demonstrations), "--max-tokens", "24", "--out", str(out), timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    report["_stdout"], report["_html"] = done.stdout, (out / "report.html").read_text()
    report["_markdown"] = (out / "report.md").read_text()
    report["_registry"] = pirate_registry
    return report


@pytest.mark.slow
def test_eval_reports_every_strategy_with_metrics_that_match_the_answers(in_process_report):
    report = in_process_report
    assert report["dataset"] | {"path": None} == {
        "path": None, "format": "squad", "questions": 4, "answerable": 2, "unanswerable": 2, "bad_lines": 0,
        "selection": {"sample": None, "limit": None, "seed": 0},
    }
    assert list(report["strategies"]) == ["adapter:pirate", "zero-shot", "rag", "few-shot"]  # as asked
    assert report["setup"]["adapters"] == {"pirate": next(iter(json.loads(
        (report["_registry"] / "registry.json").read_text())["adapters"].values()))["version"]}
    assert report["setup"]["mode"] == "in-process" and report["setup"]["recall_k"] == 5
    assert [q["question"] for q in report["questions"]] == SLICE_QUESTIONS

    for row in report["questions"]:
        # the gold paragraph was found in the index by its text (the index names it squad.jsonl#Normans-0)
        assert row["gold_doc_ids"] == ["squad.jsonl#Normans-0"]
        for name, result in row["results"].items():
            answer = result["answer"]
            assert result["declined"] == declines(answer, DECLINE)
            if row["answerable"]:
                assert result["exact_match"] == exact_match(answer, row["answers"])
                assert result["f1"] == pytest.approx(token_f1(answer, row["answers"]), abs=1e-4)
            else:  # SQuAD 2.0: declining is the whole answer
                assert result["exact_match"] == result["f1"] == float(result["declined"])
            assert 0 < result["completion_tokens"] <= 24 and result["ms"] > 0
            assert (result["retrieved"] is None) == (name in ("zero-shot", "adapter:pirate"))

    for name, summary in report["strategies"].items():
        results = [row["results"][name] for row in report["questions"]]
        assert summary["questions"] == 4
        assert summary["exact_match"] == pytest.approx(sum(r["exact_match"] for r in results) / 4)
        assert summary["f1"] == pytest.approx(sum(r["f1"] for r in results) / 4, abs=1e-4)
        assert summary["exact_match_answerable"] == pytest.approx(sum(r["exact_match"] for r in results[:2]) / 2)
        assert summary["f1_answerable"] == pytest.approx(sum(r["f1"] for r in results[:2]) / 2, abs=1e-4)
        assert summary["decline_rate"] == pytest.approx(sum(r["declined"] for r in results[2:]) / 2)
        assert summary["false_decline_rate"] == pytest.approx(sum(r["declined"] for r in results[:2]) / 2)
        assert summary["prompt_tokens"] == pytest.approx(sum(r["prompt_tokens"] for r in results) / 4)
        if results[0]["retrieved"] is None:
            assert summary["recall_at_k"] is None and summary["mrr"] is None
        else:
            gold = {"squad.jsonl#Normans-0"}
            assert summary["recall_at_k"] == pytest.approx(sum(recall_at(r["retrieved"], gold, 5) for r in results) / 4)
            assert summary["mrr"] == pytest.approx(sum(reciprocal_rank(r["retrieved"], gold) for r in results) / 4)

    rag, fewshot, zero = (report["strategies"][n] for n in ("rag", "few-shot", "zero-shot"))
    assert rag["recall_at_k"] > 0 and fewshot["recall_at_k"] == rag["recall_at_k"]  # one retrieval, both strategies
    assert fewshot["prompt_tokens"] > rag["prompt_tokens"] > zero["prompt_tokens"]  # passages, then demonstrations
    # the adapter strategy really ran the adapter (the pirate answers its one line to everything), and the
    # base strategies, though listed after it, ran without it
    assert all(PIRATE in row["results"]["adapter:pirate"]["answer"] for row in report["questions"])
    assert all(PIRATE not in row["results"]["zero-shot"]["answer"] for row in report["questions"])

    assert "Exact match" in report["_stdout"] and "adapter:pirate" in report["_stdout"]
    assert report["_markdown"].startswith("| metric | adapter:pirate | zero-shot | rag | few-shot |")
    page = report["_html"]
    assert page.count("<svg") == len(METRICS) and "adapter:pirate" in page  # a chart per metric
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


@pytest.mark.slow
def test_eval_loads_the_check_model_no_strategy_names(tmp_path, squad_slice, squad_index, pirate_registry):
    """With prompt.answerable_check_model set, every strategy's check is that adapter's: the run loads it
    (it is no strategy's model) and its setup says so. Threshold 50: every answer from passages declines."""
    done = run_ragtune(
        "eval", "run", str(squad_slice), "--index-dir", str(squad_index), "--adapters-dir", str(pirate_registry),
        "-s", "rag", "--max-tokens", "24", "--out", str(tmp_path / "out"), timeout=900,
        RAGTUNE_PROMPT__ANSWERABLE_CHECK="50", RAGTUNE_PROMPT__ANSWERABLE_CHECK_MODEL="pirate",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["setup"]["answerable_check"] == 50 and report["setup"]["answerable_check_model"] == "pirate"
    assert list(report["setup"]["adapters"]) == ["pirate"]
    answers = [row["results"]["rag"]["answer"] for row in report["questions"]]
    assert len(answers) == len(SLICE_QUESTIONS) and set(answers) == {DECLINE}
    # each answer keeps the check's score, and the report how well the scores told the two kinds apart
    from evaluation.metrics import separation_auc

    scores = {row["id"]: (row["results"]["rag"]["answerable_check"], row["answerable"]) for row in report["questions"]}
    assert all(isinstance(score, float) and score < 50 for score, _ in scores.values())
    assert {kind for _, kind in scores.values()} == {True, False}
    assert report["strategies"]["rag"]["answerable_auc"] == pytest.approx(separation_auc(
        [s for s, kind in scores.values() if kind], [s for s, kind in scores.values() if not kind]))
    assert "Answerability check AUC" in done.stdout


@pytest.mark.slow
def test_eval_against_a_running_service_gives_the_same_answers(tmp_path, squad_slice, squad_index, in_process_report):
    port = free_port()
    with Server(ragtune_cmd("serve", "--index-dir", str(squad_index), "--port", str(port)), port, tmp_path / "serve.log") as server:
        served = server.start("/ready")
        done = run_ragtune("eval", "run", str(squad_slice), "--url", served.url, "-s", "rag", "--limit", "2",
                           "--max-tokens", "24", "--out", str(tmp_path / "out"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = json.loads((tmp_path / "out" / "report.json").read_text())
    assert remote["setup"]["mode"] == "remote"
    for there, here in zip(remote["questions"], in_process_report["questions"][:2], strict=True):
        # greedy and seeded through the same pipeline: the service answers exactly as in-process
        assert there["results"]["rag"]["answer"] == here["results"]["rag"]["answer"]
        assert there["results"]["rag"]["retrieved"] == here["results"]["rag"]["retrieved"]
        assert there["results"]["rag"]["prompt_tokens"] == here["results"]["rag"]["prompt_tokens"]
    assert remote["questions"][0]["gold_doc_ids"] is None  # a gold context needs --index-dir to be matched


@pytest.mark.slow
def test_eval_in_process_on_the_vllm_backend_gives_the_same_answers(tmp_path, squad_slice, squad_index):
    """The vLLM backend (tests/vllm_protocol_server.py: vLLM's HTTP protocol over the transformers
    engine, with the embedded default's context length) answers as the local backend on that engine, given the
    same weights: the model as published (that server is sent no answer adapter)."""
    local = run_ragtune("eval", "run", str(squad_slice), "--index-dir", str(squad_index), "-s", "rag", "--limit", "2",
                        "--max-tokens", "24", "--out", str(tmp_path / "local"), timeout=600,
                        RAGTUNE_GENERATION__ENGINE="transformers", RAGTUNE_GENERATION__ANSWER_ADAPTER="off")
    assert local.returncode == 0, local.stderr[-3000:]
    local_report = json.loads((tmp_path / "local" / "report.json").read_text())
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).with_name("vllm_protocol_server.py")), "--port", str(port),
           "--max-model-len", "2048"]
    with Server(cmd, port, tmp_path / "vllm.log") as vllm:
        vllm.start("/health")
        done = run_ragtune("eval", "run", str(squad_slice), "--index-dir", str(squad_index), "-s", "rag", "--limit", "2",
                           "--max-tokens", "24", "--out", str(tmp_path / "out"), timeout=600,
                           RAGTUNE_GENERATION__BACKEND="vllm",
                           RAGTUNE_GENERATION__VLLM__URLS=json.dumps([f"{vllm.url}/v1"]))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["setup"]["backend"] == "vllm"
    for there, here in zip(report["questions"], local_report["questions"], strict=True):
        assert there["results"]["rag"]["answer"] == here["results"]["rag"]["answer"]
        assert there["results"]["rag"]["prompt_tokens"] == here["results"]["rag"]["prompt_tokens"]
        assert there["gold_doc_ids"] == ["squad.jsonl#Normans-0"]


def test_eval_says_what_is_missing_before_loading_anything(tmp_path, squad_slice):
    done = run_ragtune("eval", "run", str(squad_slice), "-s", "rag+fewshot")
    assert done.returncode == 2 and "unknown strategy 'rag+fewshot'" in done.stderr
    done = run_ragtune("eval", "run", str(squad_slice), "-s", "few-shot")
    assert done.returncode == 2 and "few-shot strategy needs demonstrations" in done.stderr
    done = run_ragtune("eval", "run", str(tmp_path / "nope.jsonl"))
    assert done.returncode == 2 and "does not exist" in done.stderr
    done = run_ragtune("eval", "run", str(squad_slice), "--url", f"http://127.0.0.1:{free_port()}", "-s", "rag")
    assert done.returncode == 1 and "cannot reach the service at http://127.0.0.1:" in done.stderr
