"""Validation during training, and keeping the best of it (``--eval-every``, ``--keep-best``, ``--patience``).

Every ``--eval-every`` steps the adapted model is scored on each task's validation split and the scores are logged
(``eval/<task>/<metric>``). With ``--keep-best`` the mean of the tasks' headline metrics is the selection score
(``eval/selection``): the run keeps the adapter and heads of the evaluation that scored highest -- the last step is
scored too -- and finishes with them, so the test split is scored once, on the model validation chose, never used
to choose it. ``--patience N`` stops training after N evaluations in a row without a higher score. What is kept
(:class:`Best`) is saved in the checkpoint, so a resumed run chooses as an uninterrupted one does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..distributed import sharded_evaluation
from ..evaluation.evaluate import evaluate_adapted
from ..log import main_rank_logging
from .metrics_log import MetricsLog
from .rng import preserved_rng

if TYPE_CHECKING:   # (train imports this module)
    from .run import Run

logger = logging.getLogger(__name__)


@dataclass
class Best:
    """The highest selection score so far, its step, the adapter and heads then (on the CPU), and the evaluations
    since it."""

    step: int = -1
    score: float = -math.inf
    since: int = 0
    state: dict[str, Tensor] = field(default_factory=dict)
    last: int = -1   # the step last offered (a resumed run does not score it twice)

    def offer(self, step: int, score: float, trainable: dict[str, Tensor]) -> bool:
        """Keep ``trainable`` (copied) when ``score`` is higher than the best so far; True when it is."""
        self.last = step
        if not score > self.score:   # (a NaN score is never better)
            self.since += 1
            return False
        self.step, self.score, self.since = step, float(score), 0
        self.state = {n: t.detach().to("cpu", copy=True) for n, t in trainable.items()}
        return True

    def exhausted(self, patience: int) -> bool:
        """Whether ``patience`` evaluations in a row (0: never) came without a higher score."""
        return patience > 0 and self.since >= patience

    def state_dict(self) -> dict[str, Any]:
        """The fields, for a checkpoint (:meth:`from_state` reads them back)."""
        return {"step": self.step, "score": self.score, "since": self.since, "last": self.last,
                "trainable": self.state}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Best:
        """A Best from :meth:`state_dict`'s dict (None or empty: nothing kept yet)."""
        if not state:
            return cls()
        return cls(int(state["step"]), float(state["score"]), int(state["since"]), dict(state["trainable"]),
                   int(state["last"]))


def check_selection_splits(specs: list, eval_split: str, warn: bool) -> None:
    """Refuse ``--keep-best`` when no task has a validation split; warn (``warn``: rank 0) about tasks scored at the
    end on val, the split that chose the adapter (``--eval-split val``, or no test split): their scores are
    optimistic."""
    if not any("val" in spec.data.splits for spec in specs):
        raise ValueError("--keep-best chooses by validation scores, and no task has a validation split ([data.val] "
                         "in its spec); add one, or drop --keep-best")
    on_val = [s.name for s in specs if "val" in s.data.splits and (eval_split == "val" or eval_split not in
                                                                    s.data.splits)]
    if on_val and warn:
        logger.warning("--keep-best: %s scored at the end on val, the split that chose the adapter, so the reported "
                       "scores are optimistic; give them a test split ([data.test]), or --eval-split test",
                       ", ".join(on_val))


def stopped_early(saved: dict[str, Any], opts: Any) -> bool:
    """Whether the checkpoint ``saved`` is of a run that ``--patience`` stopped (it trains no further)."""
    return bool(opts.keep_best) and Best.from_state(saved.get("best")).exhausted(opts.patience)


def selection_score(run: Run, scores: dict[str, dict[str, float]]) -> float:
    """The mean over the scored tasks of each one's headline metric (the first its spec lists that can head)."""
    heads = [scores[s.name][type(run.setup.kinds[s.name]).headline(s)] for s in run.setup.specs if s.name in scores]
    return sum(heads) / len(heads) if heads else math.nan


def validate(run: Run, step: int, log: MetricsLog, best: Best | None) -> None:
    """Score the adapted model on the validation splits and log it (every rank scores its shard of each split; the
    generators are put back, so evaluating does not change training); with ``best``, offer it the scores."""
    opts = run.opts
    with preserved_rng(), sharded_evaluation(run.info), main_rank_logging(run.info.is_main):
        scores = evaluate_adapted(run.setup, split="val", data_root=opts.data_root, device=run.info.device,
                                  dtype=run.amp_dtype, batch_size=opts.eval_batch_size, workers=run.workers)
    row: dict[str, Any] = {"step": step, **{f"eval/{t}/{m}": v for t, r in scores.items() for m, v in r.items()}}
    if best is not None:
        row["eval/selection"] = score = selection_score(run, scores)
        if best.offer(step, score, run.setup.model.trainable_state()) and run.info.is_main:
            logger.info("step %d: validation selection score %.4f, the best so far", step, score)
    log.log(row)


def finish_with_best(run: Run, best: Best, step: int, log: MetricsLog) -> dict[str, Any]:
    """Score the last step too (unless it was), put the best evaluation's adapter and heads back, and say so; what
    eval.json records of the choice (``stopped_early_at``: where ``--patience`` stopped the run)."""
    if best.last != step:
        validate(run, step, log, best)
    if best.step < 0:
        raise RuntimeError("--keep-best: no validation score was kept (every selection score was NaN)")
    if best.step != step:
        run.setup.model.load_trainable_state(best.state)
        if run.info.is_main:
            logger.info("--keep-best: finishing with step %d's adapter and heads (validation selection score %.4f)",
                        best.step, best.score)
    chosen = {"step": best.step, "score": best.score, "of": "the mean of the tasks' validation headline metrics"}
    if step < run.total_steps:
        chosen["stopped_early_at"] = step
        if run.info.is_main:
            logger.warning("stopped early at step %d of %d: %d validation evaluation(s) in a row without a higher "
                           "score (--patience)", step, run.total_steps, best.since)
    return chosen
