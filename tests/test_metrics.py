"""Metrics against hand-worked cases of the official rules."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from mtl_lora_vl.metrics import (
    caption_scores,
    normalize_answer,
    per_class_accuracy,
    retrieval_recall,
    topk_accuracy,
    vqa_accuracy,
)

# ------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize("raw, expected", [
    ("Yes", "yes"),
    ("yes.", "yes"),                     # a period not followed by a digit is removed
    ("3.5", "3.5"),                      # a decimal point stays
    ("1,000", "1000"),                   # digit,digit present: every comma mark is deleted, not spaced
    ("black/white", "black white"),      # a mark touching no space becomes a space
    ("black / white", "black white"),    # a mark touching a space is deleted (spaces then collapse)
    ("Two", "2"),                        # number words -> digits
    ("none", "0"),                       # the official table maps "none" to 0
    ("ten dogs", "10 dogs"),
    ("The Red Ball", "red ball"),        # lowercase, articles dropped
    ("an apple", "apple"),
    ("dont", "don't"),                   # contractions get their apostrophe back
    ("isnt it", "isn't it"),
    ("couldnt've", "couldn't've"),
    ("don't", "don't"),                  # apostrophes are not punctuation in the official list
    ("  left\tside\n", "left side"),
    ("what?!", "what"),
    ("a.m.", "am"),
    ("red-orange", "red orange"),
    ("(red)", "red"),
])
def test_normalize_answer_official_rules(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    # vqaEval.py is Python 2 and compiles its patterns without re.UNICODE, so its \d is [0-9]: a comma between
    # other digits (Arabic-Indic, fullwidth) is no number comma, and a period before one is stripped.
    ("\u0661,\u0662", "\u0661 \u0662"),
    ("\uff11,\uff10\uff10\uff10", "\uff11 \uff10\uff10\uff10"),
    ("yes/\uff12,\uff13", "yes \uff12 \uff13"),      # the "/" is spaced, not deleted: no ASCII digit,digit
    ("\u0663.\u0665", "\u0663\u0665"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
])
def test_normalize_answer_digit_rules_are_ascii_as_in_the_official_script(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_rejects_non_strings():
    with pytest.raises(TypeError, match="expects a str"):
        normalize_answer(3)


# ------------------------------------------------------------------------------------ VQA accuracy

def _ten(k: int, hit: str = "red", miss: str = "blue") -> list[str]:
    return [hit] * k + [miss] * (10 - k)


@pytest.mark.parametrize("k, expected", [
    # k of 10 humans said the prediction. Leaving out one of the k matching humans leaves k-1 matches,
    # leaving out one of the 10-k others leaves k; average min(m/3, 1) over the ten subsets.
    (0, 0.0),
    (1, 0.3),    # 9 subsets with 1 match (1/3) + 1 subset with 0 -> 3/10
    (2, 0.6),    # 8 x 2/3 + 2 x 1/3 = 6 -> 6/10
    (3, 0.9),    # 7 x 1 + 3 x 2/3 = 9 -> 9/10
    (4, 1.0),    # every subset of nine keeps at least 3 matches
    (10, 1.0),
])
def test_vqa_accuracy_leave_one_out(k, expected):
    assert vqa_accuracy("red", _ten(k)) == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides():
    answers = ["two", "2", "2 ", "Two.", "blue", "blue", "blue", "blue", "blue", "blue"]
    # "2", "two", "Two." all normalise to "2": 4 matching humans -> 1.0
    assert vqa_accuracy("2", answers) == pytest.approx(1.0)
    assert vqa_accuracy("The Blue.", answers) == pytest.approx(1.0)
    grey = ["gray", "grey", "gray"] + ["white"] * 7
    # "grey" is not a synonym of "gray" in the official rules: 1 of 10 -> 0.3
    assert vqa_accuracy("grey", grey) == pytest.approx(0.3)


def _official_vqa_accuracy(pred: str, answers: list[str]) -> float:
    """vqaEval.py's loop (GT-Vision-Lab/VQA), answers already normalised: each human left out in turn."""
    accs = []
    for i in range(len(answers)):
        others = answers[:i] + answers[i + 1:]
        accs.append(min(1.0, sum(a == pred for a in others) / 3))
    return sum(accs) / len(accs)


def test_vqa_accuracy_leaves_one_out_for_any_number_of_answers():
    assert vqa_accuracy("red", ["red"] * 3) == pytest.approx(2 / 3)           # not 1: as the official script
    assert vqa_accuracy("red", ["red", "red", "blue"]) == pytest.approx(4 / 9)
    assert vqa_accuracy("2", ["2", "2", "2", "3", "3"]) == pytest.approx(0.8)
    rng = random.Random(0)
    for _ in range(300):
        answers = [rng.choice(["red", "blue", "2"]) for _ in range(rng.randint(3, 12))]
        pred = rng.choice(["red", "blue", "2", "green"])
        assert vqa_accuracy(pred, answers) == pytest.approx(_official_vqa_accuracy(pred, answers))


def test_vqa_accuracy_with_one_or_two_answers_is_exact_match():
    # The official formula cannot reach 1 there (one answer always scores 0): single-answer data (GQA-style)
    # is scored by exact match after normalisation.
    assert vqa_accuracy("Red.", ["red"]) == 1.0
    assert vqa_accuracy("blue", ["red"]) == 0.0
    assert vqa_accuracy("two", ["2", "3"]) == 1.0


def test_vqa_accuracy_bad_input():
    with pytest.raises(ValueError, match="empty"):
        vqa_accuracy("red", [])
    with pytest.raises(TypeError, match="not one str"):
        vqa_accuracy("red", "red")


# ------------------------------------------------------------------------------------ retrieval

def _five_captions(n_images: int) -> list[int]:
    return [i for i in range(n_images) for _ in range(5)]


def test_retrieval_perfect_with_five_captions_per_image():
    t2i = _five_captions(4)
    sim = torch.full((4, 20), -1.0)
    for j, i in enumerate(t2i):
        sim[i, j] = 1.0
    out = retrieval_recall(sim, t2i)
    assert set(out) == {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mean_recall"}
    assert all(v == 1.0 for v in out.values())


def test_retrieval_hand_made_matrix():
    # 3 images x 15 texts (five captions each), ks=(1, 2).
    t2i = _five_captions(3)
    sim = np.zeros((3, 15), dtype=np.float32)
    # image 0: its caption 2 is the best text -> i2t rank 0.
    sim[0, :] = 0.1
    sim[0, 2] = 0.9
    # image 1: best text is a caption of image 2 (0.8), then its own caption 6 (0.7) -> rank 1.
    sim[1, :] = 0.1
    sim[1, 12] = 0.8
    sim[1, 6] = 0.7
    sim[0, 12] = 0.0   # so that only image 1 outranks image 2 for text 12
    # image 2: two captions of image 0 score above all of its own -> rank 2.
    sim[2, :] = 0.1
    sim[2, 0] = 0.95
    sim[2, 1] = 0.9
    sim[2, 10] = 0.5
    out = retrieval_recall(sim, t2i, ks=(1, 2))
    assert out["i2t_r1"] == pytest.approx(1 / 3)     # only image 0
    assert out["i2t_r2"] == pytest.approx(2 / 3)     # images 0 and 1
    # t2i, column by column: text j's score for its own image vs the others (ties count against).
    # texts 0,1 (image 0): column [0.1, 0.1, 0.95/0.9] -> image 2 ahead, own tied with image 1 -> rank 2
    # text 2: [0.9, 0.1, 0.1] -> rank 0.  texts 3,4: all 0.1 -> rank 2 (two ties).
    # texts 5,7,8,9 (image 1): all 0.1 -> rank 2; text 6: [0.1, 0.7, 0.1] -> rank 0.
    # text 10 (image 2): [0.1, 0.1, 0.5] -> rank 0; texts 11,13,14: all 0.1 -> rank 2;
    # text 12: [0.0, 0.8, 0.1] -> image 1 ahead -> rank 1.
    assert out["t2i_r1"] == pytest.approx(3 / 15)     # texts 2, 6, 10
    assert out["t2i_r2"] == pytest.approx(4 / 15)     # + text 12
    assert out["mean_recall"] == pytest.approx((1 / 3 + 2 / 3 + 3 / 15 + 4 / 15) / 4)


def test_retrieval_constant_matrix_is_not_perfect():
    out = retrieval_recall(torch.zeros(10, 50), _five_captions(10), ks=(1, 10))
    assert out["i2t_r1"] == 0.0 and out["t2i_r1"] == 0.0
    assert out["t2i_r10"] == 1.0     # with 10 images every image is within the top 10


def test_retrieval_image_without_captions_is_only_a_distractor():
    sim = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    out = retrieval_recall(sim, [0, 1], ks=(1,))
    assert out["i2t_r1"] == 1.0 and out["t2i_r1"] == 1.0


def test_retrieval_shape_errors():
    with pytest.raises(ValueError, match="2-D"):
        retrieval_recall(torch.zeros(5), [0])
    with pytest.raises(ValueError, match="one image index per text"):
        retrieval_recall(torch.zeros(2, 3), [0, 1])
    with pytest.raises(ValueError, match="2 images"):
        retrieval_recall(torch.zeros(2, 3), [0, 1, 2])
    with pytest.raises(ValueError, match="integer"):
        retrieval_recall(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall(torch.full((2, 2), float("nan")), [0, 1])


# ------------------------------------------------------------------------------------ captioning / classification

def test_caption_scores_perfect_and_wrong():
    refs = {1: ["A red circle.", "the red circle"], 2: ["a blue square left of a red circle"],
            3: ["two green triangles"]}
    good = caption_scores({1: "a red circle", 2: "A blue square, left of a red circle!", 3: "two green triangles"},
                          refs)
    bad = caption_scores({1: "yellow", 2: "purple diamond", 3: "nothing here"}, refs)
    assert good["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert good["cider"] > bad["cider"] >= 0.0
    assert bad["bleu4"] < 0.01


def test_caption_scores_errors():
    with pytest.raises(ValueError, match="no references"):
        caption_scores({1: "x"}, {2: ["y"]})
    with pytest.raises(ValueError, match="no predictions"):
        caption_scores({}, {})
    for refs in (None, [None, "b"], [3]):   # were bare TypeError / AttributeError from deep inside
        with pytest.raises(TypeError, match=r"references for 1 must be a list of str"):
            caption_scores({1: "x"}, {1: refs})


def test_topk_and_per_class():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    labels = torch.tensor([0, 2, 2, 1])
    out = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert out["top1"] == pytest.approx(0.5)      # rows 0 and 2
    assert out["top2"] == pytest.approx(1.0)      # row 1: label 2 is second; row 3: label 1 is second
    assert out["top5"] == 1.0                     # clipped to 3 classes
    pc = per_class_accuracy(logits.argmax(1), labels, 4)
    assert pc[0] == 1.0 and pc[1] == 0.0 and pc[2] == 0.5 and math.isnan(pc[3])
    with pytest.raises(ValueError, match="labels must lie"):
        topk_accuracy(logits, torch.tensor([0, 1, 2, 3]))
    # ties count against the true class (constant logits scored chance, 0.1 / 0.4 of ten classes); NaN is an error
    flat = torch.zeros(10, 10)
    assert topk_accuracy(flat, torch.arange(10), ks=(1, 5)) == {"top1": 0.0, "top5": 0.0}
    assert topk_accuracy(flat, torch.arange(10), ks=(10,)) == {"top10": 1.0}
    with pytest.raises(ValueError, match="logits contain NaN"):
        topk_accuracy(torch.full((2, 3), float("nan")), torch.tensor([0, 1]))


def test_retrieval_tie_at_minus_infinity_counts_against_the_image():
    # image 0's own text and a rival text both score -inf: a tie, which counts against the query (as at any
    # other value). The mask value finfo.min made the best own score finfo.min > -inf, so the tie was a hit.
    sim = torch.tensor([[-float("inf"), -float("inf")], [0.0, 0.0]])
    out = retrieval_recall(sim, torch.tensor([0, 1]), ks=(1,))
    assert out["i2t_r1"] == 0.0


def test_retrieval_recall_is_the_exact_fraction():
    # 1 of 3 texts found: 1/3 as a Python float, not float32's 0.3333333432674408
    sim = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    out = retrieval_recall(sim, torch.tensor([0, 0, 2]), ks=(1,))
    assert out["t2i_r1"] == 1 / 3


# Labels that are not class indices (helper 125): a float 0.9 was truncated to class 0, True read as class 1
@pytest.mark.parametrize("labels", [torch.tensor([0.9, 0.2]), torch.tensor([True, False])])
def test_topk_accuracy_refuses_non_integer_labels(labels):
    logits = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="integer"):
        topk_accuracy(logits, labels, ks=(1,))


def test_per_class_accuracy_refuses_non_integer_labels():
    with pytest.raises(ValueError, match="integer"):
        per_class_accuracy(torch.tensor([1.7, 0.0]), torch.tensor([1.2, 0.0]), 3)


def test_integer_labels_still_accepted():
    logits = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert topk_accuracy(logits, [1, 0], ks=(1,)) == {"top1": 1.0}
    assert topk_accuracy(logits, torch.tensor([1, 0], dtype=torch.int32), ks=(1,)) == {"top1": 1.0}
    assert per_class_accuracy([1, 0], [1, 0], 2) == [1.0, 1.0]


def test_per_class_accuracy_of_no_samples_still_nan():
    assert all(v != v for v in per_class_accuracy([], [], 2))   # [] reads as float64; still accepted


@pytest.mark.parametrize("ks", [(2.9,), (1.5, 5), (True,), ()])
def test_topk_accuracy_refuses_a_k_that_is_not_a_positive_integer(ks):
    """As retrieval_recall does: ks=(2.9,) came back as {"top2": ...}, True as top1, and () as no score at all."""
    with pytest.raises(ValueError, match="topk_accuracy: ks must be positive integers"):
        topk_accuracy(torch.eye(3), [0, 1, 2], ks=ks)
    assert topk_accuracy(torch.eye(3), [0, 1, 2], ks=(1, 2.0)) == {"top1": 1.0, "top2": 1.0}
