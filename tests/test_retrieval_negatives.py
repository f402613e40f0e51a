"""Retrieval's in-batch negatives: a caption repeated over images (COCO repeats some) is not a negative of itself."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from vl_tiny import tiny_backbone

from mtl_lora_vl.data import loader, world
from mtl_lora_vl.data.loader import MultiTaskCollate, MultiTaskLoader, TaskDataset, to_device
from mtl_lora_vl.data.records import Split
from mtl_lora_vl.tasks import build_kind, load_spec
from mtl_lora_vl.tasks.retrieval import multi_positive_infonce


def _by_hand(logits: torch.Tensor, positive: list[list[bool]]) -> float:
    """Symmetric multi-positive InfoNCE, one row and one column at a time."""
    n = logits.shape[0]

    def side(lg: list[list[float]], pos: list[list[bool]]) -> float:
        return sum(math.log(sum(math.exp(v) for v in row)) -
                   math.log(sum(math.exp(v) for v, p in zip(row, ps) if p)) for row, ps in zip(lg, pos)) / n
    lg = logits.tolist()
    cols = [list(c) for c in zip(*lg)]
    return 0.5 * (side(lg, positive) + side(cols, [list(c) for c in zip(*positive)]))


def _retrieval_kind(tmp_path):
    """The tiny CLIP backbone, the built-in retrieval kind built on a 4-row train split, and that split."""
    clip = tiny_backbone(tmp_path)
    spec = load_spec("retrieval")
    train = world.build_split("retrieval", "train", n=4, seed=0)
    return clip, build_kind(spec, train, clip), train


def _three_images(train) -> list:
    """The first rows of the split's first three images."""
    firsts = {}
    for ex in train.examples:
        firsts.setdefault(ex.image_id, ex)
    return list(firsts.values())[:3]


def _loss_and_logits(clip, kind, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The kind's loss on a collated batch (on the CPU, fp32) and the head's scaled image-text cosine logits."""
    batch = to_device(batch, "cpu", torch.float32, clip)
    view = dict(batch["tasks"][kind.name], images=batch["images"], tokens=batch["tokens"])
    head = kind.build_head(clip)
    with torch.no_grad():
        img, txt = clip.encode_image(view["images"]), clip.encode_text(view["tokens"])
        loss = kind.loss(head, clip, view, img, txt)
        logits = float(head.scale) * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    return loss, logits


def test_one_caption_of_two_images_is_a_positive_of_both():
    # images 0 and 1 share their caption: the text embeddings are one, so both images score it alike
    big = 40.0 * torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    apart = multi_positive_infonce(big, torch.tensor([1, 2, 3]))   # image keys only: rows 0 and 1 held at log 2
    assert abs(float(apart) - 2 / 3 * math.log(2)) < 1e-4
    assert float(multi_positive_infonce(big, torch.tensor([1, 2, 3]), torch.tensor([5, 5, 6]))) < 1e-6


def test_the_kind_keys_captions_so_a_repeated_one_is_no_negative(tmp_path):
    clip, kind, train = _retrieval_kind(tmp_path)
    a, b, c = _three_images(train)
    rows = [a, dataclasses.replace(b, text="  " + a.text.upper() + " "), c]   # b: a's caption, other case/spaces
    ds = TaskDataset(kind, Split(rows), clip.image_size)
    batch = MultiTaskCollate([kind.name], [True], clip.tokenizer)([dict(ds[i], task_id=0) for i in range(3)])
    loss, logits = _loss_and_logits(clip, kind, batch)
    same = [[i == j or {i, j} == {0, 1} for j in range(3)] for i in range(3)]
    assert abs(float(loss) - _by_hand(logits, same)) < 1e-4


def test_captions_that_tokenize_alike_are_no_negatives_of_each_other(tmp_path):
    # two captions that differ only after the tokenizer's context (or "a red cube." / "a red cube ." where the
    # tokenizer splits the full stop off) are one token row, one text embedding: each a negative no image could rank
    # below its own
    clip, kind, train = _retrieval_kind(tmp_path)
    a, b, c = _three_images(train)
    long = " ".join([a.text] * 5)
    longer = long + " " + c.text
    assert torch.equal(clip.tokenizer([long]), clip.tokenizer([longer]))   # (cut at the context alike)
    rows = [dataclasses.replace(a, text=long), dataclasses.replace(b, text=longer), c]
    ds = TaskDataset(kind, Split(rows), clip.image_size)
    collate = MultiTaskCollate([kind.name], [True], clip.tokenizer, token_keys=[True])
    batch = collate([dict(ds[i], task_id=0) for i in range(3)])
    loss, logits = _loss_and_logits(clip, kind, batch)
    same = [[i == j or {i, j} == {0, 1} for j in range(3)] for i in range(3)]
    assert abs(float(loss) - _by_hand(logits, same)) < 1e-4
    assert kind.cross_rank_fields == ("image_key", "text_key", "token_key")   # every rank's rows compared alike


def test_a_caption_has_one_token_key_in_batches_of_other_widths(tmp_path):
    # under DDP the keys of every rank's rows are compared: a short-text batch is cut to its own width, so the key
    # must be read from the tokenizer's full rows
    clip, kind, train = _retrieval_kind(tmp_path)
    a, b = train.examples[0], train.examples[1]
    ds = TaskDataset(kind, Split([a, dataclasses.replace(b, text=" ".join([b.text] * 3))]), clip.image_size)
    collate = MultiTaskCollate([kind.name], [True], clip.tokenizer, text_padding=(clip.pad_id, clip.eos_id),
                               token_keys=[True])
    short, wide = collate([dict(ds[0], task_id=0)] * 2), collate([dict(ds[0], task_id=0), dict(ds[1], task_id=0)])
    assert short["tokens"].shape[1] < wide["tokens"].shape[1]
    assert int(short["tasks"][kind.name]["token_key"][0]) == int(wide["tasks"][kind.name]["token_key"][0])
    assert int(wide["tasks"][kind.name]["token_key"][0]) != int(wide["tasks"][kind.name]["token_key"][1])


def test_only_the_kinds_that_compare_rows_by_token_key_get_it(tmp_path, monkeypatch):
    # the key is hashed in the collate of every batch: a vqa row's (no loss reads it) cost its collate ~7 % on the
    # built-in vqa split; a mixed batch hashes its retrieval rows alone
    clip = tiny_backbone(tmp_path)
    kinds, splits = [], []
    for name in ("vqa", "retrieval"):
        split = world.build_split(name, "train", n=8, seed=0)
        kinds.append(build_kind(load_spec(name), split, clip))
        splits.append(split)
    hashed = []
    real = loader.row_keys
    monkeypatch.setattr(loader, "row_keys", lambda tokens: hashed.append(tokens.shape[0]) or real(tokens))
    batch = next(iter(MultiTaskLoader(kinds, splits, clip, batch_size=8, mode="mixed", seed=0, steps=1)))
    views = batch["tasks"]
    assert set(views) == {"vqa", "retrieval"} and kinds[0].uses_text
    assert "token_key" not in views["vqa"]
    assert views["retrieval"]["token_key"].shape == views["retrieval"]["rows"].shape
    assert sum(hashed) == len(views["retrieval"]["rows"])
