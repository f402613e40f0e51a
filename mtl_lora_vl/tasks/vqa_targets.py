"""VQA training targets computed once per training question, when the VQA kind is built.

A row's soft targets (contrastive path) and its candidate answers with their soft scores (generative path) depend
only on its human answers and on what the kind learned (answer vocabulary, consensus answers), yet the loader used
to normalise every human answer again on each visit (about 40 calls of the regex normalisation per row). Here they
are computed once per training row and packed into flat arrays (CSR layout: ``offsets`` into ``ids`` / ``scores``),
a few bytes per candidate answer, cheap to pickle to loader workers. A row is found by a 64-bit digest of its
human answers (binary search in the sorted digests; rows with the same answers share one entry), so any example
whose answers were packed gets them, and any other (another split, a kind rebuilt from its saved state) is computed
afresh.

The values are exactly those of the per-visit code (:func:`mtl_lora_vl.metrics.vqa_accuracy` on the same
normalised strings, the same order of summation); the normalisation itself is unchanged, only memoised per
distinct answer string while the kind is built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from ..metrics import normalize_answer


class AnswerNormalizer:
    """:func:`normalize_answer` memoised per string (a pure function): for one pass over a training split."""

    def __init__(self) -> None:
        self.memo: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        out = self.memo.get(text)
        if out is None:
            out = self.memo[text] = normalize_answer(text)
        return out


def normalized_accuracy(pred: str, gts: Sequence[str], norm: Callable[[str], str]) -> float:
    """``vqa_accuracy(pred, answers)`` given ``gts``, the answers already normalised (same formula and order)."""
    pred = norm(pred)
    if not pred:
        return 0.0
    matches = sum(g == pred for g in gts)
    if len(gts) < 3:
        return float(matches > 0)
    return sum(min(1.0, (matches - (g == pred)) / 3.0) for g in gts) / len(gts)


def answers_digest(answers: Sequence[str]) -> int:
    """A 64-bit digest of a row's human answers (their repr: unambiguous), to find a packed row (training rows whose
    digests collide are not packed: :func:`_distinct`)."""
    return int.from_bytes(hashlib.blake2b(repr(tuple(answers)).encode(), digest_size=8).digest(), "little",
                          signed=True)


class PackedTargets:
    """Per distinct answers of the training rows (sorted by their digest): candidate ids with their soft scores.

    ``ids`` index the caller's answer table (the vocabulary for soft targets, :attr:`names` for the generative
    candidates); ``scores`` are float32 for soft targets (the target tensor's precision) and float64 for the
    generative weights (a Python float, as the per-visit code returned)."""

    def __init__(self, rows: dict[int, tuple[list[int], list[float]]], score_dtype: type,
                 names: list[str] | None = None) -> None:
        digests = sorted(rows)
        sizes = [len(rows[d][0]) for d in digests]
        self.digests = np.asarray(digests, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.ids = np.asarray([i for d in digests for i in rows[d][0]], dtype=np.int32)
        self.scores = np.asarray([x for d in digests for x in rows[d][1]], dtype=score_dtype)
        self.names = names

    def __len__(self) -> int:
        return len(self.digests)

    def nbytes(self) -> int:
        """Bytes of the arrays (and of the candidate names, when there are any)."""
        arrays = self.digests.nbytes + self.offsets.nbytes + self.ids.nbytes + self.scores.nbytes
        return arrays + sum(len(n) + 49 for n in self.names or ())

    def row(self, answers: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ids, scores)`` of a training row with these human answers; None when no training row has them."""
        digest = answers_digest(answers)
        pos = int(np.searchsorted(self.digests, digest))
        if pos == len(self.digests) or self.digests[pos] != digest:
            return None
        start, end = self.offsets[pos], self.offsets[pos + 1]
        return self.ids[start:end], self.scores[start:end]


def pack_soft_targets(rows: Sequence[Sequence[str]], norm_rows: Sequence[list[str]], answer_index: dict[str, int],
                      norm: Callable[[str], str]) -> PackedTargets:
    """Every row's in-vocabulary answers and their soft scores (what ``VQAKind.soft_targets`` gives)."""
    packed: dict[int, tuple[list[int], list[float]]] = {}
    for digest, gts in _distinct(rows, norm_rows):
        vocab = [a for a in sorted(set(gts)) if a in answer_index]
        packed[digest] = ([answer_index[a] for a in vocab], [normalized_accuracy(a, gts, norm) for a in vocab])
    return PackedTargets(packed, np.float32)


def pack_lm_candidates(rows: Sequence[Sequence[str]], norm_rows: Sequence[list[str]], consensus: frozenset[str],
                       norm: Callable[[str], str]) -> PackedTargets:
    """Every row's generative candidates (sorted distinct normalised answers, consensus ones when there are any)
    and their soft scores (what ``VQAKind.sample_lm`` draws from). A row without any answer packs no candidate."""
    packed: dict[int, tuple[list[int], list[float]]] = {}
    name_ids: dict[str, int] = {}
    for digest, gts in _distinct(rows, norm_rows):
        given = sorted(set(gts) - {""})
        chosen = [a for a in given if a in consensus] or given
        packed[digest] = ([name_ids.setdefault(a, len(name_ids)) for a in chosen],
                          [normalized_accuracy(a, gts, norm) for a in chosen])
    return PackedTargets(packed, np.float64, list(name_ids))


def _distinct(rows: Sequence[Sequence[str]], norm_rows: Sequence[list[str]]) -> list[tuple[int, list[str]]]:
    """Each distinct row's digest and normalised answers, once; a digest two different answer tuples share (~1e-9
    odds at VQAv2's size) is left out, so those rows miss the pack and are computed per visit."""
    first: dict[int, tuple[tuple[str, ...], list[str]]] = {}
    clash: set[int] = set()
    for answers, gts in zip(rows, norm_rows):
        key = tuple(answers)
        digest = answers_digest(key)
        if first.setdefault(digest, (key, gts))[0] != key:
            clash.add(digest)
    return [(d, gts) for d, (_, gts) in first.items() if d not in clash]
