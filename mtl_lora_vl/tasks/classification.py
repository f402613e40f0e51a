"""Caption classification (spec ``caption_cls``): classes given by names and caption templates.

* **Zero-shot rule**: CLIP's classifier -- each class's prompts (``"a photo of a {}."`` ...) embedded,
  averaged over the templates and normalised; the logits are ``logit_scale * image @ W.T``.
* **Head**: a linear layer whose weight starts as that classifier and whose bias starts at zero, so
  it reproduces the zero-shot predictions exactly at initialisation; trained with cross-entropy.
* **Tied classes**: classes whose prompts the tokenizer reads as the same ids (``Red circle`` and ``red circle``
  under a lowercasing tokenizer) get one zero-shot embedding and tie on every image: warned about at start-up
  (a trained head can still tell them apart; on a generative backbone they are refused).
* **Metrics**: ``top1``, ``top5`` (clipped to the number of classes), ``mean_per_class`` and
  ``per_class/<name>`` accuracies.

**On a generative backbone** (LLaVA-style) classes are scored by likelihood: each class name, written as
``[generative] target`` (default ``"{}"``; the built-in spec writes ``"a large {}"`` as its pretraining
captions do), is a candidate continuation of ``[generative] prompt`` (default ``"{image} caption:"``), and
the prediction is the candidate with the highest total log-probability (``backbone.sequence_scores``), or
with ``[generative] score = "mean"`` the highest log-probability per token (the total favours short names).
Zero-shot is the base language model (adapters off), adapted the routed one; training is the LM loss on the
class's target text (the prompt masked). Evaluation runs on the first ``[generative] eval_limit`` images
(0 = all).

Class names come from the training split (``Split.class_names``, e.g. ImageFolder folder names) unless
the spec's ``options.class_names`` gives readable ones (same count, in the data's label order; a list of the data's
own names, case and spaces aside, is read by name in any order: ``data.common.class_name_order``, the rule of the
readers' ``class_names`` too). An evaluation split's labels are mapped to the training split's classes by name (a
split that lacks a class numbers the rest differently).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import weakref
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_lora_vl.backbones.base import Backbone
from mtl_lora_vl.backbones.tokenizers import UNK
from mtl_lora_vl.data.common import class_name_order, class_name_problems
from mtl_lora_vl.data.loader import iter_image_batches
from mtl_lora_vl.data.records import Example, Split, refuse_rows_of_another_kind
from mtl_lora_vl.distributed import map_shards
from mtl_lora_vl.metrics import per_class_accuracy, topk_accuracy
from mtl_lora_vl.precision import HEAD_DTYPE, autocast
from mtl_lora_vl.tasks.base import (
    Row,
    TaskKind,
    logit_scale_of,
    model_device,
    prompt_embeddings,
    prompt_scores,
    spec_error,
    warn_text_coverage,
)
from mtl_lora_vl.tasks.generative import (
    GenerationHead,
    candidate_scores,
    check_template,
    format_prompt,
    lm_task_loss,
)
from mtl_lora_vl.tasks.registry import register_kind
from mtl_lora_vl.tasks.spec import TaskSpec

logger = logging.getLogger(__name__)

T = TypeVar("T")


def same_ids_groups(items: Sequence[T], ids: Sequence[tuple[int, ...]]) -> list[tuple[tuple[int, ...], list[T]]]:
    """The groups of two or more ``items`` (classes) whose ``ids`` (their texts as the tokenizer reads them) are
    equal, each with those ids, in the order of each group's first item: the classes a tokenizer cannot tell apart."""
    same: dict[tuple[int, ...], list[T]] = {}
    for item, key in zip(items, ids, strict=True):
        same.setdefault(key, []).append(item)
    return [(key, group) for key, group in same.items() if len(group) > 1]


def _tie_report(tied: list[tuple[tuple[int, ...], list[str]]], unk_id: int | None, unk_token: str | None,
                cut: Sequence[bool] = ()) -> tuple[str, str, bool]:
    """For a tied-classes message: the groups named (the first five, then how many more), why the tokenizer reads
    them as one text, and whether any group holds its unknown token ``unk_id`` (renaming a class to another word it
    does not know ties again, so the fix differs). ``cut``: per group, whether its texts fill the tokenizer's
    context (what differs may be cut off)."""
    shown = "; ".join(" and ".join(repr(n) for n in names) for _, names in tied[:5])
    shown += f" (and {len(tied) - 5} more groups)" if len(tied) > 5 else ""
    unknown = [isinstance(unk_id, int) and unk_id in ids for ids, _ in tied]
    cut = [bool(c) for c in cut] or [False] * len(tied)
    why = ([f"words it does not know, each its unknown token {unk_token!r}"] if any(unknown) else []) + (
        ["they fill its context, and what differs is cut off"] if any(c and not u for c, u in zip(cut, unknown))
        else []) + (["it lowercases or normalises them alike"] if any(not (c or u) for c, u in zip(cut, unknown))
                    else [])
    return shown, "; ".join(why), any(unknown)

class ClassifierHead(nn.Module):
    """Linear classifier over image embeddings, initialised from class-prompt embeddings."""

    def __init__(self, class_emb: Tensor, logit_scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(class_emb.detach().to(HEAD_DTYPE, copy=True))
        self.bias = nn.Parameter(torch.zeros(class_emb.shape[0], dtype=HEAD_DTYPE))   # (whatever the default dtype)
        self.logit_scale = float(logit_scale)

    def forward(self, image_emb: Tensor) -> Tensor:
        return prompt_scores(image_emb, self.weight, self.logit_scale) + self.bias


@register_kind("classification")
class ClassificationKind(TaskKind):
    """Image classification by class names and prompt templates (zero-shot CLIP classifier, linear probe)."""

    world_kinds = ("classification",)

    headline_metric = "top1"
    metric_names = ("top1", "top5", "mean_per_class", "per_class")
    not_headline = ("per_class",)
    uses_text = False
    needs_templates = True
    default_templates = ("a photo of a {}.",)
    head_defaults = {"label_smoothing": 0.0}
    option_defaults = {"class_names": []}
    generative_defaults = {"prompt": "{image} caption:", "target": "{}", "eval_limit": 0, "score": "sum",
                           "chat": False, "system": ""}

    @classmethod
    def check_spec(cls, spec: TaskSpec) -> None:
        super().check_spec(spec)
        names = spec.options["class_names"]
        blank, repeated = class_name_problems(names)
        if blank:
            raise spec_error(spec, "options.class_names", "a list of non-empty class names", names)
        if repeated:
            raise spec_error(spec, "options.class_names", f"distinct class names ({repeated} repeated)", names)
        if not 0.0 <= spec.head["label_smoothing"] < 1.0:
            raise spec_error(spec, "head.label_smoothing", "a number in [0, 1)", spec.head["label_smoothing"])
        check_template(spec, "generative.prompt", spec.generative["prompt"], ("image",))
        check_template(spec, "generative.target", spec.generative["target"], ("",))
        if spec.generative["score"] not in ("sum", "mean"):
            raise spec_error(spec, "generative.score", '"sum" (total log-probability) or "mean" (per token)',
                             spec.generative["score"])
        if spec.generative["eval_limit"] < 0:
            raise spec_error(spec, "generative.eval_limit", "an integer >= 0 (0 = every image)",
                             spec.generative["eval_limit"])

    def __init__(self, spec: TaskSpec, train: Split | None, backbone: Backbone, state: dict | None = None) -> None:
        super().__init__(spec, train, backbone, state)
        # ids of the live splits whose eval_limit class coverage was warned about (each leaves when its split is
        # freed: a split made later may get its id); plain ints, so the kind still pickles into loader workers
        self._warned_subsets: set[int] = set()
        if state is not None:
            self.class_names = [str(n) for n in state["class_names"]]
            data_names = state.get("data_class_names")  # absent in adapters saved before it was recorded
            self.data_class_names = None if data_names is None else [str(n) for n in data_names]
            self._check_targets()
            self._check_distinct_targets(backbone, refuse=False)   # (trained so: its scores still said to tie)
            return
        refuse_rows_of_another_kind(spec.name, spec.kind, train, "label", spec.data.format)
        names = spec.options["class_names"]
        if not names:
            if not train.class_names:
                raise ValueError(f"task {spec.name!r}: the training split has no class names; give them in the "
                                 f"spec as options.class_names = [...]")
            names = list(train.class_names)
        elif train.class_names and len(names) != len(train.class_names):
            raise ValueError(f"task {spec.name!r}: options.class_names has {len(names)} names but the data has "
                             f"{len(train.class_names)} classes ({train.class_names[:5]}...)")
        elif train.class_names:   # the data's own names in another order are read by name: put in the data's order
            order = class_name_order(names, train.class_names, where=f"task {spec.name!r}" + (
                f" ({spec.source_file})" if spec.source_file else ""), given_as="options.class_names",
                data_as="the training data", leave_out="leave options.class_names empty to use the data's names",
                error=ValueError)
            names = names if order is None else [names[j] for j in order]
        if len(names) < 2:   # one class: a loss of 0 from the first step, and every prediction right (top-1 1.0)
            raise ValueError(f"task {spec.name!r}: the training data has {len(names)} class ({list(names)}); a "
                             "classifier needs two or more: check the split's labels or options.class_names")
        self.class_names: list[str] = list(names)
        #: The data's own class names in training label order: another split's labels are mapped by name.
        self.data_class_names: list[str] | None = list(train.class_names) if train.class_names else None
        self._check_labels(train.examples, "training")
        self._check_targets()
        self._check_distinct_targets(backbone, refuse=True)
        prompts = ([spec.generative["target"].format(n) for n in self.class_names] if self.generative
                   else [t.format(n) for n in self.class_names for t in spec.templates])
        warn_text_coverage(spec, prompts, backbone, "class prompts")   # a class's examples carry no text of their own

    def _check_targets(self) -> None:
        """Refuse a class name (or, on the generative path, target template) holding a special token of the
        tokenizer: an end token would be trained inside the target, or end the class's prompt in the text tower;
        an image placeholder failed at the first step, unnamed."""
        for name in self.class_names:   # (a lone surrogate is refused too)
            if not self.generative:
                self.refuse_special(name, f"the class name {name!r}", "rename the class (options.class_names)")
                continue
            text = self.spec.generative["target"].format(name)
            self.refuse_special(text, f"the target {text!r} of class {name!r} (generative.target with the class name)",
                                "rename the class (options.class_names) or change the target")

    def _check_distinct_targets(self, backbone: Backbone, refuse: bool) -> None:
        """Generative path: classes whose targets the tokenizer reads as the same ids (``Cube`` and ``cube`` under a
        lowercasing tokenizer; two words it does not know, both its unknown token) are refused (``refuse``), else
        warned about: their scores are equal on every image, zero-shot and trained (the same ids score alike), and a
        tie counts against the true class, so none of their images is ever right at top-1 (a tied rival is predicted,
        if nothing scores higher), and training teaches them one target. Contrastive path:
        :meth:`_check_distinct_prompts`."""
        if not self.generative:
            self._check_distinct_prompts(backbone)
            return
        collate = backbone.lm_collator()
        prompt = collate.prompt_texts([self.prompt()])[0]   # (the targets as they continue the prompt, as scored)
        ids = collate.continuation_ids([prompt] * len(self.class_names), self.candidates())
        tied = same_ids_groups(self.class_names, [tuple(row) for row in ids])
        if not tied:
            return
        tok = getattr(getattr(backbone, "hf_processor", None), "tokenizer", None)
        shown, why, unknown = _tie_report(tied, getattr(tok, "unk_token_id", None), getattr(tok, "unk_token", None))
        message = (f"task {self.name!r}: the classes {shown} are one text to the tokenizer of backbone "
                   f"{backbone.name!r} (their targets, generative.target with the class name, read as the same ids: "
                   f"{why}), so their scores tie on every image, zero-shot and trained, and as a tie counts against "
                   "the true class none of their images is ever right at top-1 (nor in its per-class accuracy)")
        fix = ("use a backbone whose tokenizer reads these names (hf:DIR of a model with a subword vocabulary), or "
               "name the classes in words it knows (options.class_names)" if unknown
               else "rename one of each (options.class_names), or merge them in the data")
        if refuse:
            raise ValueError(f"{message}; {fix}")
        logger.warning("%s; the adapter was trained so (each group taught one target): %s, and train again",
                       message, fix)

    def _check_distinct_prompts(self, backbone: Backbone) -> None:
        """Contrastive path: warn about classes whose prompts (each template with the class name) the text tower's
        tokenizer reads as the same ids under every template (``Red circle`` and ``red circle`` under the built-in
        CLIP's lowercasing one): they get the same zero-shot class embedding, so zero-shot they tie on every image
        and a tie counts against the true class. A warning, not a refusal: a trained head, though it starts from
        that one embedding, can tell them apart."""
        tok = backbone.tokenizer
        pad = getattr(tok, "pad_id", None)
        rows = list(range(len(self.class_names)))   # the classes still tied under the templates read so far
        keys: list[tuple[int, ...]] = [() for _ in rows]
        full: set[int] = set()   # classes with a prompt that fills the context (cut there)
        for template in self.spec.templates:   # (each later template reads only the classes tied so far)
            for i, row in zip(rows, tok([template.format(self.class_names[i]) for i in rows]).tolist()):
                keys[i] += tuple(row)
                if isinstance(pad, int) and row[-1] != pad:
                    full.add(i)
            rows = [i for _, group in same_ids_groups(rows, [keys[i] for i in rows]) for i in group]
            if not rows:
                return
        groups = same_ids_groups(rows, [keys[i] for i in rows])
        tied = [(key, [self.class_names[i] for i in group]) for key, group in groups]
        shown, why, unknown = _tie_report(tied, getattr(tok, "unk_id", None), UNK,
                                          cut=[any(i in full for i in group) for _, group in groups])
        within = " within its context" if full & set(rows) else ""
        fix = ("use a backbone with a subword tokenizer (open_clip:NAME, hf:DIR), or name the classes in words it "
               "knows (options.class_names)" if unknown else
               f"rename one of each (options.class_names) so that their prompts differ{within}, or merge them in the "
               "data")
        logger.warning("task %r: the classes %s are one text to the tokenizer of backbone %r (their class prompts, "
                       "each template with the class name, read as the same ids: %s), so they get the same zero-shot "
                       "class embedding: zero-shot their scores tie on every image, and as a tie counts against the "
                       "true class none of their images is ever right at top-1 zero-shot (nor in its per-class "
                       "accuracy; a trained head starts from that one embedding and only training tells them "
                       "apart); %s", self.name, shown, backbone.name, why, fix)

    def state(self) -> dict:
        return {"class_names": list(self.class_names), "data_class_names": self.data_class_names}

    def _in_training_order(self, split: Split, examples: list[Example]) -> list[Example]:
        """``examples`` with labels in the training split's class order. A reader numbers the classes it finds
        in each split (an ImageFolder's folders, sorted label names, integer labels up to the largest), so a
        split that lacks a class numbers the others differently; labels are mapped by class name."""
        if not split.class_names or split.class_names == self.data_class_names:
            return examples
        if self.data_class_names is None:  # nothing to map by: the classes must at least be as many
            if len(split.class_names) != len(self.class_names):
                raise ValueError(f"task {self.name!r}: the evaluation split has {len(split.class_names)} classes but "
                                 f"training has {len(self.class_names)}")
            return examples
        index = {n: i for i, n in enumerate(self.data_class_names)}
        unknown = sorted({n for n in split.class_names if n not in index})
        used = {split.class_names[ex.label] for ex in examples if ex.label is not None and
                0 <= ex.label < len(split.class_names)}
        if unknown and used & set(unknown):
            raise ValueError(f"task {self.name!r}: the evaluation split has class(es) {unknown[:10]} that training "
                             f"did not have (training classes: {self.data_class_names[:10]}...); evaluate on data "
                             "of the trained classes, or list every class in the spec's [data] class_names")
        return [ex if ex.label is None or not 0 <= ex.label < len(split.class_names) else
                dataclasses.replace(ex, label=index[split.class_names[ex.label]]) for ex in examples]

    def check_eval_split(self, split: Split, spec: TaskSpec | None = None) -> None:
        super().check_eval_split(split, spec)
        self._check_labels(self._in_training_order(split, self.scored(split.examples)), "evaluation")

    def _check_labels(self, examples: list[Example], what: str) -> None:
        n = len(self.class_names)
        for ex in examples:
            if ex.label is None or not 0 <= ex.label < n:
                raise ValueError(f"task {self.name!r}: {what} example {ex.image_id!r} has label {ex.label!r}; "
                                 f"expected a class index in [0, {n - 1}]")

    # ------------------------------------------------------------------ loader side

    def sample_fields(self, example: Example, index: int) -> dict[str, Tensor]:
        return {"labels": torch.tensor(example.label, dtype=torch.long)}

    def prompt(self) -> str:
        """Generative path: the prompt every class name continues."""
        return format_prompt(self.spec.generative["prompt"], self.image_token, self.prompt_wrap)

    def candidates(self) -> list[str]:
        """Generative path: each class written as its target text, in class order."""
        return [self.spec.generative["target"].format(name) for name in self.class_names]

    def sample_lm(self, example: Example, draw: int) -> tuple[str, str, float]:
        return self.prompt(), self.spec.generative["target"].format(self.class_names[example.label]), 1.0

    # ------------------------------------------------------------------ head, loss, evaluation

    def class_embeddings(self, backbone: Backbone, *, device: torch.device | str, dtype: torch.dtype = torch.float32,
                         batch_size: int = 256) -> Tensor:
        """The zero-shot classifier ``(C, D)``: template-averaged class-prompt embeddings."""
        return prompt_embeddings(backbone, self.class_names, self.spec.templates, device=device, dtype=dtype,
                                 batch_size=batch_size)

    def build_head(self, backbone: Backbone) -> ClassifierHead | GenerationHead:
        if self.generative:
            return GenerationHead(max_len=1)  # nothing is generated: candidates are scored
        device = model_device(backbone)
        return ClassifierHead(self.class_embeddings(backbone, device=device), logit_scale_of(backbone)).to(device)

    def loss(self, head: ClassifierHead, backbone: Backbone, batch: dict[str, Tensor], image_emb: Tensor,
             text_emb: Tensor | None) -> Tensor:
        if self.generative:
            return lm_task_loss(batch)
        return F.cross_entropy(head(image_emb), batch["labels"], label_smoothing=self.spec.head["label_smoothing"])

    @torch.no_grad()
    def logits(self, backbone: Backbone, head: nn.Module | None, examples: list[Example], *, batch_size: int,
               device: torch.device | str, dtype: torch.dtype = torch.float32, num_workers: int = 0) -> Tensor:
        """Class logits ``(N, C)`` on CPU; ``head=None`` uses the zero-shot classifier. On a generative backbone:
        each class's total (or per-token) log-probability as a continuation of the prompt (the caller's scope decides
        between the base model and the routed one)."""
        if self.generative:
            return candidate_scores(backbone, examples, [self.prompt()] * len(examples), self.candidates(),
                                    batch_size=batch_size, device=device, dtype=dtype, num_workers=num_workers,
                                    per_token=self.spec.generative["score"] == "mean", end=self.lm_end)
        weight = None
        if head is None:
            weight = self.class_embeddings(backbone, device=device, dtype=dtype, batch_size=batch_size)
        out = []
        for images in iter_image_batches(backbone, examples, batch_size=batch_size, device=device, dtype=dtype,
                                         num_workers=num_workers):
            with autocast(device, dtype):
                img = backbone.encode_image(images).float()
            scores = prompt_scores(img, weight, logit_scale_of(backbone)) if head is None else head(img)
            out.append(scores.float().cpu())
        return torch.cat(out)

    def _record(self, records: list[Row], examples: list[Example], labels: Tensor, pred: Tensor,
                scores: Tensor) -> None:
        """Each row's class, its top-1 (the class the metrics count: a rival tied with the true class wins) and the
        top five classes with their scores."""
        top = scores.topk(min(5, scores.shape[1]), dim=1)
        for ex, label, p, values, ids in zip(examples, labels.tolist(), pred.tolist(), top.values.tolist(),
                                             top.indices.tolist()):
            records.append((ex, {"reference": {"label": self.class_names[label]}},
                            {"label": self.class_names[p], "correct": p == label,
                             "top5": [[self.class_names[i], v] for i, v in zip(ids, values)]}))

    def _evaluate(self, backbone, head: nn.Module | None, split: Split, *, batch_size: int,
                  device: torch.device | str, dtype: torch.dtype, num_workers: int,
                  records: list[Row] | None = None) -> dict[str, float]:
        examples = self.scored(split.examples)
        if self.generative:
            left_out = sorted({ex.label for ex in split.examples} - {ex.label for ex in examples})
            if left_out and id(split) not in self._warned_subsets:  # e.g. a JSONL sorted by label
                self._warned_subsets.add(id(split))   # once per split, not once per pass (zero-shot, adapted)
                weakref.finalize(split, self._warned_subsets.discard, id(split))
                logger.warning("task %r: the first %d evaluation examples ([generative] eval_limit) hold no example "
                               "of %d of the split's classes, so its scores describe the others only; shuffle "
                               "the split's rows or raise eval_limit", self.name, len(examples), len(left_out))
        if not examples:
            raise ValueError(f"task {self.name!r}: the evaluation split is empty")
        given, examples = examples, self._in_training_order(split, examples)   # (given: the split's own rows)
        self._check_labels(examples, "evaluation")
        logits = map_shards(lambda part: self.logits(backbone, head, part, batch_size=batch_size, device=device,
                                                     dtype=dtype, num_workers=num_workers), examples)
        labels = torch.tensor([ex.label for ex in examples])
        out = topk_accuracy(logits, labels, ks=(1, 5))
        # A class tied with the true one counts as predicted, as in topk_accuracy (argmax would give ties to the
        # lowest index, so mean_per_class could read 1.0 where top1 reads 0.0).
        scores = logits.float()
        true = scores.gather(1, labels[:, None])
        rival = scores.masked_fill(F.one_hot(labels, scores.shape[1]).bool(), float("-inf"))
        pred = torch.where((rival >= true).any(1), rival.argmax(1), labels)
        if records is not None:
            self._record(records, given, labels, pred, scores)
        per_class = per_class_accuracy(pred, labels, len(self.class_names))
        present = [a for a in per_class if not math.isnan(a)]
        out["mean_per_class"] = sum(present) / len(present)
        for name, acc in zip(self.class_names, per_class):
            if not math.isnan(acc):
                out[f"per_class/{name}"] = acc
        out["n"] = float(len(examples))
        return out
