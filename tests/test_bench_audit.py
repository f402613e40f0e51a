"""The method benchmark's report and resume, from helper 219's audit: an ablation that diverges at every seed is a
row of its table, not a gap."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.benchmark import BenchSettings, run_benchmark
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.tasks.spec import builtin_spec_dirs
from mtl_lora_vl.training.train import train

needs_builtin = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                   reason="built-in backbone not built")


def _small_vqa(tmp: Path) -> str:
    src = next(d / "vqa.toml" for d in builtin_spec_dirs() if (d / "vqa.toml").is_file()).read_text()
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        src = re.sub(rf"^\[data\.{split}\]$", f"[data.{split}]\nn = {n}", src, flags=re.M)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vqa.toml").write_text(src)
    return str(tmp / "vqa.toml")


def _tiny(tmp_path: Path, **over) -> BenchSettings:
    base = dict(tasks=[_small_vqa(tmp_path / "specs")], methods=["mtl_lora"], match_params=False, single_task=False,
                ablations={"task_lr_mult": [1.0, 10.0]}, seeds=2, lr_grid=[3e-3], steps=1, batch_size=4, warmup=0,
                eval_batch_size=16, device="cpu")
    return BenchSettings(**{**base, **over})


@needs_builtin
def test_an_ablation_that_diverges_at_every_seed_stays_in_its_table(tmp_path):
    """Its rows vanished from the ablation table and plot, and the findings said 'its scores are over the other
    seeds' where there were none: a value that cannot train at all read as one never tried."""

    def diverging_ablation(opts: TrainOptions) -> Path:
        if opts.task_lr_mult == 10.0:
            raise FloatingPointError("5 non-finite steps in a row at step 1; lower --lr")
        return train(opts)

    results = run_benchmark(_tiny(tmp_path), tmp_path / "out", trainer=diverging_ablation, stream=io.StringIO())
    rows = results["ablations"]["task_lr_mult"]
    assert [(r["value"], r.get("diverged", False)) for r in rows] == [(1.0, False), (10.0, True)]
    report = (tmp_path / "out" / "report.md").read_text()
    assert re.search(r"\| task_lr_mult \| 10\.0 \(every seed diverged\) \| [\d,]+ \| diverged \| diverged \| – \|",
                     report), report
    assert "seed 1: diverged** at learning rate 0.003, the rate picked on seed 0 (5 non-finite steps in a row at " \
           "step 1; lower --lr); no seed trained, so it has no scores." in report
    assert "its scores are over the other seeds" not in report
    assert (tmp_path / "out" / "plots" / "ablations.png").is_file()
