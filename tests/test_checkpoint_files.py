"""What --resume makes of a checkpoint.pt that is not one of this run's: another file saved under its name, one of
a newer version, one made on another base model. Each is refused before training, with one line saying why."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train import small_spec

import mtl_lora_vl.training.checkpoint as checkpoint
from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.backbones.builtin import builtin_files
from mtl_lora_vl.cli import train_main
from mtl_lora_vl.options import TrainOptions

_GOOD = {"checkpoint_version": 2, "step": 3, "trainable": {"w": torch.zeros(2)}, "optimizer": {}, "scheduler": {},
         "scaler": {}, "sampler": {}}


def _run_dir(tmp: Path, doc: object) -> Path:
    """A run directory whose config.json is a plain run's and whose checkpoint.pt holds ``doc``."""
    run = tmp / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(asdict(TrainOptions(tasks="caption_cls", out=str(run)))))
    torch.save(doc, run / "checkpoint.pt")
    return run


@pytest.mark.parametrize("doc, says", [
    ([1, 2], "holds a list, not a training checkpoint"),
    ({"w": torch.zeros(2)}, "not a training checkpoint (it has no step, trainable, optimizer, scheduler, sampler:"),
    ({k: v for k, v in _GOOD.items() if k != "sampler"}, "not a training checkpoint (it has no sampler:"),
    ({**_GOOD, "checkpoint_version": 3}, "written by a newer mtl-lora-vl (checkpoint version 3; this one reads "
                                         "versions up to 2)"),
])
def test_a_file_that_is_no_training_checkpoint_is_refused_in_one_line(tmp_path, capsys, doc, says):
    """A list gave a traceback ('list' object has no attribute 'get'), a model's state dict or a checkpoint without a
    sampler 'error: trainable' / 'error: sampler' after the whole set-up, and a newer version's file was read as if
    it were this version's."""
    run = _run_dir(tmp_path, doc)
    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoint\.pt") as e:
        checkpoint.load_checkpoint(run)
    assert says in str(e.value)
    capsys.readouterr()
    assert train_main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_a_version_1_checkpoint_still_loads(tmp_path):
    doc = {k: v for k, v in _GOOD.items() if k != "checkpoint_version"}
    assert checkpoint.load_checkpoint(_run_dir(tmp_path, doc))["step"] == 3


@pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(), reason="built-in backbone not built")
def test_base_weights_replaced_under_the_recorded_path_are_refused(tmp_path, capsys):
    """The checkpoint holds only what trains: the frozen base is read again from the path config.json records. Weights
    replaced there (another checkpoint, a re-download, a fine-tune saved over it) were taken silently, so the rest of
    the run trained its adapter on another base model."""
    weights = tmp_path / "weights.safetensors"
    shutil.copy(builtin_files()[2], weights)
    spec = small_spec(tmp_path, "caption_cls", n_train=8, n_eval=4)
    run = tmp_path / "run"
    assert train_main(["--tasks", str(spec), "--pretrained", str(weights), "--steps", "1", "--warmup", "0",
                       "--batch-size", "2", "--workers", "0", "--skip-zero-shot", "-q", "--out", str(run)]) == 0
    tensors = load_file(str(weights))
    name = next(k for k in sorted(tensors) if k.endswith("mlp.c_fc.weight"))   # a weight no adapter is on
    tensors[name] = tensors[name] * 1.5
    save_file(tensors, str(weights))
    capsys.readouterr()
    assert train_main(["--resume", str(run), "-q"]) == 2
    err = capsys.readouterr().err
    assert "the base model's weights differ from those the run trained on" in err and name in err
    shutil.copy(builtin_files()[2], weights)   # the original back: the same samples, up to their 6 digits
    assert train_main(["--resume", str(run), "-q"]) == 0


def test_a_checkpoint_that_cannot_be_opened_is_not_called_damaged(tmp_path, monkeypatch):
    """A checkpoint.pt another user owns (a shared cluster folder) was called damaged, 'truncated or copied
    incompletely', and the advice was to start the run again with --overwrite, deleting it."""
    run = _run_dir(tmp_path, _GOOD)

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_checkpoint(run)
    msg = str(e.value)
    assert "cannot open" in msg and "Permission denied" in msg
    assert "damaged" not in msg and "--overwrite" not in msg
