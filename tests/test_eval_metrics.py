"""The eval metrics on hand-checked cases (SQuAD's normalisation, EM, F1, recall, MRR, declines)."""

from __future__ import annotations

import pytest

from evaluation.metrics import (
    Outcome, contains_gold, declines, exact_match, normalize, reciprocal_rank, recall_at, summarize, token_f1,
)

DECLINE = "I do not know: the passages do not say."


def test_normalisation_is_squads():
    assert normalize("The  Normans, in 10th-century France!") == "normans in 10thcentury france"
    assert normalize("An apple a day") == "apple day"
    assert normalize("Rollo [1]") == normalize("Rollo [1, 3]") == normalize("Rollo [2-4].") == "rollo"  # citations go
    assert normalize("the 1 [sic] in [1a]") == "1 sic in 1a"  # brackets that are not citations stay


@pytest.mark.parametrize("prediction, golds, em, f1", [
    ("Denmark, Iceland and Norway", ["Denmark, Iceland and Norway"], 1.0, 1.0),
    ("the Normans", ["Normans"], 1.0, 1.0),  # articles and case do not count
    ("Rollo", ["Richard", "Rollo"], 1.0, 1.0),  # the best of the acceptable answers
    ("in France", ["France"], 0.0, 2 / 3),  # precision 1/2, recall 1: F1 = 2/3
    ("10th and 11th centuries", ["10th century"], 0.0, 2 * (1 / 4) * (1 / 2) / (1 / 4 + 1 / 2)),  # 1 of 4, 1 of 2
    ("Paris", ["London"], 0.0, 0.0),
    ("William the Conqueror [1]", ["William the Conqueror"], 1.0, 1.0),  # the asked-for citation is no error
    ("in France [2]", ["France"], 0.0, 2 / 3),
])
def test_exact_match_and_f1(prediction, golds, em, f1):
    assert exact_match(prediction, golds) == em
    assert token_f1(prediction, golds) == pytest.approx(f1)


def test_contains_gold():
    assert contains_gold("They came from Normandy, in France [2].", ["France"]) == 1.0
    assert contains_gold("They came from Normandy.", ["France"]) == 0.0


def test_declines_are_recognised():
    assert declines(DECLINE, DECLINE)
    assert declines("I don't know.", DECLINE) and declines("The passages do not contain that.", DECLINE)
    assert declines("", DECLINE)
    assert not declines("William the Conqueror [1].", DECLINE)


def test_recall_and_mrr():
    ranked = ["d3", "d1", "d7"]
    assert reciprocal_rank(ranked, {"d1"}) == 0.5 and reciprocal_rank(ranked, {"d9"}) == 0.0
    assert reciprocal_rank(ranked, {"d7", "d1"}) == 0.5  # the first gold document counts
    assert recall_at(ranked, {"d7"}, 3) == 1.0 and recall_at(ranked, {"d7"}, 2) == 0.0


def test_summary_counts_declines_right_on_unanswerable_and_wrong_on_answerable():
    def outcome(answer, golds, answerable=True, ranked=None, gold=None, seconds=1.0):
        return Outcome(answer, golds, answerable, declines(answer, DECLINE), 100, 10, seconds, ranked, gold)

    summary = summarize([
        outcome("Rollo", ["Rollo"], ranked=["a", "b"], gold={"a"}, seconds=0.1),  # EM 1
        outcome("in France", ["France"], ranked=["b", "a"], gold={"a"}, seconds=0.2),  # EM 0, F1 2/3
        outcome("I don't know.", ["Paris"], ranked=["c", "d"], gold={"a"}, seconds=0.3),  # a false decline
        outcome(DECLINE, [], answerable=False, seconds=0.4),  # the right answer to an unanswerable one
    ], k=2)
    assert summary.questions == 4
    assert summary.exact_match == pytest.approx((1 + 0 + 0 + 1) / 4)
    assert summary.f1 == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)
    assert summary.exact_match_answerable == pytest.approx(1 / 3)  # SQuAD 2.0's HasAns split
    assert summary.f1_answerable == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert summary.contains == pytest.approx(2 / 3)
    assert summary.decline_rate == 1.0 and summary.false_decline_rate == pytest.approx(1 / 3)
    assert summary.recall_at_k == pytest.approx(2 / 3) and summary.mrr == pytest.approx((1 + 0.5 + 0) / 3)
    assert summary.latency_p50_ms == pytest.approx(300) and summary.latency_p95_ms == pytest.approx(400)


def test_the_check_auc_is_the_chance_an_answerable_question_scores_higher():
    from evaluation.metrics import separation_auc

    assert separation_auc([2.0, 3.0], [0.0, 1.0]) == 1.0 and separation_auc([0.0], [1.0]) == 0.0
    assert separation_auc([1.0, 3.0], [1.0, 2.0]) == pytest.approx((0.5 + 0 + 1 + 1) / 4)  # a tie counts half
    assert separation_auc([1.0], []) is None

    def outcome(answerable, score):
        return Outcome("x", ["y"] if answerable else [], answerable, False, 100, 1, 1.0, answerable_score=score)

    summary = summarize([outcome(True, 0.5), outcome(True, -1.0), outcome(False, 0.0), outcome(False, None)], k=2)
    assert summary.answerable_auc == pytest.approx(0.5)  # an answer the check did not score is left out
    assert summarize([outcome(True, None), outcome(False, None)], k=2).answerable_auc is None


def test_citations_and_faithfulness():
    from evaluation.metrics import cited, citation_correct, faithfulness

    assert cited("Rollo [2], then William [1, 3] and [4-5]; not [1a]") == {1, 2, 3, 4, 5}
    passages = {1: "Lyon lies on the Rhone.", 2: "Paris is the capital of France."}
    assert citation_correct("Paris [2]", passages, ["Paris"]) == 1.0
    assert citation_correct("Paris [1]", passages, ["Paris"]) == 0.0  # cites a passage without the answer
    assert citation_correct("Paris [1, 2]", passages, ["Paris"]) == 1.0  # one of the cited holds it
    assert citation_correct("Paris", passages, ["Paris"]) is None and citation_correct("Paris [7]", passages, ["Paris"]) is None
    assert faithfulness("Paris is big [2]", passages) == pytest.approx(2 / 3)  # "big" is not in the passages
    assert faithfulness("[2]", passages) is None

    def outcome(answer, golds, answerable=True, given=passages):
        return Outcome(answer, golds, answerable, declines(answer, DECLINE), 100, 10, 1.0, ["a"], {"a"}, given)

    summary = summarize([
        outcome("Paris [2]", ["Paris"]), outcome("Paris [1]", ["Paris"]), outcome("Paris", ["Paris"]),
        outcome(DECLINE, [], answerable=False), outcome("Rome", ["Rome"], given=None),  # no passages: not counted
    ], k=1)
    assert summary.cites == pytest.approx(2 / 3) and summary.citation_accuracy == pytest.approx(1 / 2)
    assert summary.faithfulness == pytest.approx(1.0)  # the three answers' words are all in the passages
