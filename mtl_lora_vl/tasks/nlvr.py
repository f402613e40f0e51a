"""Visual reasoning over an image pair (spec ``nlvr``, NLVR2-style): is a statement true of two images?

Each row holds two images (``Example.image`` a tuple: left, right), a statement (``text``) and a label (1 true,
0 false); NLVR2 is one of the paper's four image-text tasks.

* **Head**: an MLP over the pair and the statement, ``[e_left, e_right, t, e_left * t, e_right * t]`` (each
  embedding L2-normalised) -> two logits (false, true), trained with cross-entropy. The image tower runs on both
  images of every row, each routed through the task's adapter (the loader's ``image_segments``); the text tower on
  the statement.
* **Zero-shot rule**: a contrastive model has none for a true/false statement about two images, so the rule is
  the nearest it has: a statement is called true when its similarity to the pair (the sum of its cosine with each
  image) is above the median of the evaluated rows' (labels unused). It predicts half of the rows true; on
  balanced data expect chance, which is what a CLIP without training can do here.
* **Metrics**: ``accuracy``, per statement type (``accuracy/<type>``, where rows carry ``question_type``), and
  NLVR2's ``consistency`` where rows carry a group (``Example.meta["group"]``: rows of one statement about several
  image pairs, as NLVR2's sentences are): the share of groups whose rows are all right.

**On a generative backbone** whose prompts take several images (``backbone.several_images``: LLaVA, LLaVA-NeXT,
LLaVA-OneVision (each image of a pair its base view alone, as its processor lays out a sample of several), Qwen2-VL,
Idefics3 / SmolVLM, Gemma 3, PaliGemma, Mistral 3) the statement is a question: ``[generative] prompt``
(``{images}``: one image placeholder per image of the row, back to back as the families' chat templates write a
turn's images; PaliGemma moves them out of the text and puts every image's tokens first, in order, as its processor
does; ``{statement}``) continued by one of ``[generative] answers`` (false's, true's: "no", "yes" by default), the more
likely one being the prediction (``backbone.sequence_scores``); zero-shot is the base language model, adapted the
routed one; training is the LM loss on the row's answer. A language-model backbone whose prompts take one image
(``several_images`` False) is refused at start-up.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_lora_vl.adapters.rows import autocast_off
from mtl_lora_vl.backbones.base import TEXT_EMBEDDINGS, Backbone, BackboneError
from mtl_lora_vl.data.records import Example, Split, image_count, image_parts
from mtl_lora_vl.distributed import map_shards
from mtl_lora_vl.precision import HEAD_DTYPE
from mtl_lora_vl.tasks.base import Row, TaskKind, encode_texts, image_embeddings, model_device, spec_error
from mtl_lora_vl.tasks.generative import (
    GenerationHead,
    candidate_scores,
    check_template,
    format_prompt,
    lm_task_loss,
    uses_language_model,
)
from mtl_lora_vl.tasks.registry import register_kind
from mtl_lora_vl.tasks.spec import TaskSpec


class PairHead(nn.Module):
    """``(image_emb (n, k, D), text_emb (n, D)) -> (n, 2)`` fp32 logits (false, true) of a statement about k images,
    the features read in fp32 with autocast off, as every head reads them (:data:`~mtl_lora_vl.precision.HEAD_DTYPE`),
    and the MLP run in its parameters' dtype."""

    def __init__(self, dim: int, images: int, hidden: int) -> None:
        super().__init__()
        self.images = int(images)
        fp32 = {"dtype": HEAD_DTYPE}   # (whatever torch's default dtype: the forward reads fp32 features)
        self.net = nn.Sequential(nn.Linear((2 * self.images + 1) * dim, hidden, **fp32), nn.GELU(),
                                 nn.Linear(hidden, 2, **fp32))

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        if image_emb.dim() != 3 or image_emb.shape[1] != self.images:
            raise ValueError(f"PairHead: expected image embeddings (rows, {self.images}, dim), got "
                             f"{tuple(image_emb.shape)}")
        with autocast_off(image_emb.device.type):   # fp32 inside a training step's autocast too (as in evaluation)
            img = F.normalize(image_emb.float(), dim=-1)
            t = F.normalize(text_emb.float(), dim=-1)
            pair = torch.cat([img.flatten(1), t, (img * t[:, None]).flatten(1)], dim=-1)
            return self.net(pair.to(self.net[0].weight.dtype)).float()   # (a head a user cast: in its own dtype)


@register_kind("nlvr")
class NLVRKind(TaskKind):
    """A statement about a pair of images, true or false (NLVR2): pair + statement MLP head, accuracy."""

    world_kinds = ("nlvr",)

    headline_metric = "accuracy"
    metric_names = ("accuracy", "per_type", "consistency")
    not_headline = ("per_type",)
    uses_text = True
    several_images = True
    head_defaults = {"hidden": 0}
    generative_defaults = {"prompt": "{images} question: is it true that {statement}? answer:",
                           "answers": ["no", "yes"], "eval_limit": 0, "chat": False, "system": ""}

    @classmethod
    def check_spec(cls, spec: TaskSpec) -> None:
        super().check_spec(spec)
        if spec.head["hidden"] < 0:
            raise spec_error(spec, "head.hidden", "an integer >= 0 (0 = twice the embedding size)",
                             spec.head["hidden"])
        check_template(spec, "generative.prompt", spec.generative["prompt"], ("images", "statement"))
        answers = spec.generative["answers"]
        if (len(answers) != 2 or not all(isinstance(a, str) and a.strip() for a in answers)
                or answers[0].strip() == answers[1].strip()):
            raise spec_error(spec, "generative.answers", "two different answers: the false one, then the true one",
                             answers)
        if spec.generative["eval_limit"] < 0:
            raise spec_error(spec, "generative.eval_limit", "an integer >= 0 (0 = every example)",
                             spec.generative["eval_limit"])

    @classmethod
    def check_backbone(cls, spec: TaskSpec, backbone: Backbone) -> None:
        if uses_language_model(backbone):
            if not backbone.several_images:
                raise BackboneError(
                    f"task {spec.name!r} (kind nlvr) reads two images per row, and the language-model path of "
                    f"backbone {backbone.name!r} ({type(backbone.model).__name__}) takes one image per prompt; train "
                    "it on a backbone whose prompts take several images (--backbone builtin-llava, or hf:DIR of a "
                    "LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Idefics3 / SmolVLM, Gemma 3, PaliGemma or Mistral 3 "
                    "model) or a "
                    "contrastive backbone (--backbone builtin, open_clip:NAME --pretrained FILE, or hf:DIR of a CLIP "
                    "model), or give this backbone vqa, captioning or caption_cls")
            return
        if not backbone.supports(TEXT_EMBEDDINGS):
            raise BackboneError(
                f"task {spec.name!r} (kind nlvr) embeds its statements with a text tower, which backbone "
                f"{backbone.name!r} ({type(backbone.model).__name__}) does not have; use a CLIP-style backbone")

    def __init__(self, spec: TaskSpec, train: Split | None, backbone: Backbone, state: dict | None = None) -> None:
        super().__init__(spec, train, backbone, state)
        for answer in spec.generative["answers"] if self.generative else ():   # targets and scored candidates
            self.refuse_special(answer, f"the answer {answer!r} ([generative] answers)",
                                f"write the answers as plain text in {spec.source_file or 'the spec'}")
        if state is not None:
            self.images = int(state["images"])
            return
        self.images = image_count(train.examples[0])
        self._check_rows(train.examples, "training")

    def state(self) -> dict:
        return {"images": self.images}

    def _check_rows(self, examples: list[Example], what: str) -> None:
        for ex in examples:
            k = image_count(ex)
            if k < 2 or k != self.images:
                want = "two or more images" if self.images < 2 else f"{self.images} images, as training's"
                raise ValueError(f"task {self.name!r}: {what} example {ex.image_id!r} holds {k} image(s); a row of an "
                                 f"nlvr task holds {want} (Example.image a tuple of them)")
            if not ex.text or not ex.text.strip():
                raise ValueError(f"task {self.name!r}: {what} example {ex.image_id!r} has no statement (text)")
            if ex.label not in (0, 1):
                raise ValueError(f"task {self.name!r}: {what} example {ex.image_id!r} has label {ex.label!r}; "
                                 "expected 1 (the statement is true) or 0 (false)")

    def check_eval_split(self, split: Split, spec: TaskSpec | None = None) -> None:
        super().check_eval_split(split, spec)
        self._check_rows(split.examples, "evaluation")
        if type(self).headline(spec or self.spec) == "consistency" and not _group_sizes(split.examples):
            raise ValueError(f"task {self.name!r}: its headline metric is consistency (listed first in metrics), but "
                             "no evaluation row carries a group (the rows of one statement: the nlvr2 reader's "
                             "sentences, a 'group' field or column); list accuracy first, or give the rows groups")

    # ------------------------------------------------------------------ loader side

    def sample_text(self, example: Example) -> str | None:
        return example.text

    def sample_fields(self, example: Example, index: int) -> dict[str, Tensor]:
        return {"labels": torch.tensor(example.label, dtype=torch.long)}

    def prompt(self, example: Example) -> str:
        """Generative path: the row's prompt, one image placeholder per image."""
        images = "".join([self.image_token] * image_count(example))
        return format_prompt(self.spec.generative["prompt"], self.image_token, self.prompt_wrap, images=images,
                             statement=example.text)

    def sample_lm(self, example: Example, draw: int) -> tuple[str, str, float]:
        return self.prompt(example), self.spec.generative["answers"][example.label], 1.0

    # ------------------------------------------------------------------ head, loss, evaluation

    def build_head(self, backbone: Backbone) -> PairHead | GenerationHead:
        if self.generative:
            return GenerationHead(max_len=1)   # nothing is generated: the two answers are scored
        dim = int(backbone.embed_dim)
        hidden = self.spec.head["hidden"] or 2 * dim
        return PairHead(dim, self.images, hidden).to(model_device(backbone))

    def loss(self, head: PairHead, backbone: Backbone, batch: dict[str, Tensor], image_emb: Tensor,
             text_emb: Tensor | None) -> Tensor:
        if self.generative:
            return lm_task_loss(batch)
        return F.cross_entropy(head(image_emb, text_emb), batch["labels"])

    @torch.no_grad()
    def scores(self, backbone: Backbone, head: nn.Module | None, examples: list[Example], *, batch_size: int,
               device: torch.device | str, dtype: torch.dtype = torch.float32, num_workers: int = 0) -> Tensor:
        """``(N,)`` on CPU: the head's logit of true minus false, or (``head=None``) the statement's summed cosine
        with its images, the zero-shot rule's score (thresholded by the caller). On a generative backbone: the
        log-probability of the true answer minus the false one's (the caller's scope decides between the base model
        and the routed one)."""
        if self.generative:
            s = candidate_scores(backbone, examples, [self.prompt(ex) for ex in examples],
                                 self.spec.generative["answers"], batch_size=batch_size, device=device, dtype=dtype,
                                 num_workers=num_workers, end=self.lm_end)
            return s[:, 1] - s[:, 0]
        parts = [p for ex in examples for p in image_parts(ex)]
        img = image_embeddings(backbone, parts, batch_size=batch_size, device=device, dtype=dtype,
                               num_workers=num_workers).view(len(examples), self.images, -1)
        text = encode_texts(backbone, [ex.text for ex in examples], device=device, dtype=dtype,
                            batch_size=batch_size)
        if head is None:
            return (img * text[:, None]).sum(dim=(1, 2)).cpu()
        logits = torch.cat([head(img[i:i + batch_size], text[i:i + batch_size])
                            for i in range(0, len(examples), batch_size)]).float()
        return (logits[:, 1] - logits[:, 0]).cpu()

    def _evaluate(self, backbone: Backbone, head: nn.Module | None, split: Split, *, batch_size: int,
                  device: torch.device | str, dtype: torch.dtype, num_workers: int,
                  records: list[Row] | None = None) -> dict[str, float]:
        examples = self.scored(split.examples)
        if not examples:
            raise ValueError(f"task {self.name!r}: the evaluation split is empty")
        self._check_rows(examples, "evaluation")
        scores = map_shards(lambda part: self.scores(backbone, head, part, batch_size=batch_size, device=device,
                                                     dtype=dtype, num_workers=num_workers), examples)
        if torch.isnan(scores).any():   # a NaN compares false: the row was called false, and scored
            raise ValueError(f"task {self.name!r}: the scores of {int(scores.isnan().sum())} row(s) are NaN (an "
                             "overflow in half precision?); nothing can be ranked")
        threshold = float(scores.median()) if head is None and not self.generative else 0.0
        pred = scores > threshold
        right = (pred == torch.tensor([ex.label == 1 for ex in examples])).double()   # float32 read 5/9 as 0.55555558
        out = {"accuracy": float(right.mean()), "n": float(len(examples))}
        if records is not None:   # (score: the zero-shot rule's cosines, or the logit margin of true over false)
            records.extend((ex, {"statement": ex.text, "reference": {"truth": ex.label == 1}},
                            {"truth": t, "score": s, "threshold": threshold})
                           for ex, t, s in zip(examples, pred.tolist(), scores.tolist()))
        by_type: dict[str, list[float]] = defaultdict(list)
        for ex, r in zip(examples, right.tolist()):
            if ex.question_type:
                by_type[ex.question_type].append(r)
        for t in sorted(by_type):
            out[f"accuracy/{t}"] = sum(by_type[t]) / len(by_type[t])
            out[f"n/{t}"] = float(len(by_type[t]))
        out |= consistency(examples, right.tolist(), split.examples)
        if "consistency" not in out and type(self).headline(self.spec) == "consistency":
            raise ValueError(f"task {self.name!r}: its headline metric is consistency, but no group of rows was "
                             "scored whole (a [generative] eval_limit cuts every group); raise eval_limit or list "
                             "accuracy first")
        return out


def consistency(examples: list[Example], right: list[float], rows: list[Example] | None = None
                ) -> dict[str, float]:
    """NLVR2's consistency: of the groups of rows (``meta["group"]``, one statement about several pairs), the share
    whose rows are all right, and ``groups``, their count; ``{}`` when no scored row carries a group (rows without
    one are left out of it). ``rows``: the split the scored ``examples`` were taken from; a group with rows there
    that were not scored (past ``eval_limit``) is left out, not judged on part of its rows. (A row the reader or the
    evaluation dropped for an unreadable image is in neither: its group is judged on the rest.)"""
    size, seen = _group_sizes(rows if rows is not None else examples), _group_sizes(examples)
    wrong = {str(ex.meta["group"]) for ex, r in zip(examples, right) if ex.meta.get("group") is not None and r != 1.0}
    whole = [g for g in seen if seen[g] == size[g]]
    if not whole:
        return {}
    return {"consistency": sum(g not in wrong for g in whole) / len(whole), "groups": float(len(whole))}


def _group_sizes(rows: list[Example]) -> Counter[str]:
    return Counter(str(ex.meta["group"]) for ex in rows if ex.meta.get("group") is not None)
