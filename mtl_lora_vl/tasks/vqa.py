"""Visual question answering as classification over an answer vocabulary.

* **Vocabulary**: the ``answer_vocab_size`` most frequent training answers, each normalised with
  :func:`mtl_lora_vl.metrics.normalize_answer` (ties broken alphabetically, so it is deterministic).
* **Zero-shot rule** (prompt matching): the query ``q = normalize(image_emb + w * question_emb)``
  (``w`` = ``head.question_weight``) is matched against the template-averaged embeddings of the answer
  prompts (``templates``, e.g. ``"the answer is {}."``); the prediction is the best-scoring answer.
  The question term steers the match to answers of the right type (colours for "what colour ...").
* **Head**: the same rule with learnable parts -- a fusion MLP over ``[image, question, image*question]``
  whose last layer starts at zero, added to ``image + w * question``; answer weights initialised to the
  answer-prompt embeddings; a zero bias. At initialisation it reproduces the zero-shot predictions
  exactly.
* **Loss**: cross-entropy against the VQA soft scores (``min(#humans / 3, 1)`` per answer, via
  :func:`mtl_lora_vl.metrics.vqa_accuracy`) normalised to a distribution; rows whose answers are all
  outside the vocabulary are left out.
* **Metrics**: ``vqa_accuracy`` overall and ``vqa_accuracy/<question type>`` per type.

**On a generative backbone** (LLaVA-style; see :mod:`mtl_lora_vl.tasks.generative`) VQA is answer
generation, as in VL-T5:

* **Target**: each training row's answer is *sampled* among its distinct normalised human answers with
  probability proportional to their VQA soft scores, and the row's LM loss is weighted by the sampled
  answer's soft score (VL-T5's ``loss * score``), so a question whose humans disagree teaches every answer
  they gave, in proportion. The draw is fixed by the row's seed (the loader's seed, rank, step and
  position: the same with any number of workers and after a resume; each epoch draws anew). As VL-T5
  samples only answers of its frequent-answer vocabulary, only *consensus answers* are drawn: answers that
  are the majority answer of some training question, ties included, given by two humans or more (a rare
  spelling such as "yep" beside "yes" is never one; two answers given by five humans each both are; a question
  whose ten humans all answered differently adds none); a question with no consensus answer
  among its answers draws from all of them. (The built-in LLaVA never says "yep": its loss there is ~16 nats,
  so a drawn "yep" would swamp the batch's gradient.) The loss covers only the answer tokens and the end
  token (the prompt ``[generative] prompt``, default ``"{image} question: {question} answer:"``, is masked).
* **Evaluation**: greedy generation of at most ``[generative] max_len`` tokens, scored with the official
  normalisation and VQA accuracy, overall and per question type, on the first ``[generative] eval_limit``
  questions (0 = all). Zero-shot is the base language model (adapters off), adapted the routed one.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_lora_vl.adapters.rows import autocast_off
from mtl_lora_vl.backbones.base import Backbone
from mtl_lora_vl.data.loader import iter_image_batches
from mtl_lora_vl.data.records import Example, Split
from mtl_lora_vl.distributed import map_shards
from mtl_lora_vl.metrics import normalize_answer, vqa_accuracy
from mtl_lora_vl.precision import HEAD_DTYPE, autocast
from mtl_lora_vl.tasks.base import (
    Row,
    TaskKind,
    encode_texts,
    logit_scale_of,
    model_device,
    prompt_embeddings,
    prompt_scores,
    spec_error,
)
from mtl_lora_vl.tasks.generative import (
    GenerationHead,
    check_template,
    format_prompt,
    generate_texts,
    lm_task_loss,
    weighted_index,
)
from mtl_lora_vl.tasks.registry import register_kind
from mtl_lora_vl.tasks.spec import TaskSpec
from mtl_lora_vl.tasks.vqa_targets import AnswerNormalizer, PackedTargets, pack_lm_candidates, pack_soft_targets

logger = logging.getLogger(__name__)
_ANSWER_TYPES = frozenset({"yes/no", "number", "other"})   # VQAv2's answer_type values


class VQAHead(nn.Module):
    """Fusion of image and question embeddings scored against learnable answer weights."""

    def __init__(self, answer_emb: Tensor, logit_scale: float, question_weight: float = 1.0,
                 hidden: int = 0) -> None:
        super().__init__()
        dim = answer_emb.shape[1]
        hidden = hidden or 2 * dim
        self.question_weight = float(question_weight)
        self.logit_scale = float(logit_scale)
        fp32 = {"dtype": HEAD_DTYPE}   # (whatever torch's default dtype: the forward reads fp32 features)
        self.fusion = nn.Sequential(nn.Linear(3 * dim, hidden, **fp32), nn.GELU(), nn.Linear(hidden, dim, **fp32))
        nn.init.zeros_(self.fusion[2].weight)
        nn.init.zeros_(self.fusion[2].bias)
        self.answer_weight = nn.Parameter(answer_emb.detach().to(HEAD_DTYPE, copy=True))
        self.bias = nn.Parameter(torch.zeros(answer_emb.shape[0], **fp32))

    def forward(self, image_emb: Tensor, question_emb: Tensor) -> Tensor:
        img, q = image_emb.float(), question_emb.float()
        with autocast_off(img.device.type):   # fp32 inside a training step's autocast too (as in evaluation)
            fused = torch.cat([img, q, img * q], dim=-1).to(self.fusion[0].weight.dtype)   # a head a user cast
            query = (img + self.question_weight * q) + self.fusion(fused).float()
            return prompt_scores(query, self.answer_weight, self.logit_scale) + self.bias


def majority_answer(answers: tuple[str, ...] | list[str]) -> str:
    """The most common normalised answer of one question (ties: the alphabetically first), "" for none."""
    return min(top_answers(answers), default="")


def top_answers(answers: tuple[str, ...] | list[str]) -> set[str]:
    """Every normalised answer given by the most humans of one question (several when they tie), none for none."""
    return _top_normalized([normalize_answer(a) for a in answers])


def _top_normalized(gts: list[str], least: int = 1) -> set[str]:
    """:func:`top_answers` of answers already normalised; none where the top count is below ``least``."""
    counts = Counter(gts)
    counts.pop("", None)
    most = max(counts.values(), default=0)
    return {a for a, n in counts.items() if n == most} if most >= least else set()


@register_kind("vqa")
class VQAKind(TaskKind):
    """Open-ended VQA (VQAv2 style): answer vocabulary, soft-score loss, VQA accuracy per question type."""

    world_kinds = ("vqa",)

    headline_metric = "vqa_accuracy"
    _stale_filter = False   # a saved filter keyed by VQAv2's answer types (see filter_type)
    _answer_typed_said = False   # the warning for rows typed by answer type, once per task
    metric_names = ("vqa_accuracy", "per_type")
    not_headline = ("per_type",)
    uses_text = True
    needs_templates = True
    default_templates = ("the answer is {}.",)
    head_defaults = {"question_weight": 1.0, "hidden": 0}
    option_defaults = {"answer_vocab_size": 1000, "filter_by_type": True}
    generative_defaults = {"prompt": "{image} question: {question} answer:", "max_len": 8, "eval_limit": 0,
                           "chat": False, "system": ""}

    @classmethod
    def check_spec(cls, spec: TaskSpec) -> None:
        super().check_spec(spec)
        if spec.options["answer_vocab_size"] < 2:
            raise spec_error(spec, "options.answer_vocab_size", "an integer >= 2", spec.options["answer_vocab_size"])
        if spec.head["hidden"] < 0:
            raise spec_error(spec, "head.hidden", "an integer >= 0 (0 = twice the embedding size)",
                             spec.head["hidden"])
        check_template(spec, "generative.prompt", spec.generative["prompt"], ("image", "question"))
        if spec.generative["max_len"] < 1:
            raise spec_error(spec, "generative.max_len", "an integer >= 1", spec.generative["max_len"])
        if spec.generative["eval_limit"] < 0:
            raise spec_error(spec, "generative.eval_limit", "an integer >= 0 (0 = every question)",
                             spec.generative["eval_limit"])

    def __init__(self, spec: TaskSpec, train: Split | None, backbone: Backbone, state: dict | None = None) -> None:
        super().__init__(spec, train, backbone, state)
        if state is not None:
            self.answers = [str(a) for a in state["answers"]]
            self.answer_index = {a: i for i, a in enumerate(self.answers)}
            self.type_answers = {t: [int(i) for i in ids] for t, ids in state.get("type_answers", {}).items()}
            self._stale_filter = bool(self.type_answers) and set(self.type_answers) <= _ANSWER_TYPES
            self.consensus = frozenset(state.get("consensus", self.answers))
            self.packed = None   # no training rows to pack: targets are computed per visit
            return
        norm = AnswerNormalizer()   # each distinct answer string normalised once while the kind is built
        norm_rows = [[norm(a) for a in ex.answers] for ex in train.examples]   # (texts: TaskKind.check_texts)
        counts: Counter[str] = Counter()
        for gts in norm_rows:
            counts.update(gts)
        counts.pop("", None)
        if not counts:
            raise ValueError(f"task {spec.name!r}: no training example has answers; a VQA split needs "
                             f"Example.answers (check its [data] section)")
        empty = sum(1 for gts in norm_rows if not any(gts))
        if empty:
            logger.warning("task %r: %d training question(s) have no answer, or only answers the VQA normalisation "
                           "empties (articles such as 'a'); they train with weight 0", spec.name, empty)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        self.answers: list[str] = [a for a, _ in ranked[: spec.options["answer_vocab_size"]]]
        self.answer_index: dict[str, int] = {a: i for i, a in enumerate(self.answers)}
        # Answer filtering by question type (standard in zero-shot VQA): a "what colour" question is
        # only scored against the answers that won a training question of its type (the majority
        # answer; ties included, and as for the consensus answers none where several humans all disagree: one
        # human's answer wins its question), so rare synonyms ("yep") do not split the vote.
        by_type: dict[str, set[int]] = defaultdict(set)
        if spec.options.get("filter_by_type", True):
            for ex, gts in zip(train.examples, norm_rows):
                least = 2 if sum(map(bool, gts)) > 1 else 1
                won = [self.answer_index[a] for a in _top_normalized(gts, least) if a in self.answer_index]
                qtype = self.filter_type(ex)
                if qtype and won:
                    by_type[qtype].update(won)
        self.type_answers: dict[str, list[int]] = {t: sorted(ids) for t, ids in sorted(by_type.items())}
        #: Answers given by the most humans of at least one training question, ties included, where two or more
        #: gave it (a question whose humans all disagree has no majority to add); the generative targets.
        self.consensus: frozenset[str] = frozenset(a for gts in norm_rows for a in _top_normalized(gts, least=2))
        #: The training rows' soft targets (contrastive) or candidate answers (generative), computed once.
        rows = [ex.answers for ex in train.examples]
        self.packed: PackedTargets | None = (
            pack_lm_candidates(rows, norm_rows, self.consensus, norm) if self.generative
            else pack_soft_targets(rows, norm_rows, self.answer_index, norm))

    def state(self) -> dict:
        return {"answers": list(self.answers), "type_answers": self.type_answers, "consensus": sorted(self.consensus)}

    # ------------------------------------------------------------------ loader side

    def sample_text(self, example: Example) -> str | None:
        return None if self.generative else self.question(example)

    def question(self, example: Example) -> str:
        """The question text of ``example``; refused when it has none."""
        if not example.text:
            raise ValueError(f"task {self.name!r}: example {example.image_id!r} has no question text")
        return example.text

    def prompt(self, example: Example) -> str:
        """Generative path: the prompt of one question."""
        return format_prompt(self.spec.generative["prompt"], self.image_token, self.prompt_wrap,
                             question=self.question(example))

    def sample_lm(self, example: Example, draw: int) -> tuple[str, str, float]:
        """Prompt, a consensus answer drawn by soft score (``draw`` fixes the choice), and that answer's soft
        score (see the module docstring)."""
        packed = self.packed.row(example.answers) if self.packed is not None else None
        if packed is not None and len(packed[0]):   # (a row without answers: the per-visit code below)
            ids, scores = packed
            weights = scores.tolist()
            i = weighted_index(draw, weights)
            return self.prompt(example), self.packed.names[ids[i]], weights[i]
        answers = sorted({normalize_answer(a) for a in example.answers} - {""})
        if not answers:  # none, or only answers the normalisation empties ("a", "the"): nothing scores them,
            raw = next((a.strip() for a in example.answers if a.strip()), "")   # so the row weighs 0, as on
            return self.prompt(example), raw or "?", 0.0                        # the contrastive path
        answers = [a for a in answers if a in self.consensus] or answers
        scores = [vqa_accuracy(a, example.answers) for a in answers]
        i = weighted_index(draw, scores)
        return self.prompt(example), answers[i], scores[i]

    def soft_targets(self, answers: tuple[str, ...] | list[str]) -> Tensor:
        """VQA soft scores ``(V,)`` of the vocabulary answers among ``answers``."""
        target = torch.zeros(len(self.answers), dtype=torch.float32)   # (whatever torch's default dtype)
        for a in {normalize_answer(a) for a in answers}:
            i = self.answer_index.get(a)
            if i is not None:
                target[i] = vqa_accuracy(a, answers)
        return target

    def filter_type(self, example: Example) -> str | None:
        """The type that chooses the answers a question may get; it must come from the question alone.
        ``question_type`` unless the reader kept a separate ``meta["filter_type"]`` (VQAv2, whose default
        ``question_type`` is the answer type, derived from the human answers: filtering by it let the label
        choose the candidates); for the same reason a ``question_type`` that is one of VQAv2's answer types
        (rows of a JSONL or ``datasets`` copy of VQAv2) chooses nothing. An empty ``filter_type`` (questions
        without annotations) is the longest known type the question starts with, as VQAv2's question types
        are a question's opening words."""
        if "filter_type" not in example.meta:
            if example.question_type in _ANSWER_TYPES:   # VQAv2's answer type: the answers chose it
                if not self._answer_typed_said:
                    self._answer_typed_said = True
                    logger.warning("task %r: questions whose question_type is one of VQAv2's answer types (%s) come "
                                   "from the human answers, so their candidate answers are not filtered by it (the "
                                   "label would choose them); give such rows the question's own type in a "
                                   "'filter_type' field (VQAv2's question_type, its opening words)", self.name,
                                   ", ".join(sorted(_ANSWER_TYPES)))
                return None
            return example.question_type
        if self._stale_filter:   # an adapter saved before: its filter is keyed by answer type (said once)
            self._stale_filter = False
            logger.warning("task %r: this adapter's answer filter was saved by answer type (%s), which VQAv2 derives "
                           "from the human answers; candidates now go by question type, so they are not filtered "
                           "(retrain the task to filter them again)", self.name, sorted(self.type_answers))
        if example.meta["filter_type"]:
            return str(example.meta["filter_type"])
        q = " ".join((example.text or "").lower().split())
        known = getattr(self, "type_answers", {})   # (not yet while __init__ builds it)
        return max((t for t in known if q.startswith(t)), key=len, default=None)

    def answer_mask(self, question_type: str | None) -> Tensor:
        """(V,) bool: the answers a question of this type may get (all, for an unseen or missing type)."""
        ids = self.type_answers.get(question_type or "")
        if not ids:
            return torch.ones(len(self.answers), dtype=torch.bool)
        mask = torch.zeros(len(self.answers), dtype=torch.bool)
        mask[ids] = True
        return mask

    def sample_fields(self, example: Example, index: int) -> dict[str, Tensor]:
        if self.generative:
            return {}
        packed = self.packed.row(example.answers) if self.packed is not None else None
        if packed is None:
            targets = self.soft_targets(example.answers)
        else:   # the training row's soft targets, computed when the kind was built
            targets = torch.zeros(len(self.answers), dtype=torch.float32)   # (the packed scores' dtype)
            targets[torch.from_numpy(packed[0]).long()] = torch.from_numpy(packed[1])
        return {"targets": targets,
                "answer_mask": self.answer_mask(self.filter_type(example))}

    # ------------------------------------------------------------------ head, loss, evaluation

    def answer_embeddings(self, backbone: Backbone, *, device: torch.device | str, dtype: torch.dtype = torch.float32,
                          batch_size: int = 256) -> Tensor:
        """Template-averaged embeddings of the answer prompts ``(V, D)``."""
        return prompt_embeddings(backbone, self.answers, self.spec.templates, device=device, dtype=dtype,
                                 batch_size=batch_size)

    def build_head(self, backbone: Backbone) -> VQAHead | GenerationHead:
        if self.generative:
            return GenerationHead(self.spec.generative["max_len"])
        device = model_device(backbone)
        head = VQAHead(self.answer_embeddings(backbone, device=device), logit_scale_of(backbone),
                       self.spec.head["question_weight"], self.spec.head["hidden"])
        return head.to(device)

    def loss(self, head: VQAHead, backbone: Backbone, batch: dict[str, Tensor], image_emb: Tensor,
             text_emb: Tensor | None) -> Tensor:
        if self.generative:
            return lm_task_loss(batch)
        if text_emb is None:
            raise ValueError(f"task {self.name!r}: the VQA loss needs the question embeddings of its rows")
        logits = head(image_emb, text_emb)
        targets = batch["targets"].float()
        if "answer_mask" in batch:
            logits = logits.masked_fill(~batch["answer_mask"], torch.finfo(logits.dtype).min)
            targets = targets * batch["answer_mask"]
        mass = targets.sum(dim=1)
        dist = targets / mass.clamp_min(torch.finfo(mass.dtype).tiny)[:, None]
        per_row = -(dist * logits.log_softmax(dim=-1)).sum(dim=1)
        return per_row.mean()   # rows without an in-vocabulary answer add 0: a per-row mean (DDP/accumulation exact)

    def check_eval_split(self, split: Split, spec: TaskSpec | None = None) -> None:
        super().check_eval_split(split, spec)
        examples = self.scored(split.examples)
        self._check_answers(examples)
        three = sum(len(ex.answers) == 3 for ex in examples)
        if three:  # leaving one of 3 out leaves 2 humans, and min(2 / 3, 1) is the best a question can score
            logger.warning("task %r: %d of its %d evaluation questions have exactly three answers: the official VQA "
                           "accuracy (leave-one-out over the humans) scores them at most 0.667, even when the "
                           "prediction matches all three; compare such scores only with scores of the same formula",
                           self.name, three, len(examples))
        known = self.answer_index.keys()   # (a generative model answers in free text: no fixed list)
        unknown = 0 if self.generative else sum(not {normalize_answer(a) for a in ex.answers} & known
                                                for ex in examples)
        if unknown:
            logger.warning("task %r: %d of its %d evaluation questions have no answer among the %d the model picks "
                           "from (the most frequent training answers, up to the spec's answer_vocab_size), so they "
                           "score 0 whatever it predicts: the task's score is at most %.3f", self.name, unknown,
                           len(examples), len(self.answers), 1 - unknown / len(examples))

    def _check_answers(self, examples: Sequence[Example]) -> None:
        missing = [ex.image_id for ex in examples if not ex.answers]
        if missing:
            raise ValueError(f"task {self.name!r}: {len(missing)} evaluation questions have no answers "
                             f"(e.g. image {missing[0]!r}); evaluate on a split with annotations")

    def _evaluate(self, backbone: Backbone, head: nn.Module | None, split: Split, *, batch_size: int,
                  device: torch.device | str, dtype: torch.dtype, num_workers: int,
                  records: list[Row] | None = None) -> dict[str, float]:
        examples = self.scored(split.examples)
        if not examples:
            raise ValueError(f"task {self.name!r}: the evaluation split is empty")
        self._check_answers(examples)
        preds = map_shards(lambda part: self.predict(backbone, head, part, batch_size=batch_size, device=device,
                                                     dtype=dtype, num_workers=num_workers), examples)
        by_type: dict[str, list[float]] = defaultdict(list)
        scores = []
        for ex, pred in zip(examples, preds):
            acc = vqa_accuracy(pred, ex.answers)
            scores.append(acc)
            by_type[ex.question_type or "untyped"].append(acc)   # ("other" is one of VQAv2's own types)
            if records is not None:
                given = sorted({normalize_answer(a) for a in ex.answers} - {""})
                records.append((ex, {"question": ex.text, "question_type": ex.question_type,
                                     "reference": {"answers": list(ex.answers),
                                                   "scores": {a: vqa_accuracy(a, ex.answers) for a in given}}},
                                {"answer": pred, "vqa_accuracy": acc}))
        out = {"vqa_accuracy": sum(scores) / len(scores), "n": float(len(scores))}
        for qtype in sorted(by_type):
            out[f"vqa_accuracy/{qtype}"] = sum(by_type[qtype]) / len(by_type[qtype])
            out[f"n/{qtype}"] = float(len(by_type[qtype]))   # the type's questions: its weight in the overall score
        return out

    @torch.no_grad()
    def predict(self, backbone: Backbone, head: nn.Module | None, examples: list[Example], *, batch_size: int,
                device: torch.device | str, dtype: torch.dtype = torch.float32, num_workers: int = 0) -> list[str]:
        """Predicted answer strings; ``head=None`` uses the zero-shot prompt-matching rule. On a generative
        backbone: greedy generation from each question's prompt (the caller's scope decides between the base
        model and the routed one)."""
        if self.generative:
            max_len = getattr(head, "max_len", self.spec.generative["max_len"])
            return generate_texts(backbone, examples, [self.prompt(ex) for ex in examples], max_len=max_len,
                                  batch_size=batch_size, device=device, dtype=dtype, num_workers=num_workers)
        answer_emb = None
        if head is None:
            answer_emb = self.answer_embeddings(backbone, device=device, dtype=dtype, batch_size=batch_size)
        preds: list[str] = []
        batches = iter_image_batches(backbone, examples, batch_size=batch_size, device=device, dtype=dtype,
                                     num_workers=num_workers)
        for i, images in enumerate(batches):   # (a zip with a range stopped before the generator's end-of-pass report)
            start = i * batch_size
            rows = examples[start:start + batch_size]
            questions = [self.question(ex) for ex in rows]
            with autocast(device, dtype):
                img = backbone.encode_image(images).float()
            q = encode_texts(backbone, questions, device=device, dtype=dtype, batch_size=batch_size)
            if head is None:
                query = img + self.spec.head["question_weight"] * q
                logits = prompt_scores(query, answer_emb, logit_scale_of(backbone))
            else:
                logits = head(img, q)
            allowed = torch.stack([self.answer_mask(self.filter_type(ex)) for ex in rows]).to(logits.device)
            logits = logits.masked_fill(~allowed, float("-inf"))
            if torch.isnan(logits).any():   # argmax takes NaN for the best score: the question would get an answer
                raise ValueError(f"task {self.name!r}: the answer scores of {int(logits.isnan().any(1).sum())} "
                                 "question(s) are NaN (an overflow in half precision?); nothing can be ranked")
            preds.extend(self.answers[i] for i in logits.argmax(dim=-1).tolist())
        return preds
