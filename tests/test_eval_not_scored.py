"""``eval --split val`` (and train's ``--eval-split val``): a task asked for that has no val split is not scored
on val (validation never reads test), and the report says so -- it was left out of eval.json, the table, the source
line and the score plot, as if it had not been asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_eval_zero_shot import _small_spec  # (the same small built-in specs)

from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.cli import train_main
from mtl_lora_vl.evaluation import report
from mtl_lora_vl.evaluation.evaluate import evaluate_adapter, evaluate_setup
from mtl_lora_vl.multitask import build_setup
from mtl_lora_vl.options import TrainOptions

pytestmark = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                reason="built-in backbone not built (python scripts/pretrain_backbone.py)")


def _no_val_spec(tmp: Path) -> Path:
    """A file-based classification spec with train and test splits only."""
    for colour in ("red", "blue"):
        Image.new("RGB", (16, 16), colour).save(tmp / f"{colour}.png")
    rows = "".join(json.dumps({"image": f"{c}.png", "label": c}) + "\n" for c in ("red", "blue") * 3)
    (tmp / "rows.jsonl").write_text(rows)
    spec = tmp / "colours.toml"
    spec.write_text('name = "colours"\nkind = "classification"\ntemplates = ["a {} square."]\n[data]\n'
                    'format = "jsonl"\n[data.train]\nfile = "rows.jsonl"\n[data.test]\nfile = "rows.jsonl"\n')
    return spec


def test_a_task_without_a_val_split_is_in_the_val_report_as_not_scored(tmp_path, monkeypatch):
    no_val = _no_val_spec(tmp_path)
    cls = _small_spec(tmp_path, "caption_cls", 8, 6)
    setup = build_setup(TrainOptions(tasks=f"{no_val},{cls}", rank=2, data_root=str(tmp_path)), torch.device("cpu"))
    kw = dict(data_root=str(tmp_path), device="cpu", dtype=torch.float32, batch_size=16)
    result = evaluate_setup(setup, split="val", **kw)
    assert set(result["tasks"]) == {"caption_cls"}   # not scored: no test figures under the val name
    assert result["not_scored"] == {"colours": {"metric": "top1", "kind": "classification",
                                                "reason": "no val split"}}
    table = report.markdown_table(result).splitlines()
    assert table[0] == "| task | metric | zero-shot | adapted | change |"
    assert table[2].startswith("| caption_cls | top1 | ")
    assert table[3] == "| colours | top1 | not scored: no val split | – | – |"
    assert "(colours not scored: no val split)" in report.source_line(result)
    assert "not_scored" not in evaluate_setup(setup, split="test", **kw)   # every task has a test split

    figs = []   # the score plot: a tick for it, without bars
    monkeypatch.setattr(report, "_save", lambda fig, path, tight=True: figs.append((path.name, fig)) or path)
    report.write_plots(tmp_path, result, None)
    ax = dict(figs)["zero_shot_vs_adapted.png"].axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(labels) == 2 and labels[0].startswith("caption_cls") and "val split" not in labels[0]
    assert labels[1] == "colours\n(not scored:\nno val split)"
    assert len(ax.patches) == 2   # caption_cls's zero-shot and adapted bars only
    left, right = ax.get_xlim()   # its tick inside the axes, with the margin the bars have: not on the right edge
    assert left < -0.4 and right > 1.4, (left, right)


def test_eval_split_val_of_a_base_model_reports_the_task_without_val(tmp_path):
    """``eval --split val`` without an adapter: eval.json, report.md and the printed table name the task."""
    no_val = _no_val_spec(tmp_path)
    cls = _small_spec(tmp_path, "caption_cls", 8, 6)
    out = tmp_path / "ev"
    printed = evaluate_adapter(None, tasks=f"{no_val},{cls}", data_root=str(tmp_path), split="val", out=out,
                               batch_size=16, device="cpu")
    doc = json.loads((out / "eval.json").read_text())
    assert set(doc["tasks"]) == {"caption_cls"}
    assert doc["not_scored"]["colours"]["reason"] == "no val split"
    row = "| colours | top1 | not scored: no val split |\n"   # zero-shot only: no adapted or change cells
    assert row in (out / "report.md").read_text() and row.rstrip("\n") in printed


def test_a_task_not_scored_on_another_spec_files_data_names_that_spec(tmp_path):
    """``eval --tasks later.toml`` of an adapter: a task scored on another spec file's data is told so by its eval.json
    entry's ``data_spec``; a task not scored because that file's data lacks the split had none, so eval.json and the
    report said 'no val split' of the adapter's own task, whose data may well have one."""
    no_val = _no_val_spec(tmp_path)
    cls = _small_spec(tmp_path, "caption_cls", 8, 6)
    run = tmp_path / "run"
    assert train_main(["--tasks", f"{no_val},{cls}", "--data-root", str(tmp_path), "--steps", "1", "--batch-size",
                       "2", "--device", "cpu", "--workers", "0", "--skip-zero-shot", "--out", str(run)]) == 0
    later = tmp_path / "later.toml"   # the adapter's task 'colours' on other data: a test split only
    later.write_text(no_val.read_text().split("[data.train]")[0] + '[data.test]\nfile = "rows.jsonl"\n')
    out = tmp_path / "ev"
    evaluate_adapter(run / "adapter", tasks=f"{later},caption_cls", data_root=str(tmp_path), split="val", out=out,
                     batch_size=16, device="cpu")
    doc = json.loads((out / "eval.json").read_text())
    assert doc["not_scored"]["colours"] == {"metric": "top1", "kind": "classification", "reason": "no val split",
                                            "data_spec": str(later.resolve())}
    assert "data_spec" not in doc["tasks"]["caption_cls"]   # (the adapter's own spec)
    said = f"(colours not scored: no val split in the data of {later.resolve()})"
    assert said in (out / "report.md").read_text()
    evaluate_adapter(run / "adapter", tasks="colours,caption_cls", data_root=str(tmp_path), split="val",
                     out=tmp_path / "ev2", batch_size=16, device="cpu")
    doc = json.loads((tmp_path / "ev2" / "eval.json").read_text())
    assert doc["not_scored"]["colours"] == {"metric": "top1", "kind": "classification", "reason": "no val split"}
