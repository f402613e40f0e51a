"""The generative path of the task kinds: prompts, targets and scores through a backbone's language model.

A kind picks its path from the backbone's capabilities when it is built (:func:`uses_language_model`): a
backbone that can ``generate`` and has no contrastive text tower (LLaVA-style) runs every task through its
language model; a contrastive backbone (CLIP, CoCa) keeps the embedding paths (VQA as answer
classification, CoCa captioning through its own decoder). On the generative path a kind

* turns a training example into ``(prompt, target, weight)`` (``TaskKind.sample_lm``); the loader
  tokenises prompts and targets in its workers with the picklable ``backbone.lm_collator()``;
* gets the per-row losses of its rows from the step's one ``backbone.lm_loss`` call (all tasks' rows, one
  route) and reduces them with :func:`lm_task_loss` (a weighted mean);
* evaluates by greedy generation (:func:`generate_texts`) or by candidate likelihoods
  (:func:`candidate_scores`), on the first ``[generative] eval_limit`` examples when the spec sets one.

Its head has no parameters (:class:`GenerationHead`): the language model lives in the backbone, where the
adapters go, so the zero-shot model is the backbone with adapters disabled and the adapted model the
backbone routed to the task.

Prompt templates are ``str.format`` templates with named fields: ``{image}`` (the backbone's image
placeholder, ``backbone.image_token``; required) plus the kind's own (VQA: ``{question}``). With
``[generative] chat = true`` the formatted prompt is the user's turn in the model's chat template
(``backbone.chat_wrap()``, :mod:`mtl_lora_vl.backbones.chat`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtl_lora_vl.backbones.base import GENERATE, LM_LOGITS, TEXT_EMBEDDINGS
from mtl_lora_vl.backbones.chat import ChatWrap
from mtl_lora_vl.data.images import ImageError, is_scene, upright_size
from mtl_lora_vl.data.loader import iter_sized_image_batches, sizes_kwarg
from mtl_lora_vl.data.records import Example, image_count, image_parts
from mtl_lora_vl.precision import autocast
from mtl_lora_vl.tasks.spec import SpecError, TaskSpec, template_fields

logger = logging.getLogger(__name__)

__all__ = [
    "GenerationHead",
    "candidate_scores",
    "check_template",
    "eval_subset",
    "format_prompt",
    "generate_texts",
    "lm_task_loss",
    "uses_language_model",
    "weighted_index",
]


def uses_language_model(backbone: Any) -> bool:
    """True when task kinds run through the backbone's language model: it can generate and score text
    (``generate``, ``lm_logits``) and has no contrastive text tower (``text_embeddings``). A backbone with
    both (CoCa) keeps the contrastive paths."""
    return (backbone.supports(GENERATE) and backbone.supports(LM_LOGITS)
            and not backbone.supports(TEXT_EMBEDDINGS))


class GenerationHead(nn.Module):
    """No parameters: the decoding settings of a task on a generative backbone (the language model itself is
    the backbone's, where the adapters go)."""

    def __init__(self, max_len: int, beam_size: int = 1) -> None:
        super().__init__()
        self.max_len = int(max_len)
        self.beam_size = int(beam_size)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, beam_size={self.beam_size}"


# ---------------------------------------------------------------------------------------------- prompts


def check_template(spec: TaskSpec, fld: str, template: Any, fields: Sequence[str]) -> None:
    """Raise :class:`SpecError` unless ``template`` is a string whose fields are exactly ``fields``, each once
    (``""`` stands for one positional ``{}``)."""
    where = spec.source_file or spec.name
    wanted = " and ".join("'{}'" if f == "" else "'{" + f + "}'" for f in fields)
    expected = (f"a template with {wanted}, each once and plain (no format spec or conversion), and no other "
                "{...} field; write {{ for a brace")
    if not isinstance(template, str):
        raise SpecError(f"{where}: field '{fld}': expected {expected}, got {template!r}")
    try:
        found = template_fields(template)
    except ValueError:
        found = None
    if found is None or sorted(found) != sorted(fields):
        raise SpecError(f"{where}: field '{fld}': expected {expected}, got {template!r}")


def format_prompt(template: str, image_token: str, wrap: ChatWrap | None = None, **values: str) -> str:
    """``template`` with ``{image}`` replaced by the backbone's image placeholder and the kind's fields, as the
    user's turn of ``wrap`` (the model's chat template, ``[generative] chat = true``: ``backbone.chat_wrap()``)."""
    prompt = template.format(image=image_token, **values)
    return prompt if wrap is None else wrap.wrap(prompt, image_token)


def weighted_index(draw: int, weights: Sequence[float]) -> int:
    """An index drawn with probability proportional to ``weights``, determined by the integer ``draw``."""
    if not weights or sum(weights) <= 0:
        raise ValueError(f"weighted_index needs positive weights, got {list(weights)}")
    return random.Random(draw).choices(range(len(weights)), weights=weights)[0]


# ---------------------------------------------------------------------------------------------- training


def lm_task_loss(rows: dict[str, Tensor]) -> Tensor:
    """A task's loss from its rows' language-model losses: ``mean(lm_weight * lm_loss)`` over its rows.

    ``rows["lm_loss"]`` is each row's mean token cross-entropy on its target (prompt and padding masked),
    ``rows["lm_weight"]`` the weight the kind gave the row (VQA: the sampled answer's soft score; else 1).
    """
    if "lm_loss" not in rows:
        raise ValueError("a generative task's loss needs its rows' language-model losses (rows['lm_loss']); "
                         "run the batch through MultiTaskModel, which computes them in one lm_loss call")
    losses = rows["lm_loss"].float()
    weight = rows.get("lm_weight")
    if weight is None:
        return losses.mean()
    return (losses * weight.to(losses)).mean()


# ---------------------------------------------------------------------------------------------- evaluation


def eval_subset(examples: list[Example], limit: int) -> list[Example]:
    """The first ``limit`` examples (all of them when ``limit`` is 0): generation is costly on a CPU."""
    return examples[:limit] if limit > 0 else examples


def _image_batches(backbone: Any, examples: Sequence[Example], batch_size: int, device: torch.device | str,
                   dtype: torch.dtype, num_workers: int) -> Iterator[tuple[Tensor, tuple[tuple[int, int], ...]]]:
    """The images of ``batch_size`` examples at a time (:func:`iter_sized_image_batches`); examples of several
    images each (NLVR2's pair) give their images in order, the same number for every example."""
    counts = {image_count(ex) for ex in examples}
    if len(counts) > 1:
        raise ValueError(f"the examples hold {sorted(counts)} images each; score examples of one number of images "
                         "per call")
    k = counts.pop() if counts else 1
    parts = examples if k == 1 else [p for ex in examples for p in image_parts(ex)]
    return iter_sized_image_batches(backbone, parts, batch_size=batch_size * k, device=device, dtype=dtype,
                                    num_workers=num_workers, several=k > 1)


@torch.no_grad()
def generate_texts(backbone: Any, examples: Sequence[Example], prompts: Sequence[str], *, max_len: int,
                   beam_size: int = 1, batch_size: int, device: torch.device | str,
                   dtype: torch.dtype = torch.float32, num_workers: int = 0) -> list[str]:
    """One generated text per example: ``backbone.generate`` on its image (or images) and prompt, in batches."""
    if len(prompts) != len(examples):
        raise ValueError(f"generate_texts got {len(examples)} examples but {len(prompts)} prompts")
    out: list[str] = []
    keep = getattr(backbone, "needs_image_sizes", False)   # (a backbone-like object may lack it)
    batches = _image_batches(backbone, examples, batch_size, device, dtype, num_workers)
    for i, (images, sizes) in enumerate(batches):   # to the generator's end: it reports replaced images there
        start = i * batch_size
        with autocast(torch.device(device), dtype):
            out.extend(backbone.generate(images, max_len=max_len, beam_size=beam_size,
                                         prompts=list(prompts[start:start + batch_size]),
                                         **sizes_kwarg(images, sizes, keep)))
    return out


@torch.no_grad()
def candidate_scores(backbone: Any, examples: Sequence[Example], prompts: Sequence[str],
                     candidates: Sequence[str], *, batch_size: int, device: torch.device | str,
                     dtype: torch.dtype = torch.float32, num_workers: int = 0, per_token: bool = False,
                     end: str = "") -> Tensor:
    """``(N, C)`` float32 on the CPU: total log-probability (``per_token``: per target token) of each candidate
    continuation of each example's prompt (``backbone.sequence_scores``). One call scores at most ``batch_size``
    sequences (at least one image's candidate): images go in chunks of ``batch_size // C`` (at least one), and with
    more than ``batch_size`` candidates (ImageNet's 1,000 classes) the candidates go in groups of ``batch_size``, each
    group a call of its own (the prompts' prefill runs once per group). ``end``: the token that ends a candidate, as
    the task's targets are trained (``kind.lm_end``: a chat template's end of turn; "": the tokenizer's end token)."""
    if len(prompts) != len(examples):
        raise ValueError(f"candidate_scores got {len(examples)} examples but {len(prompts)} prompts")
    if not candidates:
        raise ValueError("candidate_scores needs at least one candidate")
    candidates = list(candidates)
    group = max(1, min(len(candidates), batch_size))   # candidates per call: a call's B·C rows share the KV cache
    chunk = max(1, batch_size // group)
    out: list[Tensor] = []
    keep = getattr(backbone, "needs_image_sizes", False)
    batches = _image_batches(backbone, examples, chunk, device, dtype, num_workers)
    for i, (images, sizes) in enumerate(batches):
        start = i * chunk
        rows, kwargs = list(prompts[start:start + chunk]), sizes_kwarg(images, sizes, keep)
        parts = []
        for c in range(0, len(candidates), group):
            with autocast(torch.device(device), dtype):
                scores = backbone.sequence_scores(images, rows, candidates[c:c + group], per_token=per_token,
                                                  end=end, **kwargs)
            parts.append(scores.float().cpu())
        out.append(torch.cat(parts, dim=1))
    return torch.cat(out)


def warn_lm_context(kind: Any, examples: Sequence[Example], backbone: Any, limit: int = 1000) -> None:
    """Say when ``kind``'s training rows (prompt with its image tokens, target, end token) are longer than the
    language model's context -- past it a model with learned positions fails mid-run and one with rotary positions
    trains on positions it never saw; the loader cuts nothing. At most ``limit`` rows are measured (start-up time),
    spread evenly over the split, first and last included (the first ``limit`` missed the long rows of a file sorted
    by length or source), each image by its own size where the backbone counts tokens so (its header read:
    LLaVA-NeXT, Idefics3; resized as the loader does: Qwen2-VL, whose extreme aspects fill more than the nominal
    square's count)."""
    context = backbone.lm_context
    if not context or not examples:
        return
    n, limit = len(examples), max(1, limit)
    rows = list(examples) if n <= limit else [examples[i * (n - 1) // max(1, limit - 1)] for i in range(limit)]
    collate = backbone.lm_collator()
    prompts, targets = zip(*(kind.sample_lm(ex, 0)[:2] for ex in rows))
    sizes = None
    if getattr(backbone, "needs_image_sizes", False):   # (the layout counts from the original size)
        sizes = _image_sizes(rows, backbone)
    elif collate.layout.token_side:   # a native-resolution model counts from the size its loader resizes to
        sizes = [backbone.resize.resized_size(w, h)[::-1] for h, w in _image_sizes(rows, backbone)]
    ids, texts, prompt_ids = collate.prompt_rows(prompts, sizes)
    lengths = [len(p) + len(t) + 1 for p, t in zip(ids, collate.continuation_ids(texts, targets, prompt_ids))]
    image_tokens = max(row.count(collate.layout.image_token_id) for row in ids)   # (rows of two images: twice)
    over = sum(n > context for n in lengths)
    if over:
        some = "" if len(rows) == n else f"{len(rows)} (spread evenly over the split) of "
        logger.warning("task %r: %d of %sits %d training rows are longer than the language model's context of %d "
                       "tokens (prompt with its %d image tokens, target and end token; the longest is %d): shorten "
                       "the targets or the prompt, or use a model with a longer context", kind.name, over, some,
                       len(examples), context, image_tokens, max(lengths))


def _image_sizes(rows: Sequence[Example], backbone: Any) -> list[tuple[int, int]]:
    """Each image's ``(h, w)`` as the loader reads it, in row order (a scene: rendered at the backbone's side; an
    image whose header cannot be read: that side too, as the start-up check has already named it)."""
    side = (int(backbone.image_size), int(backbone.image_size))
    out = []
    for ex in rows:
        for part in image_parts(ex):
            try:
                out.append(side if is_scene(part.image) else upright_size(part.image))
            except (ImageError, OSError, ValueError, TypeError):
                out.append(side)
    return out
