"""``eval`` without ``--adapter``: a base model scored zero-shot on ``--tasks``, as ``train`` scores it before
training."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.backbones.builtin import builtin_llava_dir
from mtl_lora_vl.cli import eval_main, train_main
from mtl_lora_vl.cli.parsing import build_parser
from mtl_lora_vl.evaluation.report import details_table, markdown_table, scored_line
from mtl_lora_vl.options import EvalOptions
from mtl_lora_vl.tasks.spec import builtin_spec_dirs

pytestmark = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file()
                                or not (builtin_llava_dir() / "config.json").is_file(),
                                reason="built-in backbones not built (scripts/pretrain_backbone.py, pretrain_llava.py)")


def _small_spec(tmp: Path, name: str, n_train: int, n_eval: int, limit: int = 4) -> str:
    """A copy of a built-in spec with small splits (and a small ``[generative] eval_limit``)."""
    src = next(d / f"{name}.toml" for d in builtin_spec_dirs() if (d / f"{name}.toml").is_file())
    text = src.read_text()
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        text = re.sub(rf"^\[data\.{split}\]$", f"[data.{split}]\nn = {n}", text, flags=re.M)
    text = re.sub(r"^eval_limit = \d+", f"eval_limit = {limit}", text, flags=re.M)
    path = tmp / f"{name}.toml"
    path.write_text(text)
    return str(path)


def _assert_same_zero_shot(run: Path, ev: Path) -> dict:
    """eval's zero-shot scores are train's, to the bit, with no adapted scores; returns eval's result."""
    trained, scored = (json.loads((p / "eval.json").read_text()) for p in (run, ev))
    assert list(scored["tasks"]) == list(trained["tasks"])
    for name, r in scored["tasks"].items():
        t = trained["tasks"][name]
        assert r["zero_shot"] == t["zero_shot"] and r["details"]["zero_shot"] == t["details"]["zero_shot"], name
        assert (r["metric"], r["split"], r["n"], r["metrics"]) == (t["metric"], t["split"], t["n"], t["metrics"])
        assert r["adapted"] is None and r["change"] is None and r["details"]["adapted"] is None
    assert "config" not in scored   # no adapter, so no adapter configuration
    return scored


def _assert_zero_shot_report(ev: Path, printed: str) -> None:
    """report.md and the printed table show a zero-shot column only; the plot is the zero-shot bars alone."""
    report = (ev / "report.md").read_text()
    assert report.startswith("# Zero-shot\n")
    for text in (report, printed):
        assert "| task | metric | zero-shot |\n|---|---|---:|\n" in text
        assert "adapted" not in text and "change" not in text and "–" not in text
    assert (ev / "plots" / "zero_shot.png").is_file()
    assert not (ev / "plots" / "zero_shot_vs_adapted.png").exists() and not (ev / "plots" / "task_mixing.png").exists()


def test_builtin_clip_zero_shot_equals_train(tmp_path, capsys):
    """``evaluate_vl.py --tasks vqa,retrieval`` (no --adapter, no --backbone): the built-in CLIP's zero-shot scores,
    the ones a train run on the same tasks and data reports as ``zero_shot``."""
    tasks = ",".join(_small_spec(tmp_path, t, 24, 16) for t in ("vqa", "retrieval"))
    run, ev = tmp_path / "run", tmp_path / "ev"
    assert train_main(["--tasks", tasks, "--steps", "1", "--batch-size", "8", "--warmup", "0", "--workers", "0",
                       "--eval-batch-size", "16", "--out", str(run), "-q"]) == 0
    capsys.readouterr()
    assert eval_main(["--tasks", tasks, "--batch-size", "16", "--out", str(ev), "-q"]) == 0
    printed = capsys.readouterr().out
    result = _assert_same_zero_shot(run, ev)
    assert result["backbone"]["backbone"] == "builtin" and result["backbone"]["weights_dtype"] == "float32"
    assert Path(result["backbone"]["folder"]) == builtin_dir().absolute()
    _assert_zero_shot_report(ev, printed)
    assert "| retrieval | mean_recall |" in printed and "| vqa | vqa_accuracy/" in printed   # both tables
    assert "Scored: vqa 48 questions" in printed and "retrieval 16 images" in printed

    # --out holding that evaluation: refused without --overwrite (as with an adapter), replaced with it
    assert eval_main(["--tasks", tasks, "--batch-size", "16", "--out", str(ev)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert eval_main(["--tasks", tasks.split(",")[1], "--batch-size", "16", "--out", str(ev), "--overwrite",
                      "-q"]) == 0
    assert list(json.loads((ev / "eval.json").read_text())["tasks"]) == ["retrieval"]

    # a --tasks spec file inside that --out: --overwrite would delete it with the folder, so it is refused, with an
    # adapter and without (both replaced the folder, spec file and all; helper 169)
    kept = ev / "my_retrieval.toml"
    shutil.copy(tasks.split(",")[1], kept)
    for adapter in ([], ["--adapter", str(run / "adapter")]):
        assert eval_main([*adapter, "--tasks", str(kept), "--batch-size", "16", "--out", str(ev), "--overwrite"]) == 2
        assert "a task spec (--tasks)" in capsys.readouterr().err and kept.is_file()


def test_builtin_llava_zero_shot_equals_train(tmp_path, capsys):
    """``--backbone builtin-llava --tasks vqa,captioning``: the generative kinds' zero-shot rule (the base
    language model), built on the training split as train builds them: train's ``zero_shot`` scores."""
    tasks = ",".join(_small_spec(tmp_path, t, 6, 6) for t in ("vqa", "captioning"))
    run, ev = tmp_path / "run", tmp_path / "ev"
    assert train_main(["--backbone", "builtin-llava", "--tasks", tasks, "--steps", "1", "--warmup", "0",
                       "--workers", "0", "--eval-batch-size", "8", "--out", str(run), "-q"]) == 0
    capsys.readouterr()
    assert eval_main(["--backbone", "builtin-llava", "--tasks", tasks, "--batch-size", "8", "--out", str(ev),
                      "-q"]) == 0
    printed = capsys.readouterr().out
    result = _assert_same_zero_shot(run, ev)
    assert result["backbone"]["backbone"] == "builtin-llava"
    assert result["tasks"]["vqa"]["n"] == 4 and result["tasks"]["captioning"]["n"] == 4   # eval_limit
    _assert_zero_shot_report(ev, printed)
    assert "| captioning | bleu4 |" in printed and "| captioning | cider |" in printed



def test_a_merged_export_scored_without_an_adapter_gives_the_runs_adapted_scores(tmp_path):
    """A run's captioning task merged into the base (``export``), scored by ``eval --backbone hf:MERGED`` without an
    adapter: the run's adapted captioning scores, which differ from its zero-shot ones."""
    from mtl_lora_vl.cli import export_main

    spec = _small_spec(tmp_path, "captioning", 16, 8, limit=8)
    run = tmp_path / "run"
    assert train_main(["--backbone", "builtin-llava", "--tasks", spec, "--steps", "4", "--warmup", "0",
                       "--lr", "1e-2", "--workers", "0", "--eval-batch-size", "8", "--out", str(run), "-q"]) == 0
    trained = json.loads((run / "eval.json").read_text())["tasks"]["captioning"]["details"]
    assert trained["adapted"] != trained["zero_shot"]
    assert export_main(["--adapter", str(run / "adapter"), "--task", "captioning", "--out", str(tmp_path / "m")]) == 0
    assert eval_main(["--backbone", f"hf:{tmp_path / 'm'}", "--tasks", spec, "--batch-size", "8",
                      "--out", str(tmp_path / "ev"), "-q"]) == 0
    merged = json.loads((tmp_path / "ev" / "eval.json").read_text())["tasks"]["captioning"]["details"]["zero_shot"]
    assert merged == pytest.approx(trained["adapted"], abs=1e-6)


def test_refusals_name_the_fix(tmp_path, capsys):
    """No --adapter and no --tasks, no --out, an unknown task, a task the backbone cannot serve: each refused
    before any scoring, with what to give instead."""
    assert eval_main([], prog="evaluate_vl.py") == 2
    err = capsys.readouterr().err
    assert "--adapter is required" in err and "give --tasks" in err and "--out DIR" in err
    help_text = build_parser(EvalOptions, "evaluate_vl.py", "").format_help()
    assert "(required unless --tasks is given)" in re.sub(r"\s+", " ", help_text)

    assert eval_main(["--tasks", "vqa"]) == 2
    assert "--out is required without --adapter" in capsys.readouterr().err
    assert eval_main(["--tasks", "vqa", "--out", ""]) == 2   # (not the current directory)
    assert "--out '': an empty value" in capsys.readouterr().err
    # --adapter "" (an unset shell variable) with --tasks: no adapter, not '.: no mtl_lora_config.json' (helper 169)
    assert eval_main(["--adapter", "", "--tasks", "vqa"]) == 2
    assert "--out is required without --adapter" in capsys.readouterr().err
    assert eval_main(["--tasks", ",", "--out", str(tmp_path / "a")]) == 2
    assert "needs the tasks to score; give --tasks vqa,retrieval" in capsys.readouterr().err
    assert eval_main(["--tasks", "vqa,nosuch", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'nosuch'" in err and "'retrieval'" in err and "spec (.toml)" in err
    assert eval_main(["--backbone", "builtin-llava", "--tasks", "vqa,retrieval", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "task 'retrieval'" in err and "needs a contrastive text tower" in err and "--backbone builtin" in err
    assert not any((tmp_path / d).exists() for d in "abc")   # nothing written


def test_report_without_adapted_scores():
    """A result whose tasks have no adapted scores: a zero-shot column only, breakdowns and counts from the
    zero-shot scores (the tables read the adapted ones and failed on None)."""
    zs = {"vqa_accuracy": 0.5, "vqa_accuracy/count": 0.25, "n": 4, "n/count": 2}
    result = {"split": "test", "tasks": {"vqa": {
        "metric": "vqa_accuracy", "zero_shot": 0.5, "adapted": None, "change": None, "kind": "vqa", "split": "val",
        "n": 4, "metrics": ["vqa_accuracy", "per_type"], "details": {"zero_shot": zs, "adapted": None}}}}
    assert markdown_table(result) == "| task | split | metric | zero-shot |\n|---|---|---|---:|\n" \
                                     "| vqa | val | vqa_accuracy | 0.5000 |"
    assert details_table(result) == "| task | other metrics | zero-shot |\n|---|---|---:|\n" \
                                    "| vqa | vqa_accuracy/count | 0.2500 |"
    assert scored_line(result) == "Scored: vqa 4 questions (count 2)."
