"""Retrieval's in-batch negatives under DDP: two ranks at batch 4 compute the loss and gradients one process
computes at batch 8.

``python tests/gathered_negatives.py DIR OUT.json`` in one process scores the whole batch of 8 rows; under
``torchrun --nproc_per_node 2`` (gloo) each rank takes its 4 rows through a DDP-wrapped model. Rank 0 writes
the retrieval loss and the (rank-averaged) gradient of every trainable tensor. Rows 1 and 6 show one image,
so a positive pair spans the two ranks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from mtl_lora_vl.distributed import DistInfo, barrier, cleanup, init_distributed
from mtl_lora_vl.multitask import build_setup
from mtl_lora_vl.options import TrainOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rng_kind import small_spec  # noqa: E402

CAPTIONS = ["a red cube", "a blue ball", "two green cones", "a small yellow cube", "a large red ball",
            "three blue cubes", "a round blue thing", "one green cone"]
KEYS = [10, 11, 12, 13, 14, 15, 11, 17]


def loss_and_grads(tmp: Path, info: DistInfo) -> dict:
    """This rank's retrieval loss and the gradients of the trainable tensors (DDP-averaged under torchrun)."""
    tmp = tmp / f"rank{info.rank}"   # each rank writes its own spec file (one file: read while being written)
    tmp.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    setup = build_setup(TrainOptions(tasks=str(small_spec(tmp, "retrieval", n_train=8, n_eval=4)), rank=4),
                        torch.device("cpu"))
    model = setup.model
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # adapters off their zero start, so every adapter tensor gets a gradient
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    size = setup.backbone.image_size
    images = torch.randn(8, 3, size, size, generator=g)
    lo, hi = (4 * info.rank, 4 * info.rank + 4) if info.enabled else (0, 8)
    n = hi - lo
    task_id = setup.config.tasks.index("retrieval")
    batch = {"task_ids": torch.full((n,), task_id), "images": images[lo:hi], "indices": torch.arange(lo, hi),
             "tokens": setup.backbone.tokenizer(CAPTIONS[lo:hi]), "text_rows": torch.arange(n),
             "tasks": {"retrieval": {"rows": torch.arange(n), "text_index": torch.arange(n),
                                     "image_key": torch.tensor(KEYS[lo:hi])}}}
    net: nn.Module = model
    if info.enabled:
        model.ranks = info
        net = nn.parallel.DistributedDataParallel(model)
    _, losses = net(batch)
    losses["retrieval"].backward()
    grads = {name: p.grad.flatten().tolist() for name, p in model.named_parameters() if p.requires_grad}
    return {"loss": losses["retrieval"].item(), "grads": grads}


if __name__ == "__main__":
    info = init_distributed("cpu")
    got = loss_and_grads(Path(sys.argv[1]), info)
    if info.is_main:
        Path(sys.argv[2]).write_text(json.dumps(got))
    barrier(info)
    cleanup(info)
