"""A training run's data loader: the multi-task loader sized for the run, its worker count, the built-in training rows
read before the model loads where they may refuse --batch-size, the refusal of a --batch-size larger than the rows, and
the warnings about a --batch-size that does not fit the tasks."""

from __future__ import annotations

import logging

from ..data.loader import MultiTaskLoader
from ..data.records import Split
from ..data.world import DEFAULT_SCENES
from ..distributed import DistInfo, node_cores
from ..tasks import TaskSpec
from .run import Run

__all__ = ["build_loader", "builtin_scenes", "check_batch_fits", "default_workers", "early_train_splits",
           "warn_small_batches"]

logger = logging.getLogger(__name__)


def default_workers(info: DistInfo) -> int:
    """Loader workers when not given: this rank's share of the cores the ranks on this machine may use
    (their affinity masks capped by their CPU quotas, not the machine's count) left after one per rank, at most
    four."""
    cores, local = node_cores(info)
    return max(0, min(4, (cores - local) // local))


def early_train_splits(specs: list[TaskSpec], data_root: str | None,
                       batch_size: int | None) -> dict[str, Split] | None:
    """The training splits of ``specs`` (the tasks a run trains), read before the model loads where that is cheap and
    may refuse --batch-size: every task built-in (rows generated in about a second) and --batch-size given and above
    their scenes (a built-in training split has a row a scene or more, so below that it fits). Else None: they are
    read once the backbone has loaded and refused a task it cannot serve (reading and checking COCO's images takes
    minutes), and a --batch-size larger than their rows is refused then (left out, its default is the path's)."""
    scenes = [builtin_scenes(s) for s in specs]
    if batch_size is None or not specs or None in scenes or batch_size <= sum(n for n in scenes if n is not None):
        return None
    return {s.name: s.load_split("train", data_root) for s in specs}


def builtin_scenes(spec: TaskSpec) -> int | None:
    """The scenes of a built-in task's training split (its ``n``, else the world's default); None for a task read
    from files, or one whose ``n`` its reading will refuse."""
    if spec.data.source != "builtin" or "train" not in spec.data.splits:
        return None
    n = spec.data.splits["train"].get("n")
    n = DEFAULT_SCENES.get((spec.data.options.get("world_kind", spec.kind), "train")) if n is None else n
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def check_batch_fits(batch_size: int, train_splits: dict[str, Split]) -> None:
    """Refuse a --batch-size larger than all the training rows: every batch would repeat examples (and
    100000 rows ran out of memory, unsaid)."""
    n_train = sum(len(split.examples) for split in train_splits.values())
    if batch_size > n_train:
        raise ValueError(f"--batch-size {batch_size}: larger than the training data ({n_train} examples over "
                         f"the trained tasks {list(train_splits)}), so every batch would repeat examples; give "
                         f"--batch-size {n_train} or less (--accumulate or more processes: a step repeats them too)")


def build_loader(run: Run) -> MultiTaskLoader:
    """The multi-task loader over the trained tasks, sized for every micro-batch of the run on this rank."""
    opts, setup, info = run.opts, run.setup, run.info
    loader = MultiTaskLoader([setup.kinds[n] for n in run.trained], [setup.train_splits[n] for n in run.trained],
                           setup.backbone, batch_size=opts.batch_size, strategy=opts.sampling,
                           temperature=opts.sampling_temperature, mode=opts.batch_mode, seed=opts.seed,
                           steps=run.total_steps * opts.accumulate, num_workers=run.workers, rank=info.rank,
                           world_size=info.world_size, adapter_tasks=setup.config.tasks,
                           pin_memory=info.device.type == "cuda", per_step=opts.accumulate)
    if info.is_main:
        warn_small_batches(run, loader)
    return loader


def warn_small_batches(run: Run, loader: MultiTaskLoader) -> None:
    """Say when --batch-size does not fit the tasks: too small, a mixed batch leaves tasks out of most steps and a
    contrastive task with fewer than two rows in a batch has no negatives (its loss is 0); larger than a task's
    training data (a step's rows: every process's and every --accumulate micro-batch's), its rows repeat examples."""
    opts, b = run.opts, run.opts.batch_size
    if opts.batch_mode == "mixed" and b < len(run.trained):
        logger.warning("--batch-size %d is smaller than the %d tasks: a mixed batch cannot hold every task, so each "
                       "step trains only some of them; give --batch-size %d or more", b, len(run.trained),
                       len(run.trained))
    per_batch = b if opts.batch_mode == "homogeneous" else None
    for name, share, n_examples in zip(run.trained, loader.sampler.shares, loader.sampler.sizes):
        kind = run.setup.kinds[name]
        rows = (per_batch if per_batch is not None else b * share) * (run.info.world_size if kind.cross_rank_fields
                                                                      else 1)   # the loss sees every rank's rows
        need = kind.min_batch_rows
        if need > 1 and rows < need:
            logger.warning("task %s gets %.2g rows a batch on average; its loss needs %d (in-batch negatives: a "
                           "row alone scores 0 and trains nothing); raise --batch-size", name, rows, need)
        # a step's rows: all ranks' and all --accumulate micro-batches' (a homogeneous step's all hold its task)
        drawn = (per_batch if per_batch is not None else b * share) * run.info.world_size * opts.accumulate
        if drawn > n_examples:
            logger.warning("task %s has %d training examples and gets %.3g rows a step (over all processes%s), so its "
                           "rows in a step repeat examples; lower --batch-size%s or give the task more data", name,
                           n_examples, drawn, " and --accumulate micro-batches" if opts.accumulate > 1 else "",
                           " or --accumulate" if opts.accumulate > 1 else "")
