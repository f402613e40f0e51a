"""--resume of a run whose checkpoint predates an option this version has: refused unless the run's value does what
runs did before the option existed (training.checkpoint.OPTIONS_ADDED), naming the option and that value."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from mtl_lora_vl._version import __version__
from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.cli import train_main
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.rundir import recorded_options
from mtl_lora_vl.tasks.spec import builtin_spec_dirs
from mtl_lora_vl.training import checkpoint

pytestmark = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                reason="built-in backbone not built (python scripts/pretrain_backbone.py)")

#: The options checkpoints recorded when they began to record them (commit a7bce12), besides those a resume takes
#: anew; every later one is in OPTIONS_ADDED.
FIRST_RECORDED = {"accumulate", "alpha", "backbone", "base_dtype", "batch_mode", "batch_size", "compile", "dropout",
                  "epochs", "eval_batch_size", "eval_every", "eval_split", "eval_val", "grad_checkpointing",
                  "grad_clip", "head_lr", "lambda_type", "log_every", "lr", "max_bad_steps", "method", "n_up",
                  "precision", "pretrained", "rank", "sampling", "sampling_temperature", "save_every", "seed",
                  "skip_zero_shot", "steps", "targets", "task_lr_mult", "tasks", "temperature", "warmup",
                  "weight_decay"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A one-step run of 8 rows of the built-in vqa, finished; each test copies it."""
    tmp = tmp_path_factory.mktemp("opts")
    text = next(d / "vqa.toml" for d in builtin_spec_dirs() if (d / "vqa.toml").is_file()).read_text()
    for split in ("train", "val", "test"):
        text = re.sub(rf"^\[data\.{split}\]$", f"[data.{split}]\nn = 8", text, flags=re.M)
    (tmp / "vqa.toml").write_text(text)
    run = tmp / "run"
    assert train_main(["--tasks", str(tmp / "vqa.toml"), "--steps", "1", "--batch-size", "4", "--workers", "0",
                       "--warmup", "0", "--eval-batch-size", "64", "--skip-zero-shot", "--out", str(run), "-q"]) == 0
    return run


def _older(run: Path, tmp: Path, option: str) -> Path:
    """A copy of ``run`` as a version from before ``option`` wrote it: neither config.json nor the checkpoint's
    record has it."""
    old = tmp / "old"
    shutil.copytree(run, old)
    config = json.loads((old / "config.json").read_text())
    del config[option]
    (old / "config.json").write_text(json.dumps(config))
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    del state["options"][option]
    torch.save(state, old / "checkpoint.pt")
    return old


def test_every_recorded_option_says_what_runs_did_before_it():
    recorded = set(recorded_options(Path("run"), TrainOptions()))
    assert recorded - FIRST_RECORDED - set(checkpoint.OPTIONS_ADDED) == set(), (
        "add each new option to training.checkpoint.OPTIONS_ADDED with the value that does what runs did before it")
    assert set(checkpoint.OPTIONS_ADDED) <= recorded


def test_a_checkpoint_of_this_version_records_it_and_resumes(finished_run, capsys):
    assert torch.load(finished_run / "checkpoint.pt", weights_only=True)["package_version"] == __version__
    assert train_main(["--resume", str(finished_run), "-q"]) == 0, capsys.readouterr().err


def test_an_option_added_since_whose_default_changed_what_runs_did_is_refused_naming_it(
        finished_run, tmp_path, monkeypatch, capsys):
    # a newer version added --grad-clip with default 1.0, while runs before it clipped nothing (0.0)
    old = _older(finished_run, tmp_path, "grad_clip")
    added = {**getattr(checkpoint, "OPTIONS_ADDED", {}), "grad_clip": 0.0}
    monkeypatch.setattr(checkpoint, "OPTIONS_ADDED", added, raising=False)
    capsys.readouterr()
    assert train_main(["--resume", str(old), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"written by mtl-lora-vl {__version__}, before the option(s) --grad-clip existed" in err, err
    assert "trained as --grad-clip 0.0 does, and would continue with --grad-clip 1.0" in err
    assert f'write "grad_clip": 0.0 into {old / "config.json"}' in err
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**config, "grad_clip": 0.0}))   # the fix the message gives
    assert train_main(["--resume", str(old), "-q"]) == 0, capsys.readouterr().err
    assert torch.load(old / "checkpoint.pt", weights_only=True)["options"]["grad_clip"] == 0.0


def test_an_option_added_since_that_the_table_lacks_is_refused(finished_run, tmp_path, capsys):
    old = _older(finished_run, tmp_path, "warmup")
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    state.pop("package_version", None)
    torch.save(state, old / "checkpoint.pt")
    capsys.readouterr()
    assert train_main(["--resume", str(old), "-q"]) == 2
    err = capsys.readouterr().err
    assert ("written by an earlier mtl-lora-vl (one that did not record its version), before the option(s) "
            "--warmup existed, and this version does not know") in err, err
    assert "(it would continue with --warmup 20)" in err


def test_an_option_whose_value_did_what_runs_did_before_it_resumes(finished_run, tmp_path, capsys):
    old = _older(finished_run, tmp_path, "keep_best")   # default False: no selection, as before the option
    assert train_main(["--resume", str(old), "-q"]) == 0, capsys.readouterr().err


def test_a_finished_run_refused_on_resume_does_not_first_say_it_repeats_its_evaluation(finished_run, tmp_path,
                                                                                        capsys):
    """It said "the run finished ... this repeats its final evaluation only", then refused the edited config.json."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "lr": 0.5}))
    capsys.readouterr()
    assert train_main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "config.json was edited since the run's checkpoint: lr 0.5" in err and "the run finished" not in err, err
    (run / "config.json").write_text(json.dumps(config))
    assert train_main(["--resume", str(run)]) == 0
    assert "the run finished (step 1/1, eval.json written)" in capsys.readouterr().err
