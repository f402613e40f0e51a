"""The opening line of an --extend run names what trains of the adapter for each method."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.cli import train_main
from mtl_lora_vl.tasks.spec import builtin_spec_dirs

pytestmark = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                reason="built-in backbone not built (python scripts/pretrain_backbone.py)")


def tiny_spec(tmp: Path, name: str) -> Path:
    """A copy of a built-in spec with 16 rows per split."""
    src = next(d / f"{name}.toml" for d in builtin_spec_dirs() if (d / f"{name}.toml").is_file())
    text = src.read_text()
    for split in ("train", "val", "test"):
        text = re.sub(rf"^\[data\.{split}\]$", f"[data.{split}]\nn = 16", text, flags=re.M)
    path = tmp / f"{name}.toml"
    path.write_text(text)
    return path


def test_extend_line_names_the_task_lora_tensors_it_trains(tmp_path, capsys):
    """It said "(their Lambda_t, w_t) ...; A and every B_i frozen" of a task_lora adapter, whose new task trains
    its own A_t and B_t (and of a moe_lora one, which has no Lambda_t)."""
    common = ["--steps", "1", "--batch-size", "4", "--workers", "0", "--eval-batch-size", "16",
              "--skip-zero-shot", "--device", "cpu"]
    run = tmp_path / "run"
    assert train_main(["--tasks", str(tiny_spec(tmp_path, "vqa")), "--method", "task_lora", *common,
                       "--out", str(run)]) == 0
    capsys.readouterr()
    assert train_main(["--extend", str(run), "--tasks", str(tiny_spec(tmp_path, "retrieval")), *common,
                       "--out", str(tmp_path / "ext")]) == 0
    line = next(s for s in capsys.readouterr().err.splitlines() if "extending" in s)
    assert "adapter values (their own A_t, B_t)" in line and "the other tasks' A_t, B_t frozen" in line, line
    assert "Lambda_t" not in line and "every B_i" not in line, line
