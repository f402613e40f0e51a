"""``eval`` of an adapter records the base model it scored and the options given to eval that the adapter does not
record (a bf16 re-evaluation read like the run's fp32 one: eval.json and the report said nothing of it)."""

from __future__ import annotations

import json

import pytest
import torch
from test_eval_zero_shot import _small_spec  # (the same small built-in specs)

from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.cli import eval_main, train_main
from mtl_lora_vl.evaluation.scored import adapter_base

pytestmark = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                reason="built-in backbone not built (scripts/pretrain_backbone.py)")


def test_eval_records_the_base_and_the_options_that_changed_the_scores(tmp_path):
    vqa = _small_spec(tmp_path, "vqa", 16, 8)
    run = tmp_path / "run"
    assert train_main(["--tasks", vqa, "--steps", "1", "--batch-size", "8", "--warmup", "0", "--workers", "0",
                       "--no-eval-val", "--skip-zero-shot", "--eval-batch-size", "16", "--out", str(run), "-q"]) == 0
    # the run records what it scored in too (its config.json says only "precision": "auto")
    assert json.loads((run / "eval.json").read_text())["base"] == {
        "backbone": "builtin", "pretrained": None, "weights_dtype": "float32", "computed_in": "float32"}
    assert eval_main(["--adapter", str(run / "adapter"), "--batch-size", "16", "--out", str(tmp_path / "same"),
                      "-q"]) == 0
    base = json.loads((tmp_path / "same" / "eval.json").read_text())["base"]
    assert base == {"backbone": "builtin", "pretrained": None, "weights_dtype": "float32",
                    "computed_in": "float32", "overrides": []}
    assert "given to eval" not in (tmp_path / "same" / "report.md").read_text()

    other = tmp_path / "bf16"
    assert eval_main(["--adapter", str(run / "adapter"), "--batch-size", "16", "--out", str(other), "--device", "cpu",
                      "--base-dtype", "bf16", "--precision", "bf16", "-q"]) == 0
    base = json.loads((other / "eval.json").read_text())["base"]
    assert base["weights_dtype"] == "bfloat16" and base["computed_in"] == "bfloat16"
    assert base["overrides"] == ["--base-dtype bf16", "--precision bf16"]
    assert (f"Scored on the test split, by `eval` of the adapter {(run / 'adapter').absolute()} with --base-dtype "
            "bf16 --precision bf16 (given to eval, not read from the adapter)." in (other / "report.md").read_text())


def test_overrides_are_the_options_given_that_the_adapter_does_not_record():
    """README: the report names the options given to eval that the adapter does not record -- another base model or
    base dtype, and any --precision but auto (the adapter records none, so fp32 on an fp32 run is named too)."""
    recorded = {"backbone": "builtin", "pretrained": None, "base_dtype": "auto"}
    same = adapter_base(recorded, "builtin", None, "auto", "auto", torch.float32, torch.float32)
    assert same["overrides"] == []
    named = adapter_base(recorded, "builtin", None, "bf16", "fp32", torch.bfloat16, torch.float32)
    assert named["overrides"] == ["--base-dtype bf16", "--precision fp32"]


def test_a_base_given_by_another_spelling_of_the_recorded_path_is_no_override(tmp_path, monkeypatch):
    """The adapter records its base's paths absolute: ``--pretrained ./w.pt`` (or ``hf:./dir``) from the folder
    holding them named the same files, yet was reported as an option given to eval."""
    (tmp_path / "w.pt").write_bytes(b"x")
    (tmp_path / "llava").mkdir()
    monkeypatch.chdir(tmp_path)
    recorded = {"backbone": f"hf:{tmp_path / 'llava'}", "pretrained": str(tmp_path / "w.pt")}
    same = adapter_base(recorded, "hf:./llava", "./w.pt", "auto", "auto", torch.float32, torch.float32)
    assert same["overrides"] == [] and same["pretrained"] == "./w.pt"
    (tmp_path / "v.pt").write_bytes(b"x")
    other = adapter_base(recorded, "hf:./llava", "v.pt", "auto", "auto", torch.float32, torch.float32)
    assert other["overrides"] == ["--pretrained v.pt"]
