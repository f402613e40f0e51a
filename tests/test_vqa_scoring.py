"""Review 188: the VQA answer filter takes each training question's majority answer as the rest of the kind does
(an answer the normalisation empties, "a" / "the", won the count; ties went to whichever answer came first); an
answer that normalises to nothing scores 0 (it matched human answers "a" / "the": 0.9 for an empty generation);
retrieval_recall refuses a k that is not a positive integer (1.5 was read as 1)."""

from __future__ import annotations

import logging

import pytest
import torch

from mtl_lora_vl.data.records import Example, Split
from mtl_lora_vl.metrics import retrieval_recall, vqa_accuracy
from mtl_lora_vl.tasks import build_kind, load_spec
from mtl_lora_vl.tasks.vqa import majority_answer


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from vl_tiny import tiny_backbone

    return tiny_backbone(tmp_path_factory.mktemp("clip"))


def _q(text, answers, qtype="what color"):
    return Example(None, "img", text=text, answers=tuple(answers), question_type=qtype)


def _allowed(kind, qtype="what color"):
    return {kind.answers[i] for i in kind.type_answers[qtype]}


# 1. The answer filter picks each training question's "majority answer" with Counter.most_common(1)
#    (vqa.py:171), not with majority_answer(): an answer the normalisation empties ("a", "the") wins the
#    count, and ties go to whichever answer came first. The question then contributes nothing (or a
#    different answer than the generative path's consensus), and a test question whose answer is
#    "green" can never be predicted.

def test_type_filter_ignores_answers_the_normalisation_empties(clip, caplog):
    caplog.set_level(logging.ERROR)
    train = Split([_q("what color is the ball?", ["a", "a", "a", "green", "green"]),
                   _q("what color is the box?", ["yellow"] * 3)])
    kind = build_kind(load_spec("vqa"), train, clip)
    assert majority_answer(train.examples[0].answers) == "green"
    assert "green" in kind.consensus
    assert "green" in _allowed(kind)          # fails: only {'yellow'} is allowed


def test_type_filter_tie_break_does_not_depend_on_answer_order(clip, caplog):
    caplog.set_level(logging.ERROR)
    extra = _q("what color is the box?", ["yellow"] * 3)
    a = build_kind(load_spec("vqa"), Split([_q("what color is the cube?", ["blue", "blue", "red", "red"]), extra]),
                   clip)
    b = build_kind(load_spec("vqa"), Split([_q("what color is the cube?", ["red", "red", "blue", "blue"]), extra]),
                   clip)
    assert _allowed(a) == _allowed(b)         # fails: {'blue','yellow'} vs {'red','yellow'}
    assert _allowed(a) == {"blue", "red", "yellow"}   # both tied answers won the question (as consensus answers)


def test_every_answer_tied_for_a_question_s_top_count_is_allowed_for_its_type(clip, caplog):
    """The filter took a tie's alphabetically first answer (majority_answer), as the generative consensus did before
    ties were included: 'red' (5 of 10 humans, score 1.0) was masked out of that very question's targets and could
    not be predicted for any 'what color' question, while 'maroon' (also 5) trained with all the mass."""
    caplog.set_level(logging.ERROR)
    tie = _q("what color is the car?", ["red"] * 5 + ["maroon"] * 5)
    kind = build_kind(load_spec("vqa"), Split([tie, _q("what color is the box?", ["yellow"] * 3)]), clip)
    assert _allowed(kind) == {"maroon", "red", "yellow"} == set(kind.consensus)
    fields = kind.sample_fields(tie, 0)
    kept = fields["targets"] * fields["answer_mask"]
    assert kept[kind.answer_index["red"]] == kept[kind.answer_index["maroon"]] == 1.0
    disagree = _q("what color is the hat?", ["red", "pink", "rose", "ruby"], "what color is")   # no majority
    one = _q("what color is the cup?", ["teal"], "what color is")   # one human's answer wins its question
    assert _allowed(build_kind(load_spec("vqa"), Split([disagree, one]), clip), "what color is") == {"teal"}


# 2. vqa_accuracy credits an empty answer. Human answers that normalise to "" ("a", "the": e.g. the letter
#    "A" of a "what letter" question) match a prediction that also normalises to "" -- an empty generation,
#    "the", "A". The 2016 official script the module follows (458a8b2) never gives such a prediction credit
#    (it only strips the humans' punctuation, so "a" stays "a"); the module docstring says its GT-side
#    normalisation "does not change a score on VQAv2 in practice". (The 2021 master normalises both sides when
#    the humans disagree, so it too gives 0.9 in the first case, but 0 in the second and third.)

@pytest.mark.parametrize("prediction", ["", "the", "A", " . "])
def test_an_empty_normalised_prediction_scores_zero(prediction):
    assert vqa_accuracy(prediction, ["a"] * 3 + ["red"] * 7) == 0.0      # fails: 0.9
    assert vqa_accuracy(prediction, ["a"] * 10) == 0.0                   # fails: 1.0 (official: 0)
    assert vqa_accuracy(prediction, ["the"]) == 0.0                      # fails: 1.0 (exact-match path)


# 3. retrieval_recall truncates a non-integer k silently: ks=(1.5,) is reported as i2t_r1/t2i_r1.

def test_retrieval_recall_refuses_a_non_integer_k():
    with pytest.raises((ValueError, TypeError), match="ks"):
        retrieval_recall(torch.eye(3), [0, 1, 2], ks=(1.5,))


def test_evaluation_questions_with_no_answer_in_the_head_s_vocabulary_are_counted(clip, caplog):
    """Repro: a test split whose questions' answers the training answers never gave (purple, red) was scored 0 on
    those rows silently: the head picks among its fixed vocabulary, so the task's score could not pass 1/3."""
    train = Split([_q("what color is the ball?", ["green"] * 4), _q("what color is the box?", ["yellow"] * 4)])
    kind = build_kind(load_spec("vqa"), train, clip)
    test = Split([_q("what color is it?", ["green"] * 4), _q("what color is it?", ["purple", "violet"] * 2),
                  _q("what color is it?", ["red"] * 4)])
    caplog.set_level(logging.WARNING)
    kind.check_eval_split(test)
    assert "task 'vqa': 2 of its 3 evaluation questions have no answer among the 2 the model picks from (the most " \
           "frequent training answers, up to the spec's answer_vocab_size), so they score 0 whatever it predicts: " \
           "the task's score is at most 0.333" in caplog.text
    caplog.clear()
    kind.check_eval_split(Split(test.examples[:1]))
    assert "picks from" not in caplog.text
