"""Image-text retrieval with dual encoders: symmetric InfoNCE, recall@1/5/10 both ways.

Training rows are (image, caption) pairs. Rows of the same image (COCO has five captions per image)
are all positives of each other, so a batch holding two captions of one image does not push them
apart; so are rows of the same caption (up to case and spacing: COCO repeats "A man riding a wave on top
of a surfboard." over many images), and rows whose captions tokenize to the same ids ("a red cube." and
"a red cube ." for a tokenizer that splits off punctuation; two long captions cut alike at the context), which
the text tower cannot tell apart, so no image could rank one above its twin: as a negative it held the loss
above log 2 however well the model matched. (The token key is the collate's ``token_key``, read from the ids it
made: tokenizing again when rows are made cost more.) Evaluation embeds each distinct image once and every caption
of it (``Example.captions`` when given, else the ``text`` of every example of that image) and scores with
:func:`mtl_lora_vl.metrics.retrieval_recall`. The zero-shot rule is the same cosine similarity on the
unadapted towers; the head only holds the learnable temperature.

Retrieval needs a contrastive text tower (``text_embeddings``): on a generative backbone (LLaVA-style) the
kind refuses when it is built, before any training, and says what to use instead.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_lora_vl.adapters.rows import autocast_off
from mtl_lora_vl.backbones.base import TEXT_EMBEDDINGS, Backbone, BackboneError
from mtl_lora_vl.data.records import Example, Split
from mtl_lora_vl.distributed import map_shards
from mtl_lora_vl.metrics import retrieval_recall
from mtl_lora_vl.precision import HEAD_DTYPE
from mtl_lora_vl.tasks.base import (
    Row,
    TaskKind,
    caption_of,
    encode_texts,
    image_embeddings,
    logit_scale_of,
    model_device,
    require_captions,
    spec_error,
)
from mtl_lora_vl.tasks.registry import register_kind
from mtl_lora_vl.tasks.spec import TaskSpec

logger = logging.getLogger(__name__)


class _Capped(torch.autograd.Function):
    """``min(x, cap)`` whose gradient, at or above the cap, still passes when descent would lower ``x``.

    A plain clamp passes none there, and a pretrained CLIP starts there: its stored scale is 100.003 (and
    log 100 in float32 lies above the float64 cap), so the temperature never learned; nor could it come
    back down once a step had pushed it past the cap. Gradients that would raise it further are dropped.
    """

    @staticmethod
    def forward(ctx, x: Tensor, cap: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.cap = cap
        return x.clamp(max=cap)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return g * ((x < ctx.cap) | (g > 0)), None


class RetrievalHead(nn.Module):
    """The learnable contrastive temperature: ``logits = exp(log_scale) * image @ text.T``, the scale capped
    at ``max_scale`` (CLIP's 100)."""

    def __init__(self, logit_scale: float, max_scale: float = 100.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(logit_scale), dtype=HEAD_DTYPE))
        self.max_log_scale = math.log(max_scale)

    @property
    def scale(self) -> Tensor:
        """The logit scale ``exp(log_scale)``, capped at ``max_scale``."""
        return _Capped.apply(self.log_scale, self.max_log_scale).exp()

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        with autocast_off(image_emb.device.type):   # fp32 logits inside a training step's autocast too
            return self.scale * image_emb.float() @ text_emb.float().t()


def _image_key(image_id: str) -> int:
    """A stable integer for an image id (same image -> same key in every worker, rank and run), of 63 bits: two
    images with one key would be each other's positives, and a 31-bit key gives ~3 such pairs among COCO's 113k
    training images (``crc32`` did: ``img_6f212cc6f`` and ``img_5824a96d3b``)."""
    return int.from_bytes(hashlib.blake2b(image_id.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def _text_key(text: str) -> int:
    """A stable 63-bit integer for a caption, equal for captions that differ only in case and spacing."""
    return _image_key(" ".join(text.split()).casefold())


def infonce(logits: Tensor, positives: Tensor) -> Tensor:
    """Symmetric InfoNCE where ``positives[i, j]`` marks text j as true of image i (several may be).

    ``logits`` is (n_images, n_texts). Each direction's loss is ``-log(sum of exp over positives / sum
    of exp over all)``, averaged over rows; with the diagonal as the only positives this is CLIP's loss.
    Every row and column needs at least one positive.
    """
    neg_inf = torch.finfo(logits.dtype).min

    def one_side(lg: Tensor, pos: Tensor) -> Tensor:
        return (torch.logsumexp(lg, dim=1) - torch.logsumexp(lg.masked_fill(~pos, neg_inf), dim=1)).mean()
    return 0.5 * (one_side(logits, positives) + one_side(logits.t(), positives.t()))


def multi_positive_infonce(logits: Tensor, keys: Tensor, *text_keys: Tensor | None) -> Tensor:
    """:func:`infonce` on a square batch where every pair with the same image key (or a same text key) is a positive.

    ``keys`` (n,) is the image key of each row, so two captions of one image are not pushed apart; each of
    ``text_keys`` (n,) (None: left out) a caption key of each row (its text's, its token ids'), so one caption of two
    images is not a negative of either.
    """
    positives = keys[:, None] == keys[None, :]
    for same in text_keys:
        if same is not None:
            positives = positives | (same[:, None] == same[None, :])
    return infonce(logits, positives)


def retrieval_texts(split: Split, task: str | None = None) -> tuple[list[Example], list[str], list[int]]:
    """Distinct images of ``split`` (first example of each), their captions, and text -> image index.

    An image's texts are the union of its examples' ``captions`` when any are given (reference
    captions), else the distinct ``text`` of its examples (one example per pair). Blank captions (empty or only
    spaces) are left out, as the file readers leave them out (each was a query); given ``task``, warned.
    """
    images: list[Example] = []
    refs: dict[str, list[str]] = {}
    pair_texts: dict[str, list[str]] = {}
    # the blanks left out, distinct per image as its texts are (a caption repeated on each row of its image: once)
    blank_refs: dict[str, set[str]] = {}
    blank_pairs: dict[str, set[str]] = {}   # (counted where the image's texts are its rows')
    for ex in split.examples:
        if ex.image_id not in refs:
            images.append(ex)
            refs[ex.image_id], pair_texts[ex.image_id] = [], []
            blank_refs[ex.image_id], blank_pairs[ex.image_id] = set(), set()
        refs[ex.image_id] += [c for c in ex.captions if c.strip() and c not in refs[ex.image_id]]
        blank_refs[ex.image_id].update(c for c in ex.captions if not c.strip())
        if ex.text is not None and not ex.text.strip():
            blank_pairs[ex.image_id].add(ex.text)
        if ex.text and ex.text.strip() and ex.text not in pair_texts[ex.image_id]:
            pair_texts[ex.image_id].append(ex.text)
    blank = sum(len(blank_refs[i]) + (0 if refs[i] else len(blank_pairs[i])) for i in refs)
    if blank and task is not None:
        bare = sum(not refs[ex.image_id] and not pair_texts[ex.image_id] for ex in images)
        logger.warning("task %r: %d caption(s) of the evaluation split are blank (empty or only spaces) and are left "
                       "out, as the file readers leave them out%s", task, blank,
                       f"; {bare} image(s) left with none are not image-to-text queries (they stay among the images "
                       "each caption is ranked against)" if bare else "")
    texts: list[str] = []
    text_to_image: list[int] = []
    for i, ex in enumerate(images):
        for t in refs[ex.image_id] or pair_texts[ex.image_id]:
            texts.append(t)
            text_to_image.append(i)
    return images, texts, text_to_image


def refuse_without_text_tower(spec: TaskSpec, backbone: Backbone) -> None:
    """Raise :class:`BackboneError` (at start-up) when ``backbone`` has no contrastive text tower."""
    if backbone.supports(TEXT_EMBEDDINGS):
        return
    can = ", ".join(sorted(backbone.capabilities)) or "nothing"
    raise BackboneError(
        f"task {spec.name!r} (kind retrieval) ranks images and captions by the similarity of their embeddings, "
        f"which needs a contrastive text tower, but backbone {backbone.name!r} ({type(backbone.model).__name__}) "
        f"has none: it is a generative model (it supports {can}). Train retrieval on a contrastive backbone "
        "(--backbone builtin, open_clip:NAME --pretrained FILE, or hf:DIR of a CLIP model), or give this backbone "
        "tasks it can do: captioning (caption generation), caption_cls (classification by caption likelihood), "
        "nlvr (a statement about an image pair, answered yes or no) or vqa (answer generation)")


@register_kind("retrieval")
class RetrievalKind(TaskKind):
    """Dual-encoder image-text retrieval (COCO/Flickr style)."""

    world_kinds = ("retrieval", "captioning")

    headline_metric = "mean_recall"
    metric_names = ("mean_recall", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
    uses_text = True
    min_batch_rows = 2     # in-batch negatives: one row alone has a loss of 0
    # under DDP, every rank's rows are negatives (the global batch's)
    cross_rank_fields = ("image_key", "text_key", "token_key")
    head_defaults = {"max_logit_scale": 100.0, "learn_temperature": True}
    option_defaults = {"ks": [1, 5, 10]}

    @classmethod
    def metrics_for(cls, options: dict[str, Any]) -> tuple[str, ...]:
        """The recalls ``options.ks`` gives (i2t_r{k}, t2i_r{k}) and their mean (a bad ``ks`` is refused later)."""
        ks = options.get("ks")
        if not isinstance(ks, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in ks):
            return cls.metric_names
        ks = _distinct(ks)
        return ("mean_recall", *(f"i2t_r{k}" for k in ks), *(f"t2i_r{k}" for k in ks))

    @classmethod
    def check_spec(cls, spec: TaskSpec) -> None:
        super().check_spec(spec)
        ks = spec.options["ks"]
        if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in ks):
            raise spec_error(spec, "options.ks", "a non-empty list of positive integers", ks)
        if spec.head["max_logit_scale"] <= 1.0:
            raise spec_error(spec, "head.max_logit_scale", "a number > 1", spec.head["max_logit_scale"])

    @classmethod
    def check_backbone(cls, spec: TaskSpec, backbone: Backbone) -> None:
        refuse_without_text_tower(spec, backbone)

    def __init__(self, spec: TaskSpec, train: Split | None, backbone: Backbone, state: dict | None = None) -> None:
        super().__init__(spec, train, backbone, state)
        require_captions(spec, train)
        if train is not None and len({ex.image_id for ex in train.examples}) < 2:
            raise ValueError(f"task {spec.name!r}: the training split holds one image, so every caption in a batch is "
                             "a positive and the contrastive loss is 0 at every step (nothing is learnt); give it "
                             "captions of several images")

    def sample_text(self, example: Example) -> str:
        return caption_of(self.name, example)

    def sample_fields(self, example: Example, index: int) -> dict[str, Tensor]:
        return {"image_key": torch.tensor(_image_key(example.image_id), dtype=torch.long),
                "text_key": torch.tensor(_text_key(self.sample_text(example)), dtype=torch.long)}

    def build_head(self, backbone: Backbone) -> RetrievalHead:
        head = RetrievalHead(min(logit_scale_of(backbone), self.spec.head["max_logit_scale"]),
                             self.spec.head["max_logit_scale"])
        head.log_scale.requires_grad_(self.spec.head["learn_temperature"])
        return head.to(model_device(backbone))

    def loss(self, head: RetrievalHead, backbone: Backbone, batch: dict[str, Tensor], image_emb: Tensor,
             text_emb: Tensor | None) -> Tensor:
        if text_emb is None:
            raise ValueError(f"task {self.name!r}: the retrieval loss needs the text embeddings of its rows")
        logits = head(F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1))
        return multi_positive_infonce(logits, batch["image_key"], batch.get("text_key"), batch.get("token_key"))

    def check_eval_split(self, split: Split, spec: TaskSpec | None = None) -> None:
        super().check_eval_split(split, spec)
        images, texts, text_to_image = retrieval_texts(split, self.name)   # (warned here, once, at start-up)
        if not texts:   # at start-up, not after training
            raise ValueError(f"task {self.name!r}: the evaluation split has no captions (rows need a text or "
                             "captions); evaluate on a split with captions")
        own = Counter(text_to_image)
        others = len(texts) - min(own.values())   # the most captions of other images an image ranks its own among
        ks = _distinct(self.spec.options["ks"])
        # an image's own caption is always among its top k when k > the other captions, and a caption's image
        # among the top k when k >= the images there are to rank
        trivial = [f"i2t_r{k}" for k in ks if k > others] + [f"t2i_r{k}" for k in ks if k >= len(images)]
        if trivial:
            logger.warning("task %r: the evaluation split has %d image(s) and %d caption(s), so %s %s 1.0 by "
                           "construction and lift mean_recall; evaluate on more images and captions than the "
                           "largest k (options.ks)", self.name, len(images), len(texts), ", ".join(trivial),
                           "is" if len(trivial) == 1 else "are")

    def _evaluate(self, backbone: Backbone, head: nn.Module | None, split: Split, *, batch_size: int,
                  device: torch.device | str, dtype: torch.dtype, num_workers: int,
                  records: list[Row] | None = None) -> dict[str, float]:
        images, texts, text_to_image = retrieval_texts(split)
        if not texts:
            raise ValueError(f"task {self.name!r}: the evaluation split has no captions")
        img = map_shards(lambda part: image_embeddings(backbone, part, batch_size=batch_size, device=device,
                                                       dtype=dtype, num_workers=num_workers), images)
        txt = map_shards(lambda part: encode_texts(backbone, part, device=device, dtype=dtype,
                                                   batch_size=batch_size), texts)
        sim = F.normalize(img.float(), dim=-1) @ txt.t()
        ks = _distinct(self.spec.options["ks"])
        out = retrieval_recall(sim.cpu(), torch.tensor(text_to_image), ks=ks)
        out["n_images"] = float(len(images))
        out["n_texts"] = float(len(texts))
        if records is not None:
            _record(records, images, texts, text_to_image, sim.cpu())
        return out


def _record(records: list[Row], images: list[Example], texts: list[str], text_to_image: list[int],
            sim: Tensor) -> None:
    """Per image query (an image with captions): its captions (indices into the split's captions, listed image by
    image, and texts), the five best-scored captions, and the rank of its best own caption among the others as
    ``i2t_rK`` counts it (ties count against the query), with ``hit``: that rank is below 5."""
    own = torch.zeros(sim.shape, dtype=torch.bool)
    own[torch.tensor(text_to_image), torch.arange(len(texts))] = True
    best = sim.masked_fill(~own, float("-inf")).amax(1)
    ranks = ((sim >= best[:, None]) & ~own).sum(1).tolist()
    top = sim.topk(min(5, len(texts)), dim=1).indices.tolist()
    owned: dict[int, list[int]] = {}
    for j, i in enumerate(text_to_image):
        owned.setdefault(i, []).append(j)
    for i, ex in enumerate(images):
        mine = owned.get(i)
        if mine:
            records.append((ex, {"reference": {"captions": mine, "texts": [texts[j] for j in mine]}},
                            {"top5": top[i], "hit": ranks[i] < 5, "rank": ranks[i]}))


def _distinct(ks: list[int]) -> tuple[int, ...]:
    """``options.ks`` in order, a k given twice counted once (its metrics named once)."""
    return tuple(dict.fromkeys(ks))
