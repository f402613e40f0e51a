"""Resume on the built-in LLaVA (``--backbone builtin-llava``, generative tasks) repeats the uninterrupted run.

tests/test_resume.py covers the CLIP path in depth (workers, every generator, each rank's state); this is the
generative path's check, kept cheap: 4 steps of 2 rows, a checkpoint at step 2, adapter dropout (the torch
generator matters from step 2 on, once B is no longer zero), 4 scored rows per task and no zero-shot pass.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from rng_kind import small_spec
from safetensors.torch import load_file

import mtl_lora_vl.training.checkpoint as checkpoint
from mtl_lora_vl.cli import train_main
from mtl_lora_vl.io import ADAPTER_WEIGHTS
from mtl_lora_vl.training.rng import set_rng_state

SNAP_AT, STEPS = 2, 4


def _args(tmp: Path) -> list[str]:
    tasks = ",".join(str(small_spec(tmp, t, n_train=16, n_eval=4)) for t in ("vqa", "captioning"))
    return ["--backbone", "builtin-llava", "--tasks", tasks, "--steps", str(STEPS), "--batch-size", "2",
            "--workers", "0", "--dropout", "0.1", "--save-every", str(SNAP_AT), "--log-every", "1", "--warmup", "1",
            "--eval-batch-size", "8", "--skip-zero-shot"]


def _losses(run: Path) -> list[dict[str, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("loss") or k == "step"} for r in rows]


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    return {**load_file(str(run / "adapter" / ADAPTER_WEIGHTS)),
            **load_file(str(run / "adapter" / "heads.safetensors"))}


def _max_diff(a: Path, b: Path) -> float:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys() and ta
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted LLaVA run, and a copy of its run directory right after the step-2 checkpoint."""
    tmp = tmp_path_factory.mktemp("llava_resume")
    save = checkpoint.save_checkpoint

    def save_and_snapshot(state, run_dir):
        path = save(state, run_dir)
        if state["step"] == SNAP_AT and not (tmp / "snapshot").exists():
            shutil.copytree(run_dir, tmp / "snapshot")
        return path

    torch.manual_seed(0)
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "save_checkpoint", save_and_snapshot)
        assert train_main(_args(tmp) + ["--out", str(tmp / "straight")]) == 0
    return tmp / "straight", tmp / "snapshot"


def _resumed(snapshot: Path, tmp: Path) -> Path:
    run = Path(shutil.copytree(snapshot, tmp / "resumed"))
    assert int(torch.load(run / "checkpoint.pt", weights_only=True)["step"]) == SNAP_AT
    assert train_main(["--resume", str(run), "--workers", "0"]) == 0
    return run


def test_a_resumed_llava_run_equals_the_uninterrupted_one(straight, tmp_path):
    full, snapshot = straight
    resumed = _resumed(snapshot, tmp_path)
    assert _max_diff(full, resumed) == 0.0          # adapter and heads, bit for bit (CPU, one thread)
    assert _losses(resumed) == _losses(full)
    assert [r["step"] for r in _losses(full)] == [1, 2, 3, 4]
    scores = [{t: r["adapted"] for t, r in json.loads((run / "eval.json").read_text())["tasks"].items()}
              for run in (full, resumed)]
    assert scores[0] == scores[1] and set(scores[0]) == {"vqa", "captioning"}
    # config.json: precision "auto" as asked, and what it came to (resumed alike: no second entry)
    for run in (full, resumed):
        doc = json.loads((run / "config.json").read_text())
        assert doc["precision"] == "auto" and doc["resolved"] == [
            {"from_step": 0, "device": "cpu", "world_size": 1, "workers": 0, "precision": "fp32", "base_dtype": "fp32"}]


def test_a_llava_resume_without_the_torch_generator_differs(straight, tmp_path, monkeypatch):
    """The equality above depends on the restored torch generator (adapter dropout after the resume)."""
    full, snapshot = straight
    monkeypatch.setattr(checkpoint, "set_rng_state",
                        lambda s, d=None: set_rng_state({**s, "torch": torch.get_rng_state()}, d))
    resumed = _resumed(snapshot, tmp_path)
    assert _max_diff(full, resumed) > 0 and _losses(resumed)[2:] != _losses(full)[2:]
    assert _losses(resumed)[:2] == _losses(full)[:2]    # the rows before the checkpoint are the run's own
