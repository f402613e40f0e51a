"""The generative path under DDP, on the built-in LLaVA with vqa and captioning: one accumulated step and a sharded
evaluation, for comparing two gloo ranks with one process.

``python tests/ddp_lm.py DIR OUT.json`` in one process, or under ``torchrun --nproc_per_node 2``: the step is
:func:`ddp_step.step_grads` (two ranks at batch 4 take the rows one process takes at batch 8; each task's loss is its
rows' mean of per-row LM losses, and the ranks hold the same count of each task's rows), then every rank scores the
test split inside ``sharded_evaluation`` (greedy generation split over the ranks) with adapters moved off their
initial values. The split has 5 images (15 questions), so the shards differ in length. Rank 0 writes ``OUT.json``:
the step's losses and gradients, the scores, the per-row predictions and the shards it scored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mtl_lora_vl.distributed import DistInfo, barrier, cleanup, init_distributed, sharded_evaluation
from mtl_lora_vl.evaluation.evaluate import evaluate_setup
from mtl_lora_vl.multitask import build_setup
from mtl_lora_vl.options import TrainOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_step import step_grads  # noqa: E402
from rng_kind import small_spec  # noqa: E402
from sharded_eval import recording_shards  # noqa: E402

BACKBONE = "builtin-llava"
TASKS = ("vqa", "captioning")


def scores(tmp: Path) -> dict:
    """Zero-shot and adapted scores and per-row predictions on the test split (5 images), at batch 2."""
    tmp.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tasks = ",".join(str(small_spec(tmp, n, n_train=8, n_eval=5)) for n in TASKS)
    setup = build_setup(TrainOptions(tasks=tasks, backbone=BACKBONE, rank=4), torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # adapted differs from zero-shot
        for p in setup.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    predictions: dict = {}
    result = evaluate_setup(setup, split="test", data_root=None, device=torch.device("cpu"), dtype=torch.float32,
                            batch_size=2, predictions=predictions.__setitem__)
    return {"test": result["tasks"], "predictions": predictions}


def step_and_scores(tmp: Path, info: DistInfo) -> dict:
    """One accumulated step's losses and gradients, then the (sharded, under DDP) scores."""
    out = step_grads(tmp / "step", info, backbone=BACKBONE, names=TASKS)
    with sharded_evaluation(info):
        out.update(scores(tmp / "eval" / f"rank{info.rank}"))
    return out


def main(tmp: str, out: str) -> None:
    info = init_distributed("cpu")
    shards = recording_shards()
    result = step_and_scores(Path(tmp), info)
    result["shards"] = shards
    if info.is_main:
        Path(out).write_text(json.dumps(result, sort_keys=True))
    barrier(info)
    cleanup(info)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
