"""Scores of every built-in task kind, zero-shot and adapted, for comparing sharded evaluation with one process.

``python tests/sharded_eval.py DIR OUT.json`` in one process, or under ``torchrun --nproc_per_node N``
(gloo): every rank scores its shards inside ``sharded_evaluation``; rank 0 writes ``OUT.json``. The
model is the built-in backbone with vqa, retrieval and caption_cls adapters whose trainable tensors
are moved off their initial values (so adapted differs from zero-shot), plus captioning on a tiny
CoCa (the built-in backbone has no decoder). Splits have odd sizes, so the shards differ in length. The per-row
predictions (``eval --predictions``) of the test passes and of captioning are compared too: the same rows, in the
same order, with the same content.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mtl_lora_vl import distributed
from mtl_lora_vl.adapters.scopes import route
from mtl_lora_vl.data import world
from mtl_lora_vl.distributed import barrier, cleanup, init_distributed, map_shards, sharded_evaluation
from mtl_lora_vl.evaluation.evaluate import evaluate_adapted, evaluate_setup
from mtl_lora_vl.multitask import build_setup
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.tasks import build_kind, load_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rng_kind import small_spec  # noqa: E402
from vl_tiny import tiny_backbone  # noqa: E402


def scores(tmp: Path) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tasks = ",".join(str(small_spec(tmp, n, n_train=24, n_eval=13)) for n in ("vqa", "retrieval", "caption_cls"))
    setup = build_setup(TrainOptions(tasks=tasks, rank=4), torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in setup.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    kw = {"data_root": None, "device": torch.device("cpu"), "dtype": torch.float32, "batch_size": 4}
    predictions: dict = {}   # the per-row records (eval --predictions) every rank gets from the gathered shards
    out = {"test": evaluate_setup(setup, split="test", predictions=predictions.__setitem__, **kw)["tasks"],
           "val_adapted": evaluate_adapted(setup, split="val", **kw), "predictions": predictions}

    torch.manual_seed(0)
    coca = tiny_backbone(tmp / "coca", coca=True)
    spec = load_spec("captioning")
    val = world.build_split("captioning", "val", n=5, seed=0)
    kind = build_kind(spec, world.build_split("captioning", "train", n=3, seed=0), coca)
    head = kind.build_head(coca)
    records: list = []
    out["captioning"] = {"zero_shot": kind.evaluate(coca, None, val, batch_size=2, device="cpu", records=records),
                         "records": records,
                         "head": kind.evaluate(coca, head, val, batch_size=2, device="cpu"),
                         "captions": map_shards(lambda part: kind.generate(coca, head, part, batch_size=2,
                                                                           device="cpu"), val.examples)}
    with route(setup.model.model, "vqa"):
        out["vqa_predictions"] = map_shards(
            lambda part: setup.kinds["vqa"].predict(setup.backbone, setup.model.heads["vqa"], part, batch_size=4,
                                                    device="cpu"), setup.specs[0].load_split("test", None).examples)
    return out


def recording_shards() -> list[list[int]]:
    """The list each later ``shard_bounds`` call of this process appends its ``[n, start, end]`` to: which shards
    this rank scored (a launch script's process only)."""
    shards: list[list[int]] = []
    bounds = distributed.shard_bounds

    def recorded(n, rank, world_size):
        shards.append([n, *bounds(n, rank, world_size)])
        return shards[-1][1:]

    distributed.shard_bounds = recorded
    return shards


def main(tmp: str, out: str) -> None:
    info = init_distributed("cpu")
    shards = recording_shards()
    with sharded_evaluation(info):
        result = scores(Path(tmp) / f"rank{info.rank}")
    result["shards"] = shards
    if info.is_main:
        Path(out).write_text(json.dumps(result, indent=1, sort_keys=True))
    barrier(info)  # no rank tears gloo down while another still talks to it (an abort at exit under load)
    cleanup(info)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
