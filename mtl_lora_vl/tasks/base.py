"""The :class:`TaskKind` base class: what every task kind provides to the loader, trainer and evaluator.

A kind is built once per task with ``kind = KindClass(spec, train_split, backbone)`` (the VQA kind
builds its answer vocabulary there, classification takes its class names), or, for a trained adapter,
from what it saved: ``KindClass(spec, None, backbone, state=kind.state())``. Then:

* **Loader side** (runs in data workers, CPU only): ``sample_text(example)`` is the string the
  backbone's tokenizer turns into ``tokens`` for that row (or ``None``), and
  ``sample_fields(example, index)`` returns the row's own tensors (labels, soft targets, ...), which
  the loader stacks per task. See :mod:`mtl_lora_vl.data.loader` for the batch layout.
* **Training**: ``head = kind.build_head(backbone)`` once; then per step, after the towers ran on the
  whole batch, ``kind.loss(head, backbone, rows, image_emb, text_emb)`` with only this task's rows:
  ``rows`` is the task's view of the batch (``images``, ``tokens`` and its fields), ``image_emb`` the
  image-tower output of those rows, ``text_emb`` the text-tower output of those rows when the kind
  ``uses_text`` (else ``None``). Returns a scalar loss (not yet multiplied by ``spec.loss_weight``).
* **Evaluation**: ``kind.evaluate(backbone, head, split, batch_size=..., device=..., dtype=...)``
  returns a flat ``dict[str, float]`` holding ``headline_metric`` (in [0, 1], higher is better) plus
  extras. ``head=None`` applies the kind's **zero-shot rule** to the backbone's embeddings. It runs
  without gradients, under autocast in ``dtype``, with the model and head in eval mode (their
  training flags are restored afterwards). **Under DDP** evaluation is sharded: a kind wraps its
  per-example work (one result per item: a list, or a tensor with one row per item) as
  ``map_shards(lambda part: self.predict(..., part, ...), examples)`` (:mod:`mtl_lora_vl.distributed`);
  each rank computes its shard, every rank gets the full results in order, and the metrics are computed
  from them as in one process. Work left unwrapped runs whole on every rank (same scores, no speed-up).

**Two paths** (DESIGN §3): a kind picks its path from the backbone's capabilities when it is built, and
stores it as ``kind.generative`` (:func:`mtl_lora_vl.tasks.generative.uses_language_model`). On a
contrastive backbone it works on embeddings as above. On a generative backbone (LLaVA-style) every row goes
through the language model: ``sample_lm(example, draw)`` gives the row's ``(prompt, target, weight)``, the
model wrapper computes every row's LM loss in one call and ``loss`` receives them as ``rows["lm_loss"]``
(with ``image_emb``/``text_emb`` ``None``); evaluation generates or scores candidate texts. Such a kind
has ``uses_text = False`` (no text tower); kinds that cannot run on a generative backbone (retrieval)
refuse it when they are built, before any training. Its settings there are the spec's ``[generative]``
table (``generative_defaults``: the prompt template, decoding length, evaluation subset).

The caller owns adapter routing: it opens ``route(model, task)`` around ``build_head``, ``loss`` and
adapted ``evaluate`` calls, and ``disabled(model)`` (or uses an unadapted backbone) for zero-shot; at
initialisation both give the base model's outputs, so ``build_head`` may run under either. Heads
whose kind says so reproduce the zero-shot predictions exactly at initialisation.

Class attributes every kind sets: ``kind`` (registry key, set by ``@register_kind``),
``headline_metric`` (the default headline), ``metric_names`` (metric keys ``evaluate`` may return; a spec's
``metrics`` must name some of them, and the first it names that is a fraction heads the report: see
:meth:`TaskKind.headline`), ``not_headline`` (metric names that cannot head it: breakdowns, CIDEr),
``uses_text`` (each training row carries a text for the text tower), ``uses_decoder`` (training runs the
backbone's caption decoder or language model), ``min_batch_rows`` (rows a batch needs for a useful loss: 2
for an in-batch contrastive loss), ``cross_rank_fields`` (the batch fields such a loss compares across rows: under
DDP it sees every rank's rows),
``needs_templates`` / ``default_templates`` (zero-shot prompts), ``head_defaults`` /
``option_defaults`` / ``generative_defaults`` (the keys a spec's ``[head]`` / ``[options]`` /
``[generative]`` tables may set, with their types).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import string
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from mtl_lora_vl.backbones.base import BackboneError
from mtl_lora_vl.backbones.chat import ChatWrap
from mtl_lora_vl.backbones.context_warnings import once_per_task
from mtl_lora_vl.data.fallback import decode_policy, failure_keys
from mtl_lora_vl.data.records import Example, Split, refuse_rows_of_another_kind
from mtl_lora_vl.distributed import union_over_shards
from mtl_lora_vl.tasks.embeddings import (  # noqa: F401  (the kinds and tests import them from here)
    encode_texts,
    image_embeddings,
    logit_scale_of,
    prompt_embeddings,
    prompt_scores,
)
from mtl_lora_vl.tasks.generative import eval_subset, uses_language_model, warn_lm_context
from mtl_lora_vl.tasks.spec import SpecError, TaskSpec
from mtl_lora_vl.tasks.texts import NormalizedSpecials, lone_surrogate, special_texts, split_texts, warn_text_coverage

if TYPE_CHECKING:
    from mtl_lora_vl.backbones import Backbone

logger = logging.getLogger(__name__)

#: One scored row a kind records (``TaskKind._evaluate``): the split's example, its input and reference, the prediction.
Row = tuple[Example, dict[str, Any], dict[str, Any]]


class TaskKind(ABC):
    """Base class of task kinds; subclasses register with ``@register_kind(name)``."""

    kind: ClassVar[str] = ""
    headline_metric: ClassVar[str] = ""
    metric_names: ClassVar[tuple[str, ...]] = ()
    #: Metric names a spec may list that cannot be a headline (a fraction in [0, 1], higher is better).
    not_headline: ClassVar[tuple[str, ...]] = ()
    uses_text: ClassVar[bool] = False
    uses_decoder: ClassVar[bool] = False
    #: Rows of this task a batch needs for a useful loss (a contrastive loss has no negatives in one row).
    min_batch_rows: ClassVar[int] = 1
    #: Batch fields (besides the embeddings) of a loss that compares rows with each other (in-batch negatives):
    #: under DDP the loss gets them and the embeddings from every rank's rows, so N processes at batch b train
    #: on the negatives one process at N*b has. Empty: each rank's loss sees its own rows.
    cross_rank_fields: ClassVar[tuple[str, ...]] = ()
    #: The built-in world's kinds whose rows this kind can train on (``[data] world_kind``); None: any.
    world_kinds: ClassVar[tuple[str, ...] | None] = None
    needs_templates: ClassVar[bool] = False
    #: Rows hold several images each (``Example.image`` a tuple: NLVR2's pair); the other kinds read one per row.
    several_images: ClassVar[bool] = False
    default_templates: ClassVar[tuple[str, ...]] = ()
    head_defaults: ClassVar[dict[str, Any]] = {}
    option_defaults: ClassVar[dict[str, Any]] = {}
    generative_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, spec: TaskSpec, train: Split | None, backbone: Backbone,
                 state: dict[str, Any] | None = None) -> None:
        if spec.kind != self.kind:
            raise ValueError(f"task {spec.name!r} is of kind {spec.kind!r}, not {self.kind!r}")
        type(self).check_backbone(spec, backbone)
        if train is None:
            if state is None:
                raise ValueError(f"task {spec.name!r}: building its kind needs the training split or the "
                                 "state saved with a trained adapter (kind.state())")
        elif not train.examples:
            raise ValueError(f"task {spec.name!r}: the training split is empty; check its [data] section"
                             + (f" in {spec.source_file}" if spec.source_file else ""))
        self.spec = spec
        self.name = spec.name
        #: Images (``failure_key``) an evaluation found unusable: later evaluations leave their rows out up front.
        self.unusable_images: set[str] = set()
        #: The path of this kind on this backbone: True = through the language model (see the module doc).
        self.generative: bool = uses_language_model(backbone)
        #: Whether training rows carry a text for the text tower (never on the generative path).
        self.uses_text: bool = type(self).uses_text and not self.generative
        #: Whether training runs the decoder / language model (every kind on the generative path does).
        self.uses_decoder: bool = type(self).uses_decoder or self.generative
        #: The backbone's image placeholder for prompts (generative path; picklable, used in loader workers).
        self.image_token: str = str(backbone.image_token) if self.generative else ""
        #: The model's chat turn around every prompt (``[generative] chat = true``), else None.
        self.prompt_wrap: ChatWrap | None = (backbone.chat_wrap(spec.generative.get("system") or "")
                                             if self.generative and spec.generative.get("chat") else None)
        #: Text a row, prompt or template may not hold: the tokenizer's special tokens, which it would read as such
        #: (a second image placeholder, an end of text in the middle of a target or caption).
        self.special_texts: tuple[str, ...] = special_texts(backbone, self.generative)
        self._special_pattern = "|".join(re.escape(t) for t in sorted(self.special_texts, key=len, reverse=True))
        self._normalized_special = NormalizedSpecials(backbone, self.generative, self.special_texts)
        in_file = f" in {spec.source_file}" if spec.source_file else ""
        if self.prompt_wrap is not None:
            self.refuse_special(str(spec.generative.get("system") or ""), "[generative] system",
                                f"take it out of system{in_file} (the image placeholder is the prompt's {{image}})",
                                backbone=backbone.name)
        prompt = spec.generative.get("prompt")
        for piece, *_ in string.Formatter().parse(prompt) if self.generative and isinstance(prompt, str) else ():
            # the template's own text: a literal '<image>' beside {image} failed only at the first collation ('2
            # image placeholders', naming no task); an end token mid-prompt was read as the end of the text
            self.refuse_special(piece, f"[generative] prompt {prompt!r}",
                                f"write {{image}} once where the image goes, and no other special token, in the "
                                f"prompt{in_file}", backbone=backbone.name)
        for template in spec.templates if not self.generative else ():   # zero-shot prompts of the text tower
            for piece, *_ in string.Formatter().parse(template):
                self.refuse_special(piece, f"the template {template!r}", f"take it out of templates{in_file}")
        if train is not None:
            self.check_texts(train.examples, "training")   # (before the tokenizer reads them: a lone surrogate)
            warn_text_coverage(spec, split_texts(train), backbone)
            self.check_image_counts(train.examples, "training")

    # ------------------------------------------------------------------ spec checks

    @classmethod
    def check_backbone(cls, spec: TaskSpec, backbone: Backbone) -> None:
        """Raise when ``backbone`` cannot serve this kind at all (retrieval without a contrastive text
        tower, captioning without a decoder). Called at start-up before any data is read (but built-in rows
        ``train`` reads to check --batch-size), and again when the kind is built; the base accepts every backbone."""
        return None

    @classmethod
    def metrics_for(cls, options: dict[str, Any]) -> tuple[str, ...]:
        """The metric names a spec with these ``options`` may list (``metric_names`` unless options change them)."""
        return cls.metric_names

    @classmethod
    def headline(cls, spec: TaskSpec) -> str:
        """The metric that heads ``spec``'s report row and that benchmarks average: the first metric the spec
        lists that can (a fraction in [0, 1]), else the kind's ``headline_metric``."""
        return next((m for m in spec.metrics if m not in cls.not_headline), cls.headline_metric)

    @classmethod
    def check_spec(cls, spec: TaskSpec) -> None:
        """Check option values beyond their types (ranges, combinations); raise :func:`spec_error`.

        Subclasses extend this (calling ``super().check_spec(spec)``); the base checks the templates.
        """
        if cls.needs_templates and not spec.templates:
            raise spec_error(spec, "templates", f"at least one prompt template for a {cls.kind} task",
                             list(spec.templates))
        world = spec.data.options.get("world_kind") if spec.data.source == "builtin" else None
        if world is not None and cls.world_kinds is not None and world not in cls.world_kinds:
            raise spec_error(spec, "data.world_kind", f"one of {list(cls.world_kinds)} for a {cls.kind} task (other "
                             "kinds' rows lack what it trains on), or leave it out to use the task's kind", world)

    def check_eval_split(self, split: Split, spec: TaskSpec | None = None) -> None:
        """Raise for what would make scoring ``split`` fail or score the wrong text (questions without answers,
        classes training never saw, special-token text). ``read_eval_splits`` calls it at start-up, so that it
        fails before training, not after it; subclasses extend it. ``spec``: the spec the split is scored under
        (``eval --tasks FILE``: its ``metrics`` choose the headline), by default the kind's own."""
        self.check_texts(split.examples, "evaluation")
        self.check_image_counts(split.examples, "evaluation")

    def check_image_counts(self, examples: Sequence[Example], what: str) -> None:
        """Refuse a row of several images for a kind that reads one per row (a spec of ``format = "nlvr2"`` and
        another kind): it failed in the first step, on shapes, naming neither the task nor the row."""
        if type(self).several_images:
            return
        bad = next((ex for ex in examples if isinstance(ex.image, tuple)), None)
        if bad is not None:
            raise ValueError(f"task {self.name!r}: {what} example {bad.image_id!r} holds {len(bad.image)} images, but "
                             f"a {self.kind} task reads one image per row; a statement about several images is an "
                             'nlvr task (kind = "nlvr")')

    def scored(self, examples: list[Example]) -> list[Example]:
        """The examples an evaluation scores: all of them, or the first ``[generative] eval_limit`` on the
        generative path (decoding on a CPU costs far more than an embedding)."""
        return eval_subset(examples, self.spec.generative["eval_limit"]) if self.generative else examples

    def check_texts(self, examples: Sequence[Example], what: str) -> None:
        """Refuse a row whose texts are not strings, or hold a :attr:`special_texts` or a lone surrogate, by name."""
        for ex in examples:
            for field, texts in (("text", (ex.text,)), ("captions", ex.captions), ("answers", ex.answers)):
                if isinstance(texts, str):   # captions="a dog": trained "a", scored against the letters
                    fix = f"({texts!r},)" if texts.strip() else "() for none"   # ('',): a blank text, left out
                    raise TypeError(f"task {self.name!r}: {what} example {ex.image_id!r} has {field}={texts!r}, one "
                                    f"string, read letter by letter; give a tuple ({field}={fix})")
                if not isinstance(texts, tuple | list) or not all(
                        isinstance(t, str) or (t is None and field == "text") for t in texts):
                    raise TypeError(f"task {self.name!r}: {what} example {ex.image_id!r} has {field}="
                                    f"{getattr(ex, field)!r}; {field} is text: " + ("a string or None" if field ==
                                    "text" else f"a tuple of strings, () for none ({field}=('2', '2', '3'))"))
            row = [t for t in (ex.text, *ex.captions, *ex.answers) if t]
            joined = "\n".join(row)   # one literal search for the usual row; a normaliser reads each text alone
            if (lone_surrogate(joined) is None and not (self.special_texts and re.search(self._special_pattern, joined))
                    and not any(map(self._normalized_special, row))):   # (Prepend: not after the joins' newlines)
                continue
            for field, texts in (("text", (ex.text,)), ("captions", ex.captions), ("answers", ex.answers)):
                for text in texts:
                    self.refuse_special(text, f"{what} example {ex.image_id!r} has in its {field} the text "
                                        f"{text!r}, which", "remove it from the data")

    def special_in(self, text: str | None) -> str | None:
        """The first of :attr:`special_texts` that ``text`` holds (None: none); one regex search (``re`` caches the
        pattern), whatever the count of special tokens (thousands in some vocabularies)."""
        found = re.search(self._special_pattern, text) if text and self.special_texts else None
        return found.group(0) if found else self._normalized_special(text)   # <ROW_1_COL_1> under a lowercaser

    def refuse_special(self, text: str | None, what: str, fix: str, *, backbone: str | None = None) -> None:
        """Raise ValueError when ``text`` holds one of :attr:`special_texts`: the one check of every text this task
        gives the model's tokenizer (rows, class names and targets, templates, [generative] prompt and system).
        ``what`` names the text (it is followed by "holds"), ``fix`` says what to do. So is a lone surrogate."""
        half = lone_surrogate(text)
        if half:   # a JSON escape ("\ud800") without its pair: no character, and tokenizers raise a bare TypeError
            raise ValueError(f"task {self.name!r}: {what} holds the lone surrogate {half!r} (half of a UTF-16 pair, "
                             f"as a JSON escape writes it, without its other half): it is no character; {fix}")
        hit = self.special_in(text)
        if hit:
            of = f"backbone {backbone!r}" if backbone else "the model's tokenizer"
            raise ValueError(f"task {self.name!r}: {what} holds {hit!r}, a special token of {of}: it would be read as "
                             f"that token (an image placeholder or marker, or an end of text), not as text; {fix}")

    def warn_lm_context(self, examples: Sequence[Example], backbone: Backbone, limit: int = 1000) -> None:
        """Generative path: say when training rows are longer than the language model's context
        (:func:`~mtl_lora_vl.tasks.generative.warn_lm_context`). :func:`build_kind` calls it once the kind is built."""
        warn_lm_context(self, examples, backbone, limit)

    def state(self) -> dict[str, Any]:
        """What this kind learned from its training split (JSON-able), saved with adapters so a
        trained task can be rebuilt without its training data: ``Kind(spec, None, backbone, state)``."""
        return {}

    # ------------------------------------------------------------------ loader side

    def sample_text(self, example: Example) -> str | None:
        """The text of this row that the loader tokenises (``None``: the row carries no text)."""
        return None

    def sample_fields(self, example: Example, index: int) -> dict[str, Tensor]:
        """This row's own CPU tensors (labels, targets, ...); the loader stacks them per task."""
        return {}

    @property
    def lm_end(self) -> str:
        """The token that ends this task's targets on the generative path: the chat template's end of an assistant
        turn with ``chat = true`` (``ChatWrap.end``), else "" (the tokenizer's end token)."""
        return self.prompt_wrap.end if self.prompt_wrap is not None else ""

    def sample_lm(self, example: Example, draw: int) -> tuple[str, str, float]:
        """Generative path: this row's ``(prompt, target, weight)``; the LM loss covers only the target (and
        its end token). ``draw`` is an integer fixed by the row's seed (seed, rank, step, position in the batch: the
        same with any number of workers and after a resume), for kinds that choose a target at random (VQA)."""
        raise BackboneError(
            f"task kind {self.kind!r} has no generative path: its rows cannot be trained through a language model. "
            "Train it on a contrastive backbone (--backbone builtin, open_clip:NAME or hf:DIR of a CLIP model), or "
            "give the generative backbone kinds it can do (vqa, captioning, classification)")

    # ------------------------------------------------------------------ training and evaluation

    @abstractmethod
    def build_head(self, backbone: Backbone) -> nn.Module:
        """The task's trainable head (on the backbone's device, float32 -- :data:`~mtl_lora_vl.precision.HEAD_DTYPE`,
        whatever torch's default dtype and the base's: its forward reads the base's features cast to fp32)."""

    @abstractmethod
    def loss(self, head: nn.Module, backbone: Backbone, batch: dict[str, Tensor], image_emb: Tensor,
             text_emb: Tensor | None) -> Tensor:
        """Scalar training loss of this task's rows (unweighted)."""

    @torch.no_grad()
    def evaluate(self, backbone: Backbone, head: nn.Module | None, split: Split, *, batch_size: int,
                 device: torch.device | str, dtype: torch.dtype = torch.float32,
                 num_workers: int = 0, records: list[dict[str, Any]] | None = None) -> dict[str, float]:
        """Metrics on ``split``; ``head=None`` applies the zero-shot rule. Runs without gradients, with
        the model and head in eval mode (their training flags are restored afterwards). Rows whose image
        cannot be decoded are left out of the scores (the pass that found them ran with substitute images,
        which kept the rows' labels: it is run again without them, until a pass finds none: an ``eval_limit``
        lets rows in that the first pass did not score), or stop the evaluation when ``split.strict``.
        ``records``: a list that gets one dict per scored row, in split order (``index`` in ``split``, ``image``:
        its file path(s) or None, the kind's input and ``reference``, and ``prediction``), from the predictions the
        metrics are computed from (no second pass); rows left out of the scores are left out of it too."""
        strict = getattr(split, "strict", False)
        with eval_mode(backbone.model, head), decode_policy(self.name, strict) as failed, once_per_task(backbone, self):
            # images an earlier evaluation of this task found unusable are left out up front (not decoded, warned
            # about and scored again on every pass: zero-shot, adapted, each validation); a strict split decodes all
            bad: set[str] = set() if strict else set(self.unusable_images)
            scored = self._without(split, bad) if bad else split
            while True:
                rows: list[Row] | None = [] if records is not None else None   # (the last pass's rows are kept)
                # (records only where asked: a kind registered elsewhere, written before --predictions, still scores)
                out = self._evaluate(backbone, head, scored, batch_size=batch_size, device=device, dtype=dtype,
                                     num_workers=num_workers, **({"records": rows} if rows is not None else {}))
                found = union_over_shards(failed)   # (the same on every rank: they stop together)
                if found <= bad:
                    break
                bad |= found
                scored = self._without(split, bad)
            self.unusable_images |= bad
            if len(scored.examples) < len(split.examples):
                kept = len(scored.examples)
                logger.warning("task %r: %d evaluation row(s) whose image cannot be used are left out of its scores "
                               "(%d of %d rows kept)", self.name, len(split.examples) - kept, kept, len(split.examples))
            if records is not None:
                place = {id(ex): i for i, ex in enumerate(split.examples)}
                records.extend({"index": place[id(ex)], "image": image_paths(ex), **fields, "prediction": pred}
                               for ex, fields, pred in rows or ())
            return out

    @staticmethod
    def _without(split: Split, bad: set[str]) -> Split:
        return dataclasses.replace(split, examples=[ex for ex in split.examples if not failure_keys(ex) & bad])

    @abstractmethod
    def _evaluate(self, backbone: Backbone, head: nn.Module | None, split: Split, *, batch_size: int,
                  device: torch.device | str, dtype: torch.dtype, num_workers: int,
                  records: list[Row] | None = None) -> dict[str, float]:
        """What ``evaluate`` computes; each kind implements this. ``records`` (None: nothing is recorded) gets
        ``(example, fields, prediction)`` per scored row, in split order: ``example`` the split's own object,
        ``fields`` the row's input text and ``reference``, ``prediction`` what the model gave it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# ---------------------------------------------------------------------------------------------- helpers


def image_paths(example: Example) -> str | list[str | None] | None:
    """The file path of ``example``'s image as the split gives it (a list for several images), None for one held in
    memory (bytes, a PIL image, a built-in scene, a ``datasets`` row)."""
    def path(image: Any) -> str | None:
        return str(image) if isinstance(image, (str, PurePath)) else None
    return [path(p) for p in example.image] if isinstance(example.image, tuple) else path(example.image)


def require_captions(spec: TaskSpec, train: Split | None) -> None:
    """Caption-based kinds (retrieval, captioning) need a caption in every row of their training split (when
    given): a blank one trained an empty target (the end token at once, after a lone space token)."""
    if train is None:
        return
    refuse_rows_of_another_kind(spec.name, spec.kind, train, "caption", spec.data.format)   # (a VQA row: its question)
    if not any(ex.text or ex.captions for ex in train.examples):
        raise ValueError(f"task {spec.name!r}: {spec.kind} needs captions, but no training example has text")
    i, ex = next(((i, ex) for i, ex in enumerate(train.examples) if _caption(ex) is None), (None, None))
    if ex is not None:
        raise ValueError(f"task {spec.name!r}: training example {i} (image {ex.image_id!r}) has no caption text (its "
                         f"text {ex.text!r} and captions {ex.captions!r} are blank); give the row its caption, or "
                         "leave the row out of the split, as the file readers leave blank captions out")


def caption_of(task: str, example: Example) -> str:
    """The caption a caption-based kind trains on: the example's text, else its first non-blank reference."""
    text = _caption(example)
    if text is None:
        raise ValueError(f"task {task!r}: example {example.image_id!r} has no caption to train on")
    return text


def _caption(example: Example) -> str | None:
    return next((t for t in (example.text, *example.captions) if t and t.strip()), None)


def spec_error(spec: TaskSpec, fld: str, expected: str, got: Any) -> SpecError:
    """A :class:`SpecError` naming the spec's file and field, for ``check_spec`` implementations."""
    return SpecError(f"{spec.source_file or spec.name}: field '{fld}': expected {expected}, got {got!r}")


def model_device(backbone: Backbone) -> torch.device:
    """The device of the backbone's weights (where heads are put)."""
    return next(backbone.model.parameters()).device


@contextlib.contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Put ``modules`` in eval mode for the block and restore each submodule's training flag afterwards."""
    saved = [(m, m.training) for mod in modules if mod is not None for m in mod.modules()]
    for mod in modules:
        if mod is not None:
            mod.eval()
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag

