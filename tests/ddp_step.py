"""One accumulated training step under DDP: two ranks at batch 4 compute the losses and (averaged) gradients one
process computes at batch 8 on the same rows.

``python tests/ddp_step.py DIR OUT.json`` in one process takes the loader's batches of 8; under ``torchrun
--nproc_per_node 2`` (gloo) each rank takes its 4 rows of them (the sampler's chunk of each task's draws; round
robin: 2 rows of each task a rank) through the trainer's own wrapping (``train.wrap_model``: DDP, retrieval's
gathered negatives) and ``step.forward_backward`` with ``--accumulate 2`` (``no_sync`` on the first micro-batch,
each task's row scales). Rank 0 writes the step's losses (averaged over the ranks, as the log row is) and every
trainable tensor's gradient.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mtl_lora_vl.distributed import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed
from mtl_lora_vl.multitask import build_setup
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.training.loading import build_loader
from mtl_lora_vl.training.optim import build_optimization
from mtl_lora_vl.training.run import Run
from mtl_lora_vl.training.step import forward_backward
from mtl_lora_vl.training.train import wrap_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rng_kind import small_spec  # noqa: E402

ACCUMULATE = 2


def step_grads(tmp: Path, info: DistInfo, backbone: str = "builtin",
               names: tuple[str, ...] = ("vqa", "retrieval")) -> dict:
    """The losses and (DDP-averaged) gradients of one accumulated step, at 8 rows a micro-batch in all, of tasks
    ``names`` on ``backbone``."""
    tmp = tmp / f"rank{info.rank}"   # each rank writes its own spec files
    tmp.mkdir(parents=True, exist_ok=True)
    tasks = ",".join(str(small_spec(tmp, n, n_train=16, n_eval=4)) for n in names)
    opts = TrainOptions(tasks=tasks, backbone=backbone, rank=4, batch_size=8 // info.world_size,
                        accumulate=ACCUMULATE, sampling="round_robin", workers=0, steps=1)
    torch.manual_seed(0)
    setup = build_setup(opts, info.device)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # adapters off their zero start, so every adapter tensor gets a gradient
        for p in setup.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    run = Run(opts, info, tmp, torch.float32, setup, total_steps=1, workers=0)
    loader = build_loader(run)
    net = wrap_model(run)
    optim = build_optimization(setup.model, opts, 1, info.device, torch.float32)
    result = forward_backward(net, iter(loader), optim, accumulate=ACCUMULATE, backbone=setup.backbone,
                              amp_dtype=torch.float32, info=info)
    loader.close()
    grads = {n: p.grad.flatten().tolist() for n, p in setup.model.named_parameters() if p.grad is not None}
    return {"losses": all_reduce_mean(result.losses, info), "samples": result.samples, "grads": grads}


if __name__ == "__main__":
    info = init_distributed("cpu")
    got = step_grads(Path(sys.argv[1]), info)
    if info.is_main:
        Path(sys.argv[2]).write_text(json.dumps(got))
    barrier(info)
    cleanup(info)
