"""Corpus BLEU and CIDEr-D for captioning, computed as pycocoevalcap computes them, without its Java jars.

Inputs are already tokenised: ``references`` maps an image id to its reference captions and
``predictions`` an image id to one generated caption, each a string of space-separated tokens
(:func:`mtl_lora_vl.metrics.tokenize_caption` makes them). N-grams are n = 1..4.

**BLEU** (Papineni et al. 2002), corpus level, as ``pycocoevalcap.bleu.Bleu(4)`` (``option="closest"``):
per image, each n-gram count of the prediction is clipped to its largest count in any one reference;
clipped matches and prediction n-grams are summed over the corpus; BLEU-N is the geometric mean of the
N modified precisions, ``(prod_k (correct_k + 1e-15) / (guess_k + 1e-9)) ** (1/N)``, times the brevity
penalty ``exp(1 - r/c)`` when ``c < r``, where ``c`` is the total prediction length and ``r`` the sum
over images of the reference length closest to the prediction's (ties: the shorter reference).

**CIDEr-D** (Vedantam et al. 2015), as ``pycocoevalcap.cider.Cider()`` (which is CIDEr-D): each
sentence is a tf-idf vector per n-gram order, ``tf * (log(N_images) - log(max(1, df)))`` with the
document frequency ``df`` of an n-gram the number of images whose references contain it (references
only). For each reference, per order: the prediction's weights clipped to the reference's,
``sum min(v_pred, v_ref) * v_ref / (|v_pred| |v_ref|)`` (0 when either norm is 0), times the Gaussian
length penalty ``exp(-(l_pred - l_ref)^2 / (2 * 6^2))``; averaged over the four orders, summed over
the references and divided by their number, times 10. The corpus score is the mean over images.
As in pycocoevalcap, the length ``l`` in the penalty is the sentence's number of bigrams (words - 1,
and 0 for an empty or one-word sentence).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

_TINY, _SMALL = 1e-15, 1e-9


def ngram_counts(sentence: str, n: int = 4) -> Counter:
    """Counts of every 1..n-gram (as word tuples) of a whitespace-tokenised sentence."""
    words = sentence.split()
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


def _check(references: Mapping[Any, Sequence[str]], predictions: Mapping[Any, str]) -> list:
    if set(references) != set(predictions):
        only_p = [k for k in predictions if k not in references][:5]
        only_r = [k for k in references if k not in predictions][:5]
        raise ValueError(f"predictions and references must have the same image ids (only in predictions: {only_p}, "
                         f"only in references: {only_r})")
    if not predictions:
        raise ValueError("no predictions to score")
    for k, refs in references.items():
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references of image {k!r} must be a non-empty list of strings")
    return list(predictions)


def bleu(references: Mapping[Any, Sequence[str]], predictions: Mapping[Any, str], n: int = 4) -> list[float]:
    """Corpus BLEU-1..BLEU-n (a list of n floats in [0, 1]); see the module docstring."""
    ids = _check(references, predictions)
    guess, correct = [0] * n, [0] * n
    test_total, ref_total = 0, 0
    for k in ids:
        hyp = predictions[k]
        testlen = len(hyp.split())
        reflens, maxcounts = [], {}
        for ref in references[k]:
            reflens.append(len(ref.split()))
            for gram, c in ngram_counts(ref, n).items():
                maxcounts[gram] = max(maxcounts.get(gram, 0), c)
        test_total += testlen
        ref_total += min((abs(rl - testlen), rl) for rl in reflens)[1]
        for j in range(n):
            guess[j] += max(0, testlen - j)
        for gram, c in ngram_counts(hyp, n).items():
            correct[len(gram) - 1] += min(maxcounts.get(gram, 0), c)
    scores, prod = [], 1.0
    for j in range(n):
        prod *= float(correct[j] + _TINY) / (guess[j] + _SMALL)
        scores.append(prod ** (1.0 / (j + 1)))
    ratio = (test_total + _TINY) / (ref_total + _SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _tfidf(counts: Counter, df: Mapping[tuple, float], log_n_images: float, n: int):
    vec: list[dict[tuple, float]] = [{} for _ in range(n)]
    norm = [0.0] * n
    length = 0
    for gram, tf in counts.items():
        order = len(gram) - 1
        w = float(tf) * (log_n_images - math.log(max(1.0, df.get(gram, 0.0))))
        vec[order][gram] = w
        norm[order] += w * w
        if order == 1:          # pycocoevalcap counts bigrams as the length (see the module docstring)
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def cider_d(references: Mapping[Any, Sequence[str]], predictions: Mapping[Any, str], n: int = 4,
            sigma: float = 6.0) -> tuple[float, dict[Any, float]]:
    """Corpus CIDEr-D and the score of each image (``{image_id: score}``); see the module docstring."""
    ids = _check(references, predictions)
    ref_counts = {k: [ngram_counts(r, n) for r in references[k]] for k in ids}
    df: Counter = Counter()
    for k in ids:
        df.update({gram for c in ref_counts[k] for gram in c})
    log_n = math.log(float(len(ids)))
    per_image: dict[Any, float] = {}
    for k in ids:
        vec, norm, length = _tfidf(ngram_counts(predictions[k], n), df, log_n, n)
        total = [0.0] * n
        for rc in ref_counts[k]:
            vref, nref, lref = _tfidf(rc, df, log_n, n)
            penalty = math.exp(-(float(length - lref) ** 2) / (2 * sigma ** 2))
            for j in range(n):
                val = sum(min(w, vref[j].get(g, 0.0)) * vref[j].get(g, 0.0) for g, w in vec[j].items())
                if norm[j] != 0 and nref[j] != 0:
                    val /= norm[j] * nref[j]
                total[j] += val * penalty
        per_image[k] = sum(total) / n / len(ref_counts[k]) * 10.0
    return sum(per_image.values()) / len(per_image), per_image
