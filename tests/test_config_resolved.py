"""config.json records what a run's ``auto`` options (and the --device / --workers a resume takes anew) came to.

The options stay as given (``precision: "auto"``: a resume on another device follows that device, as documented);
``resolved`` lists, from the step each start or resume began at, the device, processes, workers, autocast dtype and
base weights' dtype. Before, only a finished run's eval.json (the last segment's dtypes) and the checkpoint (the last
save's autocast dtype) said which precision "auto" had meant; a run resumed in another one kept no trace of the first.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mtl_lora_vl.cli.commands import parse_train_args
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.precision import dtype_flag
from mtl_lora_vl.rundir import RESOLVED, record_resolved, resumed_options, write_config

CPU = {"device": "cpu", "world_size": 1, "workers": 0, "precision": "fp32", "base_dtype": "fp32"}


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, TrainOptions(tasks="vqa", out=str(run), steps=7), CPU)
    return run


def test_a_new_runs_config_records_what_it_resolved_and_a_resume_adds_what_changed(tmp_path):
    run = _run(tmp_path)
    doc = json.loads((run / "config.json").read_text())
    assert doc["precision"] == "auto" and doc["device"] == "auto"     # the request, as given
    assert doc[RESOLVED] == [{"from_step": 0, **CPU}]
    assert not record_resolved(run, 3, dict(CPU))                     # resumed alike: nothing to add
    gpu = {**CPU, "device": "cuda:0", "workers": 4, "precision": "bf16"}
    assert record_resolved(run, 5, gpu)
    assert json.loads((run / "config.json").read_text())[RESOLVED] == [{"from_step": 0, **CPU},
                                                                       {"from_step": 5, **gpu}]


def test_a_config_with_its_resolved_record_resumes_and_configures_a_new_run(tmp_path):
    """The record is no option: --resume (which refuses keys it does not know) and --config RUN/config.json skip it."""
    run = _run(tmp_path)
    opts = resumed_options(run, TrainOptions(resume=str(run)), ["resume"])
    assert (opts.steps, opts.precision, opts.device) == (7, "auto", "auto")
    again = parse_train_args(["--config", str(run / "config.json")], prog="train_vl.py")
    assert (again.steps, again.tasks, again.out) == (7, "vqa", None)


def test_dtype_flag_names_dtypes_as_the_flags_do():
    assert [dtype_flag(d) for d in (torch.float32, torch.bfloat16, torch.float16, None)] == ["fp32", "bf16", "fp16",
                                                                                              None]
