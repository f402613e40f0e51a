"""Image captioning with a generative decoder: open_clip CoCa, or a LLaVA-style language model.

The path comes from the backbone's capabilities (:func:`mtl_lora_vl.tasks.generative.uses_language_model`):
a backbone with a contrastive text tower and a caption decoder (CoCa) uses the decoder directly; a
generative backbone without one (LLaVA-style) is prompted with ``[generative] prompt`` (default
``"{image} caption:"``), trained with the LM loss on the caption tokens only (prompt masked) and decodes
with ``backbone.generate(..., prompts=...)``; evaluation runs on the first ``[generative] eval_limit``
images (0 = all).

CoCa path:

* **Loss**: teacher-forced token cross-entropy on ``backbone.caption_logits(images, tokens)``; targets
  are the caption tokens after the start token, up to and including the first end token.
* **Decoding**: ``backbone.generate`` -- greedy (``options.beam_size = 1``) or beam search.
* **Metrics**: ``bleu4`` (the headline: BLEU-4 is a fraction in [0, 1]) and ``cider`` (CIDEr-D scale,
  unbounded above, reported as an extra) from :func:`mtl_lora_vl.metrics.caption_scores`, one
  generated caption per distinct image against all of its reference captions.
* **Zero-shot rule**: the base decoder, unadapted. The head has no parameters (the decoder lives in the
  backbone, where the adapters go); it only carries the decoding settings.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_lora_vl.backbones.base import Backbone
from mtl_lora_vl.data.loader import iter_image_batches
from mtl_lora_vl.data.records import Example, Split
from mtl_lora_vl.distributed import map_shards
from mtl_lora_vl.metrics import caption_scores
from mtl_lora_vl.precision import autocast
from mtl_lora_vl.tasks.base import Row, TaskKind, caption_of, require_captions, spec_error
from mtl_lora_vl.tasks.generative import (
    GenerationHead,
    check_template,
    format_prompt,
    generate_texts,
    lm_task_loss,
    uses_language_model,
)
from mtl_lora_vl.tasks.registry import register_kind
from mtl_lora_vl.tasks.spec import TaskSpec

logger = logging.getLogger(__name__)

#: No parameters: the decoding settings of the adapted model (the decoder itself is the backbone's).
CaptionHead = GenerationHead


def caption_token_loss(logits: Tensor, tokens: Tensor, eos_id: int, pad_id: int) -> Tensor:
    """Token CE of ``logits`` (B, L-1, V) against ``tokens[:, 1:]``, up to and including the first eos: each
    row's token mean, averaged over rows (so equal shards' losses average to the whole batch's)."""
    target = tokens[:, 1:]
    is_eos = target == eos_id
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    valid = ~after_eos
    if pad_id != eos_id:
        valid &= target != pad_id
    # No mask indexing and no branch on the mask: either would make a GPU wait for the host mid-step
    losses = F.cross_entropy(logits.float().flatten(0, 1), target.masked_fill(~valid, 0).flatten(),
                             reduction="none")
    per_row = (losses.view(target.shape) * valid).sum(1) / valid.sum(1).clamp(min=1)   # each row's token mean
    return per_row.mean()   # a mean over rows, as lm_task_loss: DDP's and accumulation's averages are exact


def caption_references(split: Split, task: str | None = None) -> tuple[list[Example], dict[str, list[str]]]:
    """Distinct images of ``split`` (first example of each) and their reference captions.

    An image's references are its first example's ``captions`` when it has any not blank, else the ``text`` of
    each of its rows (one row per caption), as retrieval's texts. Repeated captions stay repeated, as pycocoevalcap
    keeps them: two annotators who wrote the same words weigh twice in CIDEr's average over references. Blank
    captions (empty or only spaces) are left out, as the file readers leave them out (each counted as an empty
    reference in BLEU and CIDEr); given ``task``, how many is warned.
    """
    images: list[Example] = []
    refs: dict[str, list[str]] = {}
    from_rows: set[str] = set()
    blank = 0
    for ex in split.examples:
        if ex.image_id not in refs:
            images.append(ex)
            refs[ex.image_id] = [c for c in ex.captions if c.strip()]
            blank += len(ex.captions) - len(refs[ex.image_id])
            if not refs[ex.image_id]:   # (captions all blank: none, as a file reader's row has none)
                from_rows.add(ex.image_id)
        if ex.image_id in from_rows and ex.text is not None:
            if ex.text.strip():
                refs[ex.image_id].append(ex.text)
            else:
                blank += 1
    if blank and task is not None:
        bare = sum(not refs[ex.image_id] for ex in images)
        logger.warning("task %r: %d reference caption(s) of the evaluation split are blank (empty or only spaces) and "
                       "are left out, as the file readers leave them out%s", task, blank,
                       f"; {bare} image(s) left with none are not scored" if bare else "")
    return images, refs


@register_kind("captioning")
class CaptioningKind(TaskKind):
    """Generative captioning (needs a backbone with a text decoder: open_clip CoCa)."""

    world_kinds = ("captioning", "retrieval")

    headline_metric = "bleu4"
    metric_names = ("bleu4", "cider")
    not_headline = ("cider",)
    uses_text = False      # captions go to the decoder (inside ``loss``), not through the text tower
    uses_decoder = True
    option_defaults = {"max_len": 20, "beam_size": 1}
    generative_defaults = {"prompt": "{image} caption:", "eval_limit": 0, "chat": False, "system": ""}

    @classmethod
    def check_spec(cls, spec: TaskSpec) -> None:
        super().check_spec(spec)
        for key in ("max_len", "beam_size"):
            if spec.options[key] < 1:
                raise spec_error(spec, f"options.{key}", "an integer >= 1", spec.options[key])
        check_template(spec, "generative.prompt", spec.generative["prompt"], ("image",))
        if spec.generative["eval_limit"] < 0:
            raise spec_error(spec, "generative.eval_limit", "an integer >= 0 (0 = every image)",
                             spec.generative["eval_limit"])

    @classmethod
    def check_backbone(cls, spec: TaskSpec, backbone: Backbone) -> None:
        if not backbone.has_decoder:
            raise ValueError(
                f"task {spec.name!r} (captioning) needs a backbone with a text decoder, but backbone "
                f"{backbone.name!r} ({type(backbone.model).__name__}) has none; use a generative backbone "
                f"(--backbone builtin-llava, or hf:DIR of a LLaVA model) or an open_clip CoCa, e.g. "
                f"--backbone open_clip:coca_ViT-B-32 --pretrained /path/to/coca_weights.bin")
        if not uses_language_model(backbone):   # CoCa: teacher-forced from each row's start token
            backbone.check_caption_tokens()

    def __init__(self, spec: TaskSpec, train: Split | None, backbone: Backbone, state: dict | None = None) -> None:
        super().__init__(spec, train, backbone, state)
        require_captions(spec, train)

    def sample_text(self, example: Example) -> str | None:
        return None if self.generative else caption_of(self.name, example)

    def prompt(self) -> str:
        """Generative path: the captioning prompt."""
        return format_prompt(self.spec.generative["prompt"], self.image_token, self.prompt_wrap)

    def sample_lm(self, example: Example, draw: int) -> tuple[str, str, float]:
        return self.prompt(), caption_of(self.name, example), 1.0

    def build_head(self, backbone: Backbone) -> CaptionHead:
        return CaptionHead(self.spec.options["max_len"], self.spec.options["beam_size"])

    def loss(self, head: nn.Module, backbone: Backbone, batch: dict[str, Tensor], image_emb: Tensor,
             text_emb: Tensor | None) -> Tensor:
        if self.generative:
            return lm_task_loss(batch)
        logits = backbone.caption_logits(batch["images"], batch["tokens"])
        return caption_token_loss(logits, batch["tokens"], backbone.eos_id, backbone.pad_id)

    @torch.no_grad()
    def generate(self, backbone: Backbone, head: nn.Module | None, examples: list[Example], *, batch_size: int,
                 device: torch.device | str, dtype: torch.dtype = torch.float32,
                 num_workers: int = 0) -> list[str]:
        """One generated caption per example's image."""
        max_len = getattr(head, "max_len", self.spec.options["max_len"])
        beam_size = getattr(head, "beam_size", self.spec.options["beam_size"])
        if self.generative:
            return generate_texts(backbone, examples, [self.prompt()] * len(examples), max_len=max_len,
                                  beam_size=beam_size, batch_size=batch_size, device=device, dtype=dtype,
                                  num_workers=num_workers)
        out: list[str] = []
        for images in iter_image_batches(backbone, examples, batch_size=batch_size, device=device, dtype=dtype,
                                         num_workers=num_workers):
            with autocast(device, dtype):
                out.extend(backbone.generate(images, max_len=max_len, beam_size=beam_size))
        return out

    def check_eval_split(self, split: Split, spec: TaskSpec | None = None) -> None:
        super().check_eval_split(split, spec)
        images, refs = caption_references(split, self.name)   # (warned here, once, at start-up)
        if not self.scored([ex for ex in images if refs[ex.image_id]]):   # at start-up, not after training
            raise ValueError(f"task {self.name!r}: the evaluation split has no reference captions (rows need a text "
                             "or captions); evaluate on a split with captions")

    def _evaluate(self, backbone: Backbone, head: nn.Module | None, split: Split, *, batch_size: int,
                  device: torch.device | str, dtype: torch.dtype, num_workers: int,
                  records: list[Row] | None = None) -> dict[str, float]:
        images, refs = caption_references(split)
        images = self.scored([ex for ex in images if refs[ex.image_id]])
        if not images:
            raise ValueError(f"task {self.name!r}: the evaluation split has no reference captions")
        captions = map_shards(lambda part: self.generate(backbone, head, part, batch_size=batch_size, device=device,
                                                         dtype=dtype, num_workers=num_workers), images)
        preds = {ex.image_id: c for ex, c in zip(images, captions)}
        if records is not None:   # one row per image: its first row in the split
            records.extend((ex, {"reference": {"captions": refs[ex.image_id]}}, {"caption": c})
                           for ex, c in zip(images, captions))
        out = caption_scores(preds, {k: refs[k] for k in preds})
        out["n_images"] = float(len(images))
        return out
