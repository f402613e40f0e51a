"""Evaluation metrics of the task kinds: VQA accuracy, retrieval recall, captioning scores, classification.

Every headline metric is a fraction in [0, 1], higher is better (CIDEr is the exception: it is
unbounded above, as defined by its authors).

VQA follows the official VQA evaluation (``vqaEval.py`` of the VQA API, GT-Vision-Lab/VQA, as of 2016:
commit 458a8b2):

* punctuation: each mark of ``_PUNCT`` is deleted when it touches a space or when the answer holds a
  digit-comma-digit group ("1,000"), otherwise it becomes a space ("black/white" -> "black white");
  a period is deleted unless a digit follows it ("3.5" stays, "yes." -> "yes");
* lowercase; number words "none", "zero" .. "ten" become digits; the articles "a", "an", "the" go;
  apostrophe-less contractions get their apostrophes back ("dont" -> "don't");
* accuracy of a prediction is ``min(#humans who gave it / 3, 1)`` averaged over the subsets that leave
  one human out (ten subsets of nine for VQAv2's ten answers; the official script does this for any
  number of answers).

With fewer than three answers that formula cannot reach 1 (one answer always scores 0), so such
questions (GQA-style single-answer data) are scored by exact match after normalisation instead.

Two deliberate, documented departures: the ground-truth answers go through the full normalisation
too (the official script only strips their punctuation, and only when the humans disagree), and the
contraction table also accepts every apostrophe-less spelling of a two-apostrophe form
("couldntve" as well as the official "couldnt've" / "couldn'tve"). Neither changes a score on VQAv2
in practice; both make the function symmetric and predictable. One consequence is closed off: a human answer
"a" or "the" normalises to nothing, and so would an empty generation, "the" or "A"; a prediction that normalises
to nothing scores 0 (as in the official script, which never empties a human answer). The script's 2021 master
(a013f00) differs more: where all humans gave one answer it normalises neither side, so an un-normalised
prediction ("Yes", "two" for "2") scores 0 there and 1 here (and in the 2016 script); a generated answer is
such a prediction.
Two slips of the official script are not copied: its table maps "somebody'd" to "somebodyd" (the pair written
backwards; kept as written here), and its period strip passes ``re.UNICODE`` as ``count``, so it removes only the
first 32 periods of an answer (all of them here).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mtl_lora_vl.caption_metrics import bleu, cider_d
from mtl_lora_vl.ptb_tokens import tokenize_caption

# ----------------------------------------------------------------------------------------------
# VQA answer normalisation
# ----------------------------------------------------------------------------------------------

_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
          "?", "!")
# re.ASCII: the official script is Python 2 and compiles these without re.UNICODE, so its \d is [0-9] only.
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)", re.ASCII)
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a (mistyped) look-ahead that always
# holds, so in effect a period is removed whenever no digit follows it. We state that effect directly.
_PERIOD = re.compile(r"\.(?!\d)", re.ASCII)

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# Contracted forms whose apostrophe-less spellings the official table restores. Words that are also
# ordinary English words without the apostrophe ("its", "well", "were", "lets", "ill", "shed", ...) are
# absent from the official table, and so from this list.
_CONTRACTED_FORMS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've "
    "might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've "
    "shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll "
    "someone's something'd something'd've something'll that's there'd there'd've there're there's "
    "they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're "
    "what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're "
    "why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're "
    "you've"
).split()


def _build_contractions(forms: Sequence[str]) -> dict[str, str]:
    """Map every spelling of each form with one or more apostrophes dropped back to the form."""
    table: dict[str, str] = {}
    for form in forms:
        positions = [i for i, ch in enumerate(form) if ch == "'"]
        for k in range(1, len(positions) + 1):
            for drop in itertools.combinations(positions, k):
                key = "".join(ch for i, ch in enumerate(form) if i not in drop)
                table.setdefault(key, form)
    return table


_CONTRACTIONS = _build_contractions(_CONTRACTED_FORMS)


def _process_punctuation(text: str) -> str:
    has_number_comma = _COMMA_IN_NUMBER.search(text) is not None
    out = text
    for p in _PUNCT:
        # The official test looks at the original text, not the text being rewritten.
        if has_number_comma or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _process_digits_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Normalise a VQA answer as the official VQA evaluation does (see the module docstring).

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_answer expects a str, got {type(text).__name__}: {text!r}")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_articles(_process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Standard VQA accuracy of one prediction against the human answers of one question.

    ``min(#matching humans / 3, 1)`` after normalising both sides, averaged over the leave-one-out subsets
    of the humans as the official script does (for VQAv2's ten answers: the ten subsets of nine). With one
    or two answers, where that formula cannot reach 1, exact match: 1.0 when any answer matches.
    """
    if isinstance(answers, str):
        raise TypeError("vqa_accuracy: `answers` must be a sequence of answer strings, not one str "
                        f"({answers!r}); wrap it in a list")
    if len(answers) == 0:
        raise ValueError("vqa_accuracy: `answers` is empty; a question needs at least one human answer")
    pred = normalize_answer(prediction)
    if not pred:   # nothing left to match ("", "the", "A"): the official script gives it no credit either
        return 0.0
    gts = [normalize_answer(a) for a in answers]
    matches = sum(g == pred for g in gts)
    if len(gts) < 3:
        return float(matches > 0)
    # Leaving out a matching human leaves matches-1 among the others, any other leaves matches.
    return sum(min(1.0, (matches - (g == pred)) / 3.0) for g in gts) / len(gts)


# ----------------------------------------------------------------------------------------------
# Inputs: tensors, numpy arrays or nested lists
# ----------------------------------------------------------------------------------------------

def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a torch tensor, a numpy array or a nested list; got "
                        f"{type(x).__name__} ({e})") from e


def _as_index_tensor(x: Any, name: str, where: str, what: str = "class indices") -> torch.Tensor:
    """``x`` as a long tensor of indices; float and bool values are refused (a float label was truncated)."""
    t = _as_tensor(x, name)
    if t.numel() and (t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex):   # [] reads as float64
        raise ValueError(f"{where}: {name} must hold integer {what}, got {t.dtype}")
    return t.long()


# ----------------------------------------------------------------------------------------------
# Retrieval
# ----------------------------------------------------------------------------------------------

def retrieval_recall(similarity: Any, text_to_image: Any, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K for image->text and text->image retrieval, and their mean.

    ``similarity`` is (n_images, n_texts); ``text_to_image[j]`` is the image index of text j, so an image
    may own several texts (COCO: five). ``i2t_rK`` is the fraction of images for which any of their own
    texts is among their top K texts; ``t2i_rK`` the fraction of texts whose image is among their top K
    images; ``mean_recall`` the mean of all those numbers. Images that own no text are left out of the
    i2t average (they still compete as distractors in t2i). Ties count against the query: an item
    scored equal to the correct one is ranked ahead of it, so a constant matrix scores the worst possible (0 where K is
    below the candidates), not 1.
    """
    sim = _as_tensor(similarity, "similarity")
    t2i = _as_index_tensor(text_to_image, "text_to_image", "retrieval_recall", "image indices")
    if sim.ndim != 2:
        raise ValueError(f"retrieval_recall: similarity must be 2-D (n_images, n_texts), got shape "
                         f"{tuple(sim.shape)}")
    n_img, n_txt = sim.shape
    if n_img == 0 or n_txt == 0:
        raise ValueError(f"retrieval_recall: similarity is empty (shape {tuple(sim.shape)})")
    if t2i.ndim != 1 or t2i.shape[0] != n_txt:
        raise ValueError(f"retrieval_recall: text_to_image must be 1-D with one image index per text "
                         f"(similarity has {n_txt} texts as columns), got shape {tuple(t2i.shape)}; if your "
                         "matrix is texts x images, pass similarity.T")
    t2i = t2i.to(sim.device)
    if int(t2i.min()) < 0 or int(t2i.max()) >= n_img:
        raise ValueError(f"retrieval_recall: text_to_image has indices in [{int(t2i.min())}, {int(t2i.max())}] "
                         f"but similarity has {n_img} images (rows)")
    if not ks or any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
        raise ValueError(f"retrieval_recall: ks must be positive integers, got {tuple(ks)}")
    ks = tuple(int(k) for k in ks)
    if not sim.dtype.is_floating_point:
        sim = sim.float()
    if sim.dtype in (torch.float16, torch.bfloat16):
        sim = sim.float()
    if torch.isnan(sim).any():
        raise ValueError("retrieval_recall: similarity contains NaN; check the embeddings (e.g. a zero vector "
                         "normalised to NaN)")

    cols = torch.arange(n_txt, device=sim.device)
    # text -> image: rank of the correct image = number of other images scored >= it.
    correct = sim[t2i, cols]                                          # (n_txt,)
    t2i_rank = (sim >= correct[None, :]).sum(0) - 1                   # (n_txt,)

    # image -> text: rank of the best own text = number of other texts scored >= it.
    own = torch.zeros(n_img, n_txt, dtype=torch.bool, device=sim.device)
    own[t2i, cols] = True
    best_own = sim.masked_fill(~own, float("-inf")).amax(1)           # (n_img,)
    has_text = own.any(1)
    i2t_rank = ((sim >= best_own[:, None]) & ~own).sum(1)[has_text]   # (n_img_with_text,)

    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t_rank < k).double().mean())
    for k in ks:
        out[f"t2i_r{k}"] = float((t2i_rank < k).double().mean())
    out["mean_recall"] = float(sum(out.values()) / len(out))
    return out


# ----------------------------------------------------------------------------------------------
# Captioning
# ----------------------------------------------------------------------------------------------

def caption_scores(predictions: Mapping[Any, str], references: Mapping[Any, Sequence[str]]) -> dict[str, float]:
    """Corpus CIDEr(-D) and BLEU-4 of generated captions, as pycocoevalcap's scorers compute them.

    ``predictions`` maps an image id to one generated caption; ``references`` maps each of those ids
    to its reference captions. Ids of ``references`` without a prediction are ignored; a prediction
    without references is an error. Both sides go through :func:`tokenize_caption`; the scores come
    from :mod:`mtl_lora_vl.caption_metrics` (pure Python; the tests check them against pycocoevalcap).
    """
    if not predictions:
        raise ValueError("caption_scores: no predictions given")
    missing = [k for k in predictions if k not in references]
    if missing:
        raise ValueError(f"caption_scores: {len(missing)} prediction id(s) have no references, e.g. "
                         f"{missing[:5]}; pass references for every predicted image")
    res: dict[Any, str] = {}
    gts: dict[Any, list[str]] = {}
    for key, pred in predictions.items():
        if not isinstance(pred, str):
            raise TypeError(f"caption_scores: prediction for {key!r} must be a str, got {type(pred).__name__}")
        refs = references[key]
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(refs, Sequence) or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"caption_scores: references for {key!r} must be a list of str, got {refs!r}")
        if not any(r.strip() for r in refs):
            raise ValueError(f"caption_scores: image {key!r} has no non-empty reference caption")
        refs = [tokenize_caption(r) for r in refs]   # one that tokenises to nothing ("...") still counts, as there
        res[key] = tokenize_caption(pred)
        gts[key] = refs
    cider, _ = cider_d(gts, res)
    return {"cider": float(cider), "bleu4": float(bleu(gts, res, 4)[3])}


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------

def topk_accuracy(logits: Any, labels: Any, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-K accuracy for each K, as ``{"top1": .., "top5": ..}``.

    A K larger than the number of classes is clipped to it (then every sample counts as correct). A class
    tied with the true one counts as ranked above it (constant logits score 0, not chance); NaN logits are an
    error, as in :func:`retrieval_recall`.
    """
    logits = _as_tensor(logits, "logits")
    labels = _as_index_tensor(labels, "labels", "topk_accuracy").to(logits.device)
    if logits.ndim != 2:
        raise ValueError(f"topk_accuracy: logits must be (n_samples, n_classes), got shape {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"topk_accuracy: labels must be 1-D with {logits.shape[0]} entries, got shape "
                         f"{tuple(labels.shape)}")
    n, c = logits.shape
    if n == 0:
        raise ValueError("topk_accuracy: no samples")
    if int(labels.min()) < 0 or int(labels.max()) >= c:
        raise ValueError(f"topk_accuracy: labels must lie in [0, {c - 1}], got [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    if not ks or any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):   # (2.9 was reported as top2)
        raise ValueError(f"topk_accuracy: ks must be positive integers, got {tuple(ks)}")
    ks = tuple(int(k) for k in ks)
    scores = logits.float()
    if torch.isnan(scores).any():
        raise ValueError("topk_accuracy: logits contain NaN (an overflow in half precision?); nothing can be ranked")
    true = scores.gather(1, labels[:, None])
    rank = (scores >= true).sum(1)  # classes scoring at least the true one, itself included: ties count against
    return {f"top{k}": float((rank <= min(k, c)).double().mean()) for k in ks}


def per_class_accuracy(pred: Any, labels: Any, num_classes: int) -> list[float]:
    """Accuracy within each true class; ``nan`` for a class with no samples (use ``nanmean`` to average)."""
    pred = _as_index_tensor(pred, "pred", "per_class_accuracy").flatten()
    labels = _as_index_tensor(labels, "labels", "per_class_accuracy").flatten().to(pred.device)
    if pred.shape != labels.shape:
        raise ValueError(f"per_class_accuracy: pred has {pred.numel()} entries but labels has {labels.numel()}")
    if num_classes < 1:
        raise ValueError(f"per_class_accuracy: num_classes must be >= 1, got {num_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"per_class_accuracy: labels must lie in [0, {num_classes - 1}]")
    total = torch.bincount(labels, minlength=num_classes).float()
    correct = torch.bincount(labels[pred == labels], minlength=num_classes).float()
    return [float(c / t) if t > 0 else math.nan for c, t in zip(correct.tolist(), total.tolist())]
