"""train_vl / evaluate_vl end to end on the built-in backbone, with small splits of the built-in world."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.cli import build_train_parser, eval_main, parse_train_args, train_main
from mtl_lora_vl.io import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from mtl_lora_vl.tasks import TaskSpec
from mtl_lora_vl.tasks.spec import builtin_spec_dirs

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                reason="built-in backbone not built (python scripts/pretrain_backbone.py)")


def small_spec(tmp: Path, name: str, n_train: int = 48, n_eval: int = 16) -> Path:
    """A copy of a built-in spec whose splits are small."""
    src = next(d / f"{name}.toml" for d in builtin_spec_dirs() if (d / f"{name}.toml").is_file())
    text = src.read_text()
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        text = re.sub(rf"^\[data\.{split}\]$", f"[data.{split}]\nn = {n}", text, flags=re.M)
    path = tmp / f"{name}.toml"
    path.write_text(text)
    return path


def small_specs(tmp: Path) -> str:
    """Small vqa and retrieval specs, as a --tasks value."""
    return ",".join(str(small_spec(tmp, n)) for n in ("vqa", "retrieval"))


def base_args(tmp: Path, out: Path, steps: int = 6) -> list[str]:
    return ["--tasks", small_specs(tmp), "--steps", str(steps), "--batch-size", "8", "--workers", "0",
            "--log-every", "2", "--save-every", "3", "--eval-batch-size", "32", "--warmup", "2", "--out", str(out)]


def adapter_tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / ADAPTER_WEIGHTS))


def test_train_adapter_files_evaluate_report(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    callers = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    assert train_main(base_args(tmp_path, run, steps=6) + ["--eval-every", "4"]) == 0
    assert random.getstate() == callers[0] and (np.random.get_state()[1] == callers[1]).all()   # left seeded before
    assert torch.equal(torch.get_rng_state(), callers[2])
    printed = capsys.readouterr().out
    assert "| vqa | vqa_accuracy |" in printed and "| retrieval | mean_recall |" in printed
    for f in ("config.json", "metrics.jsonl", "eval.json", "report.md", "checkpoint.pt",
              f"adapter/{ADAPTER_CONFIG}", f"adapter/{ADAPTER_WEIGHTS}", "adapter/heads.safetensors",
              "plots/training_curves.png", "plots/zero_shot_vs_adapted.png", "plots/task_mixing.png"):
        assert (run / f).is_file(), f
    result = json.loads((run / "eval.json").read_text())
    assert set(result["tasks"]) == {"vqa", "retrieval"}
    for r in result["tasks"].values():
        assert 0.0 <= r["zero_shot"] <= 1.0 and 0.0 <= r["adapted"] <= 1.0
        assert r["change"] == pytest.approx(r["adapted"] - r["zero_shot"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
    assert any("eval/vqa/vqa_accuracy" in r for r in rows)
    assert all(k in rows[0] for k in ("loss/vqa", "loss/retrieval", "lr", "samples_per_s"))

    # evaluate_vl on the adapter directory alone, copied elsewhere: same scores.
    import shutil

    moved = Path(shutil.copytree(run / "adapter", tmp_path / "elsewhere" / "adapter"))
    assert eval_main(["--adapter", str(moved), "--batch-size", "32", "--out", str(tmp_path / "ev")]) == 0
    again = json.loads((tmp_path / "ev" / "eval.json").read_text())
    for t in ("vqa", "retrieval"):
        assert again["tasks"][t]["adapted"] == pytest.approx(result["tasks"][t]["adapted"], abs=1e-6)
        assert again["tasks"][t]["zero_shot"] == pytest.approx(result["tasks"][t]["zero_shot"], abs=1e-6)
    assert (tmp_path / "ev" / "report.md").read_text().startswith("# Zero-shot vs adapted")
    assert eval_main(["--adapter", str(moved), "--out", str(tmp_path / "ev")]) == 2  # exists, no --overwrite
    (tmp_path / "ev" / "plots" / "stale.png").write_text("from an earlier evaluation")
    assert eval_main(["--adapter", str(moved), "--tasks", "vqa", "--batch-size", "32", "--overwrite",
                      "--out", str(tmp_path / "ev")]) == 0  # replaced whole: nothing of the old results stays
    assert not (tmp_path / "ev" / "plots" / "stale.png").exists()
    assert set(json.loads((tmp_path / "ev" / "eval.json").read_text())["tasks"]) == {"vqa"}
    capsys.readouterr()
    assert eval_main(["--adapter", str(moved), "--backbone", "builtin-llava", "--tasks", "vqa",
                      "--out", str(tmp_path / "ev2")]) == 2  # the wrong base model is what the message names
    err = capsys.readouterr().err
    assert "the adapter was made for a model of family open_clip" in err and "llava" in err and "retrieval" not in err
    import mtl_lora_vl.evaluation.evaluate as evaluate_module
    from mtl_lora_vl.io import load_pretrained

    seen = []
    monkeypatch.setattr(evaluate_module, "load_pretrained", lambda *a, **k: seen.append(k["base_dtype"]) or
                        load_pretrained(*a, **k))
    assert eval_main(["--adapter", str(moved), "--tasks", "vqa", "--base-dtype", "bf16", "--batch-size", "32",
                      "--out", str(tmp_path / "ev3")]) == 0 and seen == ["bf16"]  # autocast follows the base
    lp = load_pretrained(moved, "cpu", base_dtype="bf16")  # as evaluate_vl / --extend --base-dtype bf16 load it
    params = list(lp.backbone.model.named_parameters())
    scales = ("logit_scale", "logit_bias")   # kept fp32, as open_clip's own half precision keeps them (c81da01)
    assert {p.dtype for n, p in params if ".lora_" not in n and n not in scales} == {torch.bfloat16}
    assert {p.dtype for n, p in params if ".lora_" in n or n in scales} == {torch.float32}


def test_eval_of_an_adapter_loads_the_base_dtype_the_run_trained_on(tmp_path, monkeypatch):
    """A run trained with --base-dtype bf16 (on a CPU, where auto is fp32) was scored again by eval --adapter on
    fp32 base weights: its scores moved (retrieval 0.2333 -> 0.2350 on a tiny HF CLIP). The adapter records an
    explicit base dtype, eval's --base-dtype auto loads it, and an explicit --base-dtype still wins."""
    import mtl_lora_vl.evaluation.evaluate as evaluate_module
    from mtl_lora_vl.io import load_pretrained
    from mtl_lora_vl.precision import base_weights_dtype

    run = tmp_path / "run"
    assert train_main(base_args(tmp_path, run, steps=2) + ["--base-dtype", "bf16", "-q"]) == 0
    assert json.loads((run / "adapter" / ADAPTER_CONFIG).read_text())["base"]["base_dtype"] == "bf16"
    seen = []

    def spy(*args, **kwargs):
        loaded = load_pretrained(*args, **kwargs)
        seen.append(base_weights_dtype(loaded.backbone.model))
        return loaded

    monkeypatch.setattr(evaluate_module, "load_pretrained", spy)
    assert eval_main(["--adapter", str(run / "adapter"), "--batch-size", "32",
                      "--out", str(tmp_path / "ev"), "-q"]) == 0
    assert seen == [torch.bfloat16]
    ours, again = (json.loads((p / "eval.json").read_text())["tasks"] for p in (run, tmp_path / "ev"))
    assert {t: (r["zero_shot"], r["adapted"]) for t, r in again.items()} == \
        {t: (r["zero_shot"], r["adapted"]) for t, r in ours.items()}
    assert eval_main(["--adapter", str(run / "adapter"), "--tasks", "vqa", "--base-dtype", "fp32", "--batch-size", "32",
                      "--out", str(tmp_path / "ev2"), "-q"]) == 0
    assert seen[-1] == torch.float32
    ext = tmp_path / "ext"   # --extend loads the base as the adapter recorded it, and records it so again
    assert train_main(["--extend", str(run), "--tasks", str(small_spec(tmp_path, "caption_cls")), "--steps", "1",
                       "--batch-size", "8", "--workers", "0", "--eval-batch-size", "32", "--out", str(ext), "-q"]) == 0
    assert json.loads((ext / "adapter" / ADAPTER_CONFIG).read_text())["base"]["base_dtype"] == "bf16"
    assert json.loads((ext / "config.json").read_text())["base_dtype"] == "bf16"


def test_extend_trains_only_the_new_task(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    weights = tmp_path / "my_weights.safetensors"  # the base weights from a path of the user's own
    shutil.copy(builtin_dir() / "model.safetensors", weights)
    assert train_main(base_args(tmp_path, run, steps=3) + ["--rank", "4", "--pretrained", str(weights)]) == 0
    before = json.loads((run / "eval.json").read_text())
    cls = small_spec(tmp_path, "caption_cls")
    ext = tmp_path / "ext"
    capsys.readouterr()
    ext_args = ["--extend", str(run), "--tasks", str(cls), "--steps", "3", "--batch-size", "8",
                "--workers", "0", "--eval-batch-size", "32", "--out", str(ext)]
    assert train_main(ext_args + ["--rank", "16"]) == 2  # the adapter's shape is its own
    assert "--rank 16 (the adapter's: 4) would be ignored; drop them" in capsys.readouterr().err and not ext.exists()
    # the default value given explicitly was taken for "not given" and silently ignored
    assert train_main(ext_args + ["--rank", "8", "--method", "mtl_lora"]) == 2
    assert "--rank 8 (the adapter's: 4) would be ignored" in capsys.readouterr().err and not ext.exists()
    shaped = tmp_path / "shape.toml"   # so in a config file
    shaped.write_text('rank = 8\nalpha = 16.0\n')   # alpha is the adapter's own: not refused
    assert train_main(ext_args + ["--config", str(shaped)]) == 2
    err = capsys.readouterr().err
    assert "--rank 8 (the adapter's: 4) would be ignored" in err and "--alpha" not in err and not ext.exists()
    monkeypatch.chdir(tmp_path)   # --extend by a relative path: eval.json records where it is, not "run"
    assert train_main([*ext_args[:1], "run", *ext_args[2:]]) == 0
    assert "training" in capsys.readouterr().err  # the opening line is logged (stderr), the table printed
    assert json.loads((ext / "config.json").read_text())["rank"] == 4  # recorded as the adapter has it
    # the base model it loaded (the adapter's, not the default built-in weights) is the one it records
    base = json.loads((run / "adapter" / "mtl_lora_config.json").read_text())["base"]
    assert base["pretrained"] == str(weights)
    assert json.loads((ext / "adapter" / "mtl_lora_config.json").read_text())["base"] == base
    assert json.loads((ext / "config.json").read_text())["pretrained"] == str(weights)
    after = json.loads((ext / "eval.json").read_text())
    assert set(after["tasks"]) == {"vqa", "retrieval", "caption_cls"}
    for t in ("vqa", "retrieval"):  # the old tasks are bit-identical, so are their scores
        assert after["tasks"][t]["adapted"] == before["tasks"][t]["adapted"]
    assert after["extended_from"]["trained_adapter_values"] > 0
    assert after["extended_from"]["run"] == str(run.resolve())
    old, new = adapter_tensors(run), adapter_tensors(ext)
    for name, t in old.items():
        if name.endswith(("lora_A", "lora_B")):
            assert torch.equal(new[name], t), name
        else:  # task rows grew by one; the old rows are unchanged
            assert torch.equal(new[name][: t.shape[0]], t), name
    # The extend run's checkpoint holds what trains; the frozen rest comes from the source on --resume, which
    # mixed a retrained source's A and B with the new task's rows trained against the old ones, silently.
    assert train_main(["--resume", "ext", "--workers", "0"]) == 0
    run.rename(tmp_path / "moved")   # the source moved: --resume takes --extend in place of the gone folder
    capsys.readouterr()
    assert train_main(["--resume", "ext", "--workers", "0"]) == 2
    assert "is not there any more; give the place it moved to with --extend DIR" in capsys.readouterr().err
    assert train_main(["--resume", "ext", "--workers", "0", "--extend", "moved"]) == 0
    assert json.loads((ext / "config.json").read_text())["extend"] == str(tmp_path / "moved")
    (tmp_path / "moved").rename(run)
    assert train_main(["--resume", "ext", "--workers", "0", "--extend", "run"]) == 0
    assert train_main(base_args(tmp_path, run, steps=3) + ["--rank", "4", "--pretrained", str(weights), "--seed", "5",
                                                            "--overwrite"]) == 0
    capsys.readouterr()
    assert train_main(["--resume", "ext", "--workers", "0"]) == 2
    assert "the adapter this run extends changed since the run's checkpoint" in capsys.readouterr().err


def test_extend_reads_the_adapter_s_tasks_from_their_own_data_folders(tmp_path, capsys):
    """--extend with the new task's --data-root scored the old file-based task on the new folder's files (the
    same names, other rows): its score dropped with its adapter rows bit-identical. Each task's folder is now
    recorded in the adapter; extend and eval read the old tasks from theirs."""
    from PIL import Image

    from mtl_lora_vl.evaluation.evaluate import evaluate_adapter

    def data(folder: Path, name: str, colours: tuple[str, ...]) -> Path:
        folder.mkdir()
        for c in ("red", "blue"):
            Image.new("RGB", (16, 16), c).save(folder / f"{c}.png")
        rows = [{"image": f"{c}.png", "label": lab} for c, lab in zip(("red", "blue") * 3, colours * 3)]
        (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec = folder / f"{name}.toml"
        spec.write_text(f'name = "{name}"\nkind = "classification"\ntemplates = ["a {{}} square."]\n[data]\n'
                        'format = "jsonl"\n[data.train]\nfile = "rows.jsonl"\n[data.test]\nfile = "rows.jsonl"\n')
        return spec

    d, d2 = tmp_path / "d", tmp_path / "d2"
    color, swapped = data(d, "color", ("red", "blue")), data(d2, "color2", ("blue", "red"))
    common = ["--steps", "2", "--batch-size", "4", "--device", "cpu", "--workers", "0"]
    assert train_main(["--tasks", str(color), "--data-root", str(d), *common, "--out", str(tmp_path / "a")]) == 0
    assert train_main(["--extend", str(tmp_path / "a"), "--tasks", str(swapped), "--data-root", str(d2), *common,
                       "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / r / "eval.json").read_text())["tasks"] for r in ("a", "b"))
    assert b["color"]["adapted"] == a["color"]["adapted"] and b["color"]["zero_shot"] == a["color"]["zero_shot"]
    doc = json.loads((tmp_path / "b" / "adapter" / "mtl_lora_config.json").read_text())
    assert doc["data_roots"] == {"color": str(d), "color2": str(d2)}
    evaluate_adapter(tmp_path / "b" / "adapter", out=tmp_path / "ev", device="cpu")   # no --data-root needed
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())["tasks"]
    assert ev["color"]["adapted"] == a["color"]["adapted"] and ev["color2"]["adapted"] == b["color2"]["adapted"]
    (tmp_path / "link").symlink_to(d)   # the recorded folder by another name: not "another folder" (text compare)
    capsys.readouterr()
    from mtl_lora_vl.cli import eval_main

    assert eval_main(["--adapter", str(tmp_path / "b" / "adapter"), "--tasks", "color", "--data-root",
                      str(tmp_path / "link"), "--out", str(tmp_path / "ev_link"), "--device", "cpu"]) == 0
    assert "was trained on files under" not in capsys.readouterr().err
    linked = json.loads((tmp_path / "ev_link" / "eval.json").read_text())
    assert linked["tasks"]["color"]["data_root"] == str(tmp_path / "link") and linked["adapter"] == str(
        tmp_path / "b" / "adapter")
    assert ev["color"]["data_root"] == str(d) and ev["color2"]["data_root"] == str(d2)   # each from its own folder
    old = tmp_path / "old"   # an adapter saved before adapters recorded folders: said, and not recorded as fact
    shutil.copytree(tmp_path / "a" / "adapter", old)
    rec = json.loads((old / "mtl_lora_config.json").read_text())
    del rec["data_roots"]
    (old / "mtl_lora_config.json").write_text(json.dumps(rec))
    capsys.readouterr()
    assert train_main(["--extend", str(old), "--tasks", str(swapped), "--data-root", str(d2), *common,
                       "--skip-zero-shot", "--out", str(tmp_path / "b_old")]) == 0
    assert "the adapter does not record the folder task 'color' was trained on" in capsys.readouterr().err
    assert json.loads((tmp_path / "b_old" / "adapter" / "mtl_lora_config.json").read_text())["data_roots"] == {
        "color2": str(d2)}

    import mtl_lora_vl as mlv
    from mtl_lora_vl.backbones import load_backbone

    wrapped = mlv.MTLLoRAModel.from_pretrained(load_backbone("builtin").model, tmp_path / "b" / "adapter")
    with pytest.warns(UserWarning, match="which are not saved"):   # (heads: not given to from_pretrained)
        again = wrapped.save_pretrained(tmp_path / "again")   # a round trip keeps the folders
    assert json.loads((again / "mtl_lora_config.json").read_text())["data_roots"] == doc["data_roots"]
    no_state = Path(shutil.copytree(tmp_path / "b" / "adapter", tmp_path / "no_state"))   # saved without the
    (no_state / "tasks" / "color.state.json").unlink()          # kind's state: rebuilt from its recorded folder
    rec = json.loads((no_state / "mtl_lora_config.json").read_text())
    del rec["files"]["tasks/color.state.json"]
    (no_state / "mtl_lora_config.json").write_text(json.dumps(rec))
    assert mlv.load_pretrained(no_state).kinds["color"].class_names == ["blue", "red"]
    d.rename(tmp_path / "moved")    # the data moved: an explicit --data-root wins; --extend says what it reads
    capsys.readouterr()
    assert eval_main(["--adapter", str(tmp_path / "b" / "adapter"), "--tasks", "color", "--data-root",
                      str(tmp_path / "moved"), "--out", str(tmp_path / "ev2"), "--device", "cpu"]) == 0
    assert f"task 'color' was trained on files under {d}, which is no longer a folder; it is scored on --data-root" \
        in capsys.readouterr().err   # (it advised leaving --data-root out, which reads the folder that is gone)
    assert eval_main(["--adapter", str(tmp_path / "b" / "adapter"), "--out", str(tmp_path / "ev_gone"),
                      "--device", "cpu"]) == 2   # tasks from two folders, one gone: score that one alone elsewhere
    err = capsys.readouterr().err
    assert f"task 'color' was trained on files under {d}, which is no longer a folder; put it back, or score " \
           "it on the folder it moved to with --tasks color --data-root DIR" in err, err
    assert (json.loads((tmp_path / "ev2" / "eval.json").read_text())["tasks"]["color"]["adapted"]
            == a["color"]["adapted"])
    third = data(tmp_path / "d3", "color3", ("red", "blue"))   # (its rows read from --data-root d2)
    capsys.readouterr()
    assert train_main(["--extend", str(tmp_path / "b"), "--tasks", str(third), "--data-root", str(d2), *common,
                       "--skip-zero-shot", "--out", str(tmp_path / "c")]) == 0
    assert f"task 'color' was trained on files under {d}, which is no longer a folder; it is scored on --data-root" \
        in capsys.readouterr().err
    assert json.loads((tmp_path / "c" / "adapter" / "mtl_lora_config.json").read_text())["data_roots"] == {
        "color": str(d), "color2": str(d2), "color3": str(d2)}   # what the source recorded, not a guess
    cls = small_spec(tmp_path, "caption_cls", n_train=8, n_eval=8)   # built-in data, small splits (the full are slow)
    assert train_main(["--extend", str(tmp_path / "b"), "--tasks", str(cls), *common, "--skip-zero-shot",
                       "--out", str(tmp_path / "e")]) == 2   # no --data-root: the advice named "--data-root None"
    err = capsys.readouterr().err
    assert "which is no longer a folder; give the folder it moved to with --data-root DIR" in err
    assert "--data-root None" not in err


def test_extend_with_nothing_to_train_is_refused_at_start(tmp_path, capsys):
    """A `lora` adapter shares every tensor across tasks, and a retrieval head with a fixed temperature has no
    parameters: the run started and failed at its first backward with autograd's raw message."""
    run = tmp_path / "run"
    args = ["--tasks", str(small_spec(tmp_path, "vqa")), "--steps", "1", "--batch-size", "4", "--workers", "0",
            "--eval-batch-size", "32", "--skip-zero-shot", "--method", "lora"]
    assert train_main(args + ["--out", str(run)]) == 0
    fixed = small_spec(tmp_path, "retrieval")
    fixed.write_text(fixed.read_text().replace("learn_temperature = true", "learn_temperature = false"))
    capsys.readouterr()
    assert train_main(["--extend", str(run), "--tasks", str(fixed), "--steps", "1", "--batch-size", "4",
                       "--workers", "0", "--out", str(tmp_path / "ext")]) == 2
    assert "method 'lora' shares every adapter tensor across tasks and the new task 'retrieval' has no head " \
           "parameters, so nothing would train" in capsys.readouterr().err
    # --backbone naming another model: the base check's refusal says what --backbone is for here
    assert train_main(["--extend", str(run), "--tasks", str(fixed), "--steps", "1", "--backbone", "builtin-llava",
                       "--workers", "0", "--out", str(tmp_path / "ext2")]) == 2
    err = capsys.readouterr().err
    assert "load it onto the base model it was trained on" in err and "--extend reads the adapter's own base" in err
    upper = tmp_path / "upper.toml"   # a task named as an old one but for case: refused as --extend's, not add_task's
    upper.write_text(small_spec(tmp_path, "vqa").read_text().replace('name = "vqa"', 'name = "VQA"'))
    assert train_main(["--extend", str(run), "--tasks", str(upper), "--steps", "1", "--workers", "0",
                       "--out", str(tmp_path / "ext3")]) == 2
    assert f"--extend {run}: task 'VQA' is already in the adapter ['vqa'] (names that differ only in case" \
        in capsys.readouterr().err
    # a --data-root that no task reads (built-in new and old tasks) was taken and left unread (helper 416)
    assert train_main(["--extend", str(run), "--tasks", str(small_spec(tmp_path, "caption_cls")), "--steps", "1",
                       "--data-root", str(tmp_path), "--workers", "0", "--out", str(tmp_path / "ext4")]) == 2
    err = capsys.readouterr().err
    assert f"--data-root {tmp_path}: no task of --tasks or of the adapter --extend grows reads files (vqa, " \
           "caption_cls are built-in tasks" in err and not (tmp_path / "ext4").exists()


def test_the_peft_shaped_round_trip_keeps_what_the_adapter_recorded(tmp_path, monkeypatch):
    """from_pretrained then save_pretrained wrote no base model, no task specs and no vocabularies, so the
    saved directory no longer loaded with load_pretrained ("does not say which base model")."""
    import mtl_lora_vl as mlv
    from mtl_lora_vl.backbones import load_backbone

    run = tmp_path / "run"
    assert train_main(["--tasks", small_specs(tmp_path), "--steps", "1", "--batch-size", "4", "--workers", "0",
                       "--eval-batch-size", "32", "--skip-zero-shot", "--out", str(run)]) == 0
    src = run / "adapter"
    wrapped = mlv.MTLLoRAModel.from_pretrained(load_backbone("builtin").model, src)
    with pytest.warns(UserWarning, match=r"holds heads for \['retrieval', 'vqa'\], which are not saved"):
        out = wrapped.save_pretrained(tmp_path / "again")
    a, b = (json.loads((d / ADAPTER_CONFIG).read_text()) for d in (src, out))
    assert b["base"] == a["base"] and b["task_specs"] == a["task_specs"]
    for rel in (*a["task_specs"].values(), "tasks/vqa.state.json"):
        assert (out / rel).read_bytes() == (src / rel).read_bytes(), rel
    gone = tmp_path / "gone"   # loaded from a folder removed since: saved without those records, with a warning
    shutil.copytree(src, gone)
    temp = mlv.MTLLoRAModel.from_pretrained(load_backbone("builtin").model, gone)
    shutil.rmtree(gone)
    with pytest.warns(UserWarning, match="cannot be read any more"):
        temp.save_pretrained(tmp_path / "third")
    lp = mlv.load_pretrained(out)   # the kinds come back from the saved vocabularies (no training data read)
    assert set(lp.kinds) == {"vqa", "retrieval"} and lp.kinds["vqa"].answers == mlv.load_pretrained(src).kinds[
        "vqa"].answers
    # one task's spec given adds to the records (it replaced them: retrieval's spec was dropped, silently)
    (tmp_path / "other").mkdir()
    other = small_spec(tmp_path / "other", "vqa")
    with pytest.warns(UserWarning, match="which are not saved"):
        part = wrapped.save_pretrained(tmp_path / "part", task_specs={"vqa": other})
    c = json.loads((part / ADAPTER_CONFIG).read_text())
    assert c["task_specs"] == a["task_specs"] and (part / c["task_specs"]["vqa"]).read_text() == other.read_text()
    assert (part / "tasks/vqa.state.json").is_file()
    # loaded by a relative path, saved from another working directory: its records are still read
    monkeypatch.chdir(tmp_path)
    rel = mlv.MTLLoRAModel.from_pretrained(load_backbone("builtin").model, Path("run/adapter"))
    monkeypatch.chdir(run)
    with pytest.warns(UserWarning, match="which are not saved"):
        fourth = rel.save_pretrained(tmp_path / "fourth")
    assert json.loads((fourth / ADAPTER_CONFIG).read_text())["task_specs"] == a["task_specs"]


def _checkpoint_step(run: Path) -> int:
    try:
        return int(torch.load(run / "checkpoint.pt", weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - not written yet
        return 0


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    steps = 12   # the kill comes within a poll (0.05 s) of step 3's checkpoint: 9 steps and the final evaluation left
    straight = tmp_path / "straight"
    assert train_main(base_args(tmp_path, straight, steps=steps) + ["--skip-zero-shot"]) == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "scripts" / "train_vl.py"), *base_args(tmp_path, killed, steps=steps),
           "--skip-zero-shot"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while _checkpoint_step(killed) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; raise steps"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at = _checkpoint_step(killed)
    assert 3 <= at < steps and not (killed / "eval.json").exists()

    assert train_main(["--resume", str(killed)]) == 0
    a, b = adapter_tensors(straight), adapter_tensors(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0, msg=k)
    ea, eb = (json.loads((d / "eval.json").read_text())["tasks"] for d in (straight, killed))
    assert {t: r["adapted"] for t, r in ea.items()} == {t: r["adapted"] for t, r in eb.items()}
    la = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    assert [round(r["loss"], 5) for r in la] == [round(r["loss"], 5) for r in lb]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths_on_cpu(tmp_path, precision):
    run = tmp_path / precision
    assert train_main(base_args(tmp_path, run, steps=2) + ["--precision", precision]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert json.loads((run / "config.json").read_text())["precision"] == precision


def test_fp16_runs_say_how_many_steps_loss_scaling_skipped(tmp_path, capsys, monkeypatch):
    """NaN gradients under fp16: every step was skipped by GradScaler, and the run logged its losses and exited
    0 as if it had trained."""
    from mtl_lora_vl.tasks.retrieval import RetrievalKind

    real = RetrievalKind.loss

    def nan_gradients(self, head, bb, rows, img, txt):   # the value unchanged, its gradient NaN
        return real(self, head, bb, rows, img, txt) + 0 * torch.sqrt(img.float() - img.float().detach()).sum()

    monkeypatch.setattr(RetrievalKind, "loss", nan_gradients)
    run = tmp_path / "run"
    assert train_main(["--tasks", str(small_spec(tmp_path, "retrieval")), "--steps", "3", "--batch-size", "4",
                       "--workers", "0", "--device",
                       "cpu", "--precision", "fp16", "--skip-zero-shot", "--log-every", "1", "--warmup", "0",
                       "--out", str(run)]) == 0
    assert "fp16 loss scaling skipped 3 of the 3 steps trained" in capsys.readouterr().err
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["fp16_skipped_steps"], r["loss_scale"]) for r in rows] == [(1, 32768.0), (1, 16384.0), (1, 8192.0)]


def test_existing_run_dir_is_never_overwritten(tmp_path, capsys, monkeypatch):
    """--overwrite replaces only a run directory, and only once the new run has trained a step: it deleted any
    folder, and deleted the old run before checks that could still fail (the optimizer's, a first step's)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    assert train_main(base_args(tmp_path, mine, steps=1)) == 2
    err = capsys.readouterr().err   # (it offered --overwrite and --resume, which both refuse a folder of your own)
    assert "is not a run directory (no training run's config.json)" in err and "choose another --out" in err
    assert "pass --overwrite" not in err and f"--resume {mine}" not in err
    assert train_main(base_args(tmp_path, mine, steps=1) + ["--overwrite"]) == 2
    assert "is not a run directory (no config.json)" in capsys.readouterr().err
    assert (mine / "precious.txt").read_text() == "keep me"

    run = tmp_path / "run"
    assert train_main(base_args(tmp_path, run, steps=1) + ["--skip-zero-shot"]) == 0

    def files(d: Path) -> dict:
        return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}

    before = files(run)
    assert train_main(base_args(tmp_path, run, steps=1)) == 2   # a run directory: both are offered
    assert f"pass --overwrite to replace it, --resume {run} to continue it" in capsys.readouterr().err
    bad = base_args(tmp_path, run, steps=1) + ["--overwrite"]
    bad[1] += ",no_such_task"
    assert train_main(bad) == 2  # fails at start-up: the old run is still there
    assert "no_such_task" in capsys.readouterr().err and files(run) == before
    # fails after the directory was claimed, in the first step (a dtype clash, an OOM): the old run comes back
    import mtl_lora_vl.training.train as train_module

    def fails(*a, **k):
        assert (tmp_path / ".run.replaced").is_dir()   # the old run waits beside the new one meanwhile
        raise RuntimeError("out of memory (test)")

    with monkeypatch.context() as mp:
        mp.setattr(train_module, "forward_backward", fails)
        assert train_main(base_args(tmp_path, run, steps=1) + ["--overwrite"]) == 2
    assert "out of memory (test)" in capsys.readouterr().err
    assert files(run) == before and not (tmp_path / ".run.replaced").exists()
    shutil.copy(tmp_path / "vqa.toml", run / "vqa.toml")   # an input inside --out
    inside = base_args(tmp_path, run, steps=1) + ["--overwrite"]
    inside[1] = str(run / "vqa.toml")
    assert train_main(inside) == 2
    assert "would replace the folder that holds --tasks" in capsys.readouterr().err
    (run / "vqa.toml").unlink()
    assert train_main(base_args(tmp_path, run, steps=1) + ["--overwrite", "--skip-zero-shot"]) == 0
    assert files(run) != before and not (tmp_path / ".run.replaced").exists()
    (tmp_path / "afile").write_text("")
    assert train_main(base_args(tmp_path, tmp_path / "afile", steps=1)) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_resume_refuses_what_it_would_ignore_and_bad_config(tmp_path, capsys, monkeypatch):
    from mtl_lora_vl.options import TrainOptions
    from mtl_lora_vl.rundir import RunDirError, choose_run_dir, resumed_options

    monkeypatch.chdir(tmp_path)
    small_spec(tmp_path, "vqa")
    run = tmp_path / "run"
    args = base_args(tmp_path, run, steps=1)
    args[1] = "vqa.toml"  # a spec path relative to the working directory
    assert train_main(args) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["tasks"] == str(tmp_path / "vqa.toml") and saved["out"] == str(run)  # absolute: resumable anywhere
    capsys.readouterr()
    assert train_main(["--resume", str(run), "--steps", "5", "--rank", "16", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "--steps 5 (the run has 1)" in err and "--rank 16 (the run has 8)" in err and "--workers" not in err
    same = resumed_options(run, TrainOptions(resume=str(run), steps=1, rank=8, workers=3))  # equal values pass
    assert same.steps == 1 and same.workers == 3 and same.tasks == saved["tasks"]
    # From the command line: a flag set back to its default, --out elsewhere and --overwrite are refused too;
    # a relative spec path naming the run's own spec is its value.
    default_log = TrainOptions().log_every
    assert train_main(["--resume", str(run), "--log-every", str(default_log),
                       "--out", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err
    assert f"--log-every {default_log} (the run has 2)" in err and "--out" in err
    assert not (tmp_path / "elsewhere").exists()
    # a spec file edited since the checkpoint: the rest of the run would train on other settings, silently
    spec = tmp_path / "vqa.toml"
    spec.write_text("# a comment alone changes nothing\n" + spec.read_text())
    assert train_main(["--resume", str(run)]) == 0
    # a finished run repeats only its final evaluation, and says so (it said "resumed at step 1/1") (helper 139)
    assert "the run finished (step 1/1, eval.json written); there is nothing to train" in capsys.readouterr().err
    spec.write_text(re.sub(r"(?m)^loss_weight = .*$", "loss_weight = 5.0", spec.read_text()))
    import mtl_lora_vl.multitask.setup as setup_mod

    def no_backbone(*a, **k):
        raise AssertionError("the backbone loaded before the spec check")

    with monkeypatch.context() as m:
        m.setattr(setup_mod, "load_backbone", no_backbone)
        assert train_main(["--resume", str(run)]) == 2
    assert f"the task spec file(s) {spec} changed since the run's checkpoint" in capsys.readouterr().err
    spec.write_text(re.sub(r"(?m)^loss_weight = 5.0$", "loss_weight = 1.0", spec.read_text()))
    # config.json edited by hand since the checkpoint: an accumulation or warm-up resumed silently on other
    # settings (helper 108); refused before anything loads, naming the option; the relocatable folders are not
    for edit in ({"accumulate": 2}, {"lr": 0.5, "warmup": 9}):
        (run / "config.json").write_text(json.dumps({**saved, **edit}))
        with monkeypatch.context() as m:
            m.setattr(setup_mod, "load_backbone", no_backbone)
            assert train_main(["--resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert "config.json was edited since the run's checkpoint" in err
        assert all(f"{k} {v!r} (the checkpoint's: {saved[k]!r})" in err for k, v in edit.items()), err
    (run / "config.json").write_text(json.dumps({**saved, "workers": 1}))   # what a resume may take anew
    assert train_main(["--resume", str(run)]) == 0
    (run / "config.json").write_text(json.dumps(saved))
    explicit = {"resume", "tasks", "steps", "out"}
    same = resumed_options(run, TrainOptions(resume=str(run), tasks="vqa.toml", steps=1, out=str(run)), explicit)
    assert same.tasks == saved["tasks"]
    with pytest.raises(RunDirError, match="--overwrite True"):
        resumed_options(run, TrainOptions(resume=str(run), overwrite=True), {"resume", "overwrite"})
    from mtl_lora_vl.cli import parse_train_args

    again = parse_train_args(["--config", str(run / "config.json"), "--out", str(tmp_path / "again")])  # a run's
    assert again.steps == 1 and again.tasks == saved["tasks"]                                           # own config
    (run / "config.json").write_text(json.dumps({**saved, "overwrite": True}))
    again = parse_train_args(["--config", str(run / "config.json")])   # never the old run's --out, --overwrite
    assert again.out is None and not again.overwrite and again.resume is None
    # a run started from a --config file records that file's name: still its own config (it was refused)
    (run / "config.json").write_text(json.dumps({**saved, "config": str(tmp_path / "mine.json")}))
    assert parse_train_args(["--config", str(run / "config.json")]).steps == 1
    # an --extend run records the adapter's shape, which --extend takes by itself (it was refused as ignored)
    (run / "config.json").write_text(json.dumps({**saved, "extend": str(tmp_path / "x"), "rank": 4}))
    assert parse_train_args(["--config", str(run / "config.json")]).rank == TrainOptions().rank
    (run / "config.json").write_text(json.dumps({**saved, "old_option": 1}))
    with pytest.raises(RunDirError, match=r"config.json holds options this version does not know \(\['old_option'\]\)"):
        resumed_options(run, TrainOptions(resume=str(run)))
    (run / "config.json").write_text(json.dumps({**saved, "tasks": 5}))   # hand-edited: 'int' has no 'split'
    with pytest.raises(RunDirError, match=r"holds a value of the wrong type \(--tasks: expected a string, got 5\)"):
        resumed_options(run, TrainOptions(resume=str(run)))
    (run / "config.json").write_text('{"tasks": ')
    assert train_main(["--resume", str(run)]) == 2
    assert f"cannot read {run / 'config.json'}" in capsys.readouterr().err
    with pytest.raises(RunDirError, match="holds the adapter that --extend"):
        choose_run_dir(TrainOptions(extend=str(run / "adapter"), out=str(run), overwrite=True))


def test_config_json_makes_spec_paths_absolute_but_keeps_task_names(tmp_path, monkeypatch):
    """A built-in task name stays a name even when a folder of that name is in the working directory."""
    from mtl_lora_vl.options import TrainOptions
    from mtl_lora_vl.rundir import write_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "vqa").mkdir()
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "mine.toml").write_text("")
    write_config(tmp_path, TrainOptions(tasks="vqa,specs/mine.toml", data_root="specs"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["tasks"] == f"vqa,{tmp_path / 'specs' / 'mine.toml'}" and saved["data_root"] == str(tmp_path / "specs")


def test_a_run_dir_taken_while_starting_is_refused_not_shared(tmp_path):
    """Two runs that chose the same (default) directory: the one that claims it second stops, and the
    first one's files stay."""
    from mtl_lora_vl.distributed import DistInfo
    from mtl_lora_vl.options import TrainOptions
    from mtl_lora_vl.rundir import RunDirError, choose_run_dir, claim_run_dir

    opts = TrainOptions(out=str(tmp_path / "run"))
    run = choose_run_dir(opts)
    other = choose_run_dir(opts)
    claim_run_dir(other, opts, DistInfo())
    (other / "config.json").write_text("{}")  # the other run has started writing
    with pytest.raises(RunDirError, match="another run created or wrote to it"):
        claim_run_dir(run, opts, DistInfo())
    assert (other / "config.json").read_text() == "{}"
    claim_run_dir(run, TrainOptions(out=str(run), overwrite=True), DistInfo())  # asked for: replaced
    assert not any(run.iterdir())


def test_a_default_run_name_taken_moves_on_to_the_next_free_one(tmp_path, monkeypatch):
    """Without --out, two runs started in the same second each get a directory; --overwrite never empties
    another run's default-named directory."""
    from mtl_lora_vl.distributed import DistInfo
    from mtl_lora_vl.options import TrainOptions
    from mtl_lora_vl.rundir import choose_run_dir, claim_run_dir

    monkeypatch.chdir(tmp_path)
    opts = TrainOptions(tasks="vqa,retrieval")
    name = choose_run_dir(opts)
    assert name.parent == Path("runs") and name.name.startswith("vqa+retrieval-mtl_lora-")
    first = claim_run_dir(name, opts, DistInfo())
    (first / "config.json").write_text("{}")
    second = claim_run_dir(name, opts, DistInfo())
    third = claim_run_dir(name, TrainOptions(tasks="vqa,retrieval", overwrite=True), DistInfo())
    assert (first, second, third) == (name, name.with_name(name.name + "-2"), name.with_name(name.name + "-3"))
    assert (first / "config.json").read_text() == "{}" and not any(second.iterdir())


def test_a_task_without_val_split_is_not_scored_on_test_as_val(tmp_path, caplog):
    """Validation scores choose checkpoints and settings: a task whose spec has no val split was scored on its
    test split under the val name (--eval-every, --eval-val, eval --split val)."""
    from PIL import Image

    from mtl_lora_vl.evaluation.evaluate import evaluate_adapted, evaluate_setup
    from mtl_lora_vl.multitask import build_setup
    from mtl_lora_vl.options import TrainOptions

    for colour in ("red", "blue"):
        Image.new("RGB", (16, 16), colour).save(tmp_path / f"{colour}.png")
    rows = "".join(json.dumps({"image": f"{c}.png", "label": c}) + "\n" for c in ("red", "blue") * 3)
    (tmp_path / "rows.jsonl").write_text(rows)
    no_val = tmp_path / "colours.toml"  # a file-based spec with train and test only
    no_val.write_text('name = "colours"\nkind = "classification"\ntemplates = ["a {} square."]\n[data]\n'
                      'format = "jsonl"\n[data.train]\nfile = "rows.jsonl"\n[data.test]\nfile = "rows.jsonl"\n')
    cls = small_spec(tmp_path, "caption_cls", n_train=8, n_eval=6)
    setup = build_setup(TrainOptions(tasks=f"{no_val},{cls}", rank=2, data_root=str(tmp_path)), torch.device("cpu"))
    assert "val" not in setup.specs[0].data.splits
    kw = dict(data_root=str(tmp_path), device="cpu", dtype=torch.float32, batch_size=16)
    assert set(evaluate_adapted(setup, split="val", **kw)) == {"caption_cls"}
    assert "task colours has no val split: not scored on val" in caplog.text
    assert set(evaluate_setup(setup, split="val", **kw)["tasks"]) == {"caption_cls"}
    assert evaluate_setup(setup, split="test", **kw)["tasks"]["colours"]["split"] == "test"
    only = build_setup(TrainOptions(tasks=str(no_val), rank=2, data_root=str(tmp_path)), torch.device("cpu"))
    with pytest.raises(ValueError, match="no task has a val split to score"):
        evaluate_setup(only, split="val", **kw)


def test_a_task_scored_on_val_for_test_says_so_in_the_table(tmp_path, caplog):
    """A task without a test split is scored on val when test is asked for: the table had no way to say it
    (only eval.json did), so its figures read as test figures beside the other tasks'."""
    from PIL import Image

    from mtl_lora_vl.evaluation.evaluate import evaluate_setup
    from mtl_lora_vl.evaluation.report import markdown_table
    from mtl_lora_vl.multitask import build_setup
    from mtl_lora_vl.options import TrainOptions

    for colour in ("red", "blue"):
        Image.new("RGB", (16, 16), colour).save(tmp_path / f"{colour}.png")
    rows = "".join(json.dumps({"image": f"{c}.png", "label": c}) + "\n" for c in ("red", "blue") * 3)
    (tmp_path / "rows.jsonl").write_text(rows)
    no_test = tmp_path / "colours.toml"
    no_test.write_text('name = "colours"\nkind = "classification"\ntemplates = ["a {} square."]\n[data]\n'
                       'format = "jsonl"\n[data.train]\nfile = "rows.jsonl"\n[data.val]\nfile = "rows.jsonl"\n')
    cls = small_spec(tmp_path, "caption_cls", n_train=8, n_eval=6)
    kw = dict(data_root=str(tmp_path), device="cpu", dtype=torch.float32, batch_size=16)
    both = build_setup(TrainOptions(tasks=f"{no_test},{cls}", rank=2, data_root=str(tmp_path)), torch.device("cpu"))
    result = evaluate_setup(both, split="test", **kw)
    assert "task colours has no test split: scored on val instead" in caplog.text
    table = markdown_table(result).splitlines()
    assert table[0].startswith("| task | split | metric |")
    assert table[2].startswith("| colours | val | top1 |") and table[3].startswith("| caption_cls | test |")
    same = evaluate_setup(both, split="val", **kw)   # every task on the split asked for: no split column
    from mtl_lora_vl.evaluation.evaluate import read_eval_splits
    checked = []
    kind = both.kinds["colours"]
    kind.check_eval_split = lambda split, spec=None: checked.append(split)
    read_eval_splits(both, ["test", "val"], str(tmp_path))   # test falls back to val: one check (a warning once)
    assert len(checked) == 1
    assert markdown_table(same).splitlines()[0] == "| task | metric | zero-shot | adapted | change |"
    tiny = {"tasks": {"t": {"metric": "m", "zero_shot": 0.1, "adapted": 0.1 - 1e-14, "change": -1e-14}}}
    assert markdown_table(tiny).splitlines()[2] == "| t | m | 0.1000 | 0.1000 | +0.0000 |"   # was -0.0000


def test_the_spec_s_first_metric_heads_the_evaluation(tmp_path):
    """A spec listing metrics = ["mean_per_class", "top1"] was headed by top1 in eval.json, the table and the
    benchmark's records (they read the result's "metric")."""
    from mtl_lora_vl.evaluation.evaluate import evaluate_setup
    from mtl_lora_vl.evaluation.report import markdown_table
    from mtl_lora_vl.multitask import build_setup
    from mtl_lora_vl.options import TrainOptions

    spec = small_spec(tmp_path, "caption_cls", n_train=8, n_eval=6)
    spec.write_text(spec.read_text().replace('metrics = ["top1", "top5", "mean_per_class"]',
                                             'metrics = ["mean_per_class", "top1"]'))
    setup = build_setup(TrainOptions(tasks=str(spec), rank=2), torch.device("cpu"))
    r = evaluate_setup(setup, split="val", data_root=None, device="cpu", dtype=torch.float32,
                       batch_size=16)["tasks"]["caption_cls"]
    assert r["metric"] == "mean_per_class"
    assert r["adapted"] == r["details"]["adapted"]["mean_per_class"]
    assert r["zero_shot"] == r["details"]["zero_shot"]["mean_per_class"]
    row = markdown_table({"tasks": {"caption_cls": r}, "split": "val"}).splitlines()[2]
    assert row.startswith("| caption_cls | mean_per_class |")


def test_zero_shot_scores_are_the_base_model_s_with_the_adapters_attached_and_trained(tmp_path):
    """The zero-shot column must be the base model's: with trained (here random, non-zero) adapters attached it
    equals scoring a fresh backbone that has none; the adapted column differs. Scoring zero-shot through the
    routed adapters passed every test."""
    from mtl_lora_vl.backbones import load_backbone
    from mtl_lora_vl.evaluation.evaluate import evaluate_setup
    from mtl_lora_vl.multitask import build_setup
    from mtl_lora_vl.options import TrainOptions

    spec = small_spec(tmp_path, "caption_cls", n_train=8, n_eval=24)
    setup = build_setup(TrainOptions(tasks=str(spec), rank=4), torch.device("cpu"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in setup.model.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    kw = dict(device="cpu", dtype=torch.float32, batch_size=16)
    r = evaluate_setup(setup, split="val", data_root=None, **kw)["tasks"]["caption_cls"]
    kind = setup.kinds["caption_cls"]
    base = kind.evaluate(load_backbone("builtin", None, torch.device("cpu")), None,
                         setup.split_data(setup.specs[0], "val", None), num_workers=0, **kw)
    assert r["details"]["zero_shot"] == base
    assert r["details"]["adapted"] != base


def test_same_folder_sees_through_links_and_dot_dot(tmp_path):
    from mtl_lora_vl.data.common import same_folder

    (tmp_path / "d").mkdir()
    (tmp_path / "e").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    assert same_folder(tmp_path / "d", tmp_path / "link")
    assert same_folder(str(tmp_path / "d"), str(tmp_path / "e" / ".." / "d"))
    assert not same_folder(tmp_path / "d", tmp_path / "e")
    assert same_folder(tmp_path / "gone", tmp_path / "e" / ".." / "gone") and not same_folder(tmp_path / "gone", None)
    assert same_folder(None, None)


def test_a_split_s_rows_digest_follows_its_rows_not_their_folder():
    from mtl_lora_vl.data.records import Example, Split

    def digest(*rows, names=None):
        return Split([Example(*r[:2], text=r[2], label=r[3]) for r in rows], class_names=names).rows_sha256

    one = ("/data/a.png", "1", "a red square", 0)
    assert digest(one) == digest(("/moved/a.png", "1", "a red square", 0))      # the data moved: the same rows
    for other in (("/data/b.png", "1", "a red square", 0), ("/data/a.png", "2", "a red square", 0),
                  ("/data/a.png", "1", "a blue square", 0), ("/data/a.png", "1", "a red square", 1)):
        assert digest(other) != digest(one), other
    two = ("/data/b.png", "2", "a blue square", 1)
    assert digest(one, two) != digest(two, one)                                   # the sampler indexes the order
    assert digest(one, names=["red", "blue"]) != digest(one, names=["blue", "red"])
    vqa = Split([Example("/data/a.png", "1", text="how many dogs?", answers=("2",), question_type="number",
                         meta={"filter_type": "how many"})])
    before = vqa.rows_sha256
    vqa.examples[0].meta["filter_type"] = "how"   # it picks the candidate answers a question may get
    assert vqa.rows_sha256 != before


def _colour_rows(folder: Path, spec: Path) -> tuple[list[dict], Path]:
    """Two 16-px images and six labelled rows (rows.jsonl) in ``folder``, and a classification spec reading them."""
    from PIL import Image

    for colour in ("red", "blue"):
        Image.new("RGB", (16, 16), colour).save(folder / f"{colour}.png")
    rows = [{"image": f"{c}.png", "label": c} for c in ("red", "blue") * 3]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec.write_text('name = "colours"\nkind = "classification"\ntemplates = ["a {} square."]\n[data]\n'
                    'format = "jsonl"\n[data.train]\nfile = "rows.jsonl"\n[data.val]\nfile = "rows.jsonl"\n')
    return rows, spec


def test_resume_refuses_training_rows_that_changed_since_the_checkpoint(tmp_path, capsys):
    """Data edited between a stop and --resume, row count unchanged: the sampler's saved state indexes the old
    rows, and the run went on silently on the new ones."""
    rows, spec = _colour_rows(tmp_path, tmp_path / "colours.toml")
    data = tmp_path / "rows.jsonl"
    run = tmp_path / "run"
    assert train_main(["--tasks", str(spec), "--data-root", str(tmp_path), "--steps", "1", "--batch-size", "2",
                       "--device", "cpu", "--workers", "0", "--out", str(run)]) == 0
    assert train_main(["--resume", str(run)]) == 0            # the same rows: it resumes
    spec.rename(tmp_path / "moved.toml")   # the advice was "give an existing .toml file", which --resume refuses
    capsys.readouterr()
    assert train_main(["--resume", str(run)]) == 2
    assert "A resumed run reads its spec files where it recorded them: put the file back" in capsys.readouterr().err
    (tmp_path / "moved.toml").rename(spec)
    rows[0]["label"], rows[1]["label"] = "blue", "red"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert train_main(["--resume", str(run)]) == 2
    assert "the training rows of task 'colours' changed since the run's checkpoint" in capsys.readouterr().err
    # A finished run whose checkpoint was deleted (a common clean-up): the advice was --overwrite, which
    # replaces the finished run.
    (run / "checkpoint.pt").unlink()
    assert train_main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "the run finished: its adapter is in" in err and "--overwrite" not in err


def test_resume_takes_a_new_data_root_in_place_of_a_moved_one(tmp_path, capsys):
    """The data folder moved between a stop and --resume: the error said to pass --data-root, which --resume
    refused as an option it would ignore. It is taken when the recorded folder is gone (the rows' digest still
    refuses other data) and config.json records it for the next resume."""
    data = tmp_path / "data"
    data.mkdir()
    rows, spec = _colour_rows(data, tmp_path / "colours.toml")
    run = tmp_path / "run"
    assert train_main(["--tasks", str(spec), "--data-root", str(data), "--steps", "1", "--batch-size", "2",
                       "--device", "cpu", "--workers", "0", "--out", str(run)]) == 0
    other = tmp_path / "other"
    shutil.copytree(data, other)
    capsys.readouterr()
    assert train_main(["--resume", str(run), "--data-root", str(other)]) == 2   # the recorded folder is there
    assert "taken only in place of a recorded folder that is gone" in capsys.readouterr().err
    moved = tmp_path / "moved"
    data.rename(moved)
    assert train_main(["--resume", str(run)]) == 2
    assert "pass --data-root DIR" in capsys.readouterr().err
    assert train_main(["--resume", str(run), "--data-root", str(tmp_path / "typo")]) == 2   # was "would be ignored"
    assert f"--data-root {tmp_path / 'typo'}: no such folder (the run's {data} is gone too); give the folder it " \
           "moved to" in capsys.readouterr().err
    rows[0]["label"], rows[1]["label"] = "blue", "red"
    (other / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert train_main(["--resume", str(run), "--data-root", str(other)]) == 2   # other rows: refused
    assert "the training rows of task 'colours' changed" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["data_root"] == str(data)
    assert train_main(["--resume", str(run), "--data-root", str(moved)]) == 0
    assert json.loads((run / "config.json").read_text())["data_root"] == str(moved.resolve())
    assert train_main(["--resume", str(run)]) == 0   # the next resume finds it without the flag


def _strip_checkpoint(run: Path, *keys: str) -> None:
    """``run``'s checkpoint without ``keys``: what a version from before they were recorded wrote."""
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k not in keys}, run / "checkpoint.pt")


def test_resume_refuses_a_moved_folder_it_cannot_check_and_records_one_only_once_restored(tmp_path, capsys,
                                                                                          monkeypatch):
    """A folder given in place of a gone one was taken unchecked when the checkpoint had no digest of it, and
    config.json recorded the move before the checkpoint was restored: a move that then failed left the run
    pointing at the wrong folder (an --extend run at another adapter), and it could not be resumed as it was."""
    data = tmp_path / "data"
    data.mkdir()
    _, spec = _colour_rows(data, tmp_path / "colours.toml")
    run = tmp_path / "run"
    common = ["--steps", "1", "--batch-size", "2", "--device", "cpu", "--workers", "0", "--skip-zero-shot"]
    assert train_main(["--tasks", str(spec), "--data-root", str(data), *common, "--out", str(run)]) == 0
    ext = tmp_path / "ext"
    cls = small_spec(tmp_path, "caption_cls", n_train=8, n_eval=8)   # built-in data, small splits (the full are slow)
    assert train_main(["--extend", str(run), "--tasks", str(cls), *common, "--out", str(ext)]) == 0
    config, ext_config = (r / "config.json" for r in (run, ext))
    before, ext_before = config.read_text(), ext_config.read_text()
    moved = tmp_path / "moved"
    data.rename(moved)
    import mtl_lora_vl.training.train as train_mod

    def broken(*args, **kwargs):
        raise RuntimeError("restore failed")

    with monkeypatch.context() as m:
        m.setattr(train_mod, "restore_training_state", broken)   # a move that passed its checks, then failed
        assert train_main(["--resume", str(run), "--data-root", str(moved)]) != 0
    assert "restore failed" in capsys.readouterr().err and config.read_text() == before
    _strip_checkpoint(run, "data_sha256")
    capsys.readouterr()
    assert train_main(["--resume", str(run), "--data-root", str(moved)]) == 2
    err = capsys.readouterr().err
    assert "cannot show that --data-root" in err and "put the recorded folder(s) back" in err
    assert config.read_text() == before
    moved.rename(data)
    assert train_main(["--resume", str(run)]) == 0            # the recorded folder back: it resumes unchecked
    assert _but_resolved(config) == _but_resolved(before)   # (its default --workers differs: resolved says so)
    # The source adapter of an --extend run moved, and another adapter was given in its place
    shutil.move(str(run), str(tmp_path / "run_moved"))
    other = tmp_path / "other"
    assert train_main(["--tasks", str(spec), "--data-root", str(data), *common, "--rank", "4",
                       "--out", str(other)]) == 0
    _strip_checkpoint(ext, "source_sha256")
    capsys.readouterr()
    assert train_main(["--resume", str(ext), "--extend", str(other)]) == 2
    assert f"cannot show that --extend {other}" in capsys.readouterr().err
    assert ext_config.read_text() == ext_before
    assert train_main(["--resume", str(ext), "--extend", str(tmp_path / "run_moved")]) == 2   # the same: unchecked
    shutil.move(str(tmp_path / "run_moved"), str(run))
    assert train_main(["--resume", str(ext)]) == 0
    assert _but_resolved(ext_config) == _but_resolved(ext_before)


def _but_resolved(config: Path | str) -> dict:
    """A run's config.json (a path, or its text) without the ``resolved`` list a resume may extend."""
    doc = json.loads(config.read_text() if isinstance(config, Path) else config)
    return {k: v for k, v in doc.items() if k != "resolved"}


def test_resume_of_an_extend_run_refuses_to_score_an_old_task_whose_folder_is_gone(tmp_path, capsys):
    """An --extend run's old task reads its adapter's recorded folder. Resumed after that folder moved, the run
    advised --data-root (which --resume refuses) or, with a file-based new task, scored the old task on the new
    task's folder (same file names, other rows: its top-1 went 1.0 -> 0.0 in the rewritten eval.json)."""
    d, d2 = tmp_path / "d", tmp_path / "d2"
    d.mkdir()
    d2.mkdir()
    _, spec = _colour_rows(d, tmp_path / "colours.toml")
    _, spec2 = _colour_rows(d2, tmp_path / "colours2.toml")
    spec2.write_text(spec2.read_text().replace('"colours"', '"colours2"'))
    rows = [{"image": f"{c}.png", "label": lab} for c, lab in (("red", "blue"), ("blue", "red")) * 3]
    (d2 / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))   # the same names, other rows
    common = ["--steps", "1", "--batch-size", "2", "--device", "cpu", "--workers", "0", "--skip-zero-shot"]
    src = tmp_path / "src"
    assert train_main(["--tasks", str(spec), "--data-root", str(d), *common, "--out", str(src)]) == 0
    builtin_new, file_new = tmp_path / "ext", tmp_path / "ext2"
    cls = small_spec(tmp_path, "caption_cls", n_train=8, n_eval=8)   # built-in data, small splits (the full are slow)
    assert train_main(["--extend", str(src), "--tasks", str(cls), *common, "--out", str(builtin_new)]) == 0
    assert train_main(["--extend", str(src), "--tasks", str(spec2), "--data-root", str(d2), *common,
                       "--out", str(file_new)]) == 0
    scores = json.loads((file_new / "eval.json").read_text())["tasks"]["colours"]["adapted"]
    moved = tmp_path / "moved"
    d.rename(moved)
    capsys.readouterr()
    for run in (builtin_new, file_new):
        assert train_main(["--resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert "the run scores the extended adapter's task 'colours' on the files under" in err, err
        assert "under \"data_roots\" in the extended adapter's mtl_lora_config.json" in err
        assert "with --data-root DIR" not in err and "it is scored on --data-root" not in err
    assert json.loads((file_new / "eval.json").read_text())["tasks"]["colours"]["adapted"] == scores
    config = src / "adapter" / "mtl_lora_config.json"   # the advised relocation: the source's record
    doc = json.loads(config.read_text())
    doc["data_roots"]["colours"] = str(moved)
    config.write_text(json.dumps(doc))
    for run in (builtin_new, file_new):
        assert train_main(["--resume", str(run)]) == 0
    assert json.loads((file_new / "eval.json").read_text())["tasks"]["colours"]["adapted"] == scores


def test_resume_says_to_put_moved_base_weights_back(tmp_path, capsys):
    """The run's --pretrained file moved: the error advised giving a weights file, which --resume refuses."""
    from mtl_lora_vl.backbones.builtin import builtin_files

    weights = tmp_path / "weights.safetensors"
    shutil.copy(builtin_files()[2], weights)
    run = tmp_path / "run"
    cls = small_spec(tmp_path, "caption_cls", n_train=8, n_eval=8)   # (small: the built-in splits are slow)
    assert train_main(["--tasks", str(cls), "--pretrained", str(weights), "--steps", "1", "--batch-size", "2",
                       "--device", "cpu", "--workers", "0", "--skip-zero-shot", "--out", str(run)]) == 0
    weights.rename(tmp_path / "moved.safetensors")
    capsys.readouterr()
    assert train_main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"config.json names the base weights {weights}, which are not there any more" in err
    assert "put the file back there (unchanged)" in err and "give the path of a weights file" not in err
    (tmp_path / "moved.safetensors").rename(weights)
    assert train_main(["--resume", str(run)]) == 0


def test_eval_scores_a_trained_task_on_the_data_of_another_spec_file(tmp_path, caplog, monkeypatch):
    """eval --tasks took only the adapter's task names: an adapter could not be scored on data added later."""
    from PIL import Image

    from mtl_lora_vl.evaluation.evaluate import evaluate_adapter

    for colour in ("red", "blue"):
        Image.new("RGB", (16, 16), colour).save(tmp_path / f"{colour}.png")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"image": f"{c}.png", "label": c}) + "\n"
                                                 for c in ("red", "blue") * 3))
    (tmp_path / "later.jsonl").write_text("".join(json.dumps({"image": "red.png", "label": "red"}) + "\n"
                                                  for _ in range(5)))
    head = 'name = "colours"\nkind = "classification"\ntemplates = ["a {} square."]\n[data]\nformat = "jsonl"\n'
    spec = tmp_path / "colours.toml"
    spec.write_text(head + '[data.train]\nfile = "rows.jsonl"\n[data.test]\nfile = "rows.jsonl"\n')
    run = tmp_path / "run"
    assert train_main(["--tasks", str(spec), "--data-root", str(tmp_path), "--steps", "1", "--batch-size", "2",
                       "--device", "cpu", "--workers", "0", "--out", str(run)]) == 0
    later = tmp_path / "later.toml"   # new test data only: its [data.train] table was demanded, never read (helper 121)
    later.write_text('metrics = ["mean_per_class"]\n' + head + '[data.test]\nfile = "later.jsonl"\n')
    evaluate_adapter(run / "adapter", tasks=str(later), data_root=str(tmp_path), out=tmp_path / "ev", device="cpu")
    r = json.loads((tmp_path / "ev" / "eval.json").read_text())["tasks"]["colours"]
    assert r["n"] == 5 and r["metric"] == "mean_per_class" and r["data_spec"] == str(later.resolve())
    assert "\n\nScored: colours 5 images.\n" in (tmp_path / "ev" / "report.md").read_text()   # was in eval.json only
    evaluate_adapter(run / "adapter", tasks="colours", data_root=str(tmp_path), out=tmp_path / "ev2", device="cpu")
    r = json.loads((tmp_path / "ev2" / "eval.json").read_text())["tasks"]["colours"]
    assert r["n"] == 6 and "data_spec" not in r
    later.write_text(later.read_text().replace('templates = ["a {} square."]', 'templates = ["a {} box."]'))
    evaluate_adapter(run / "adapter", tasks=str(later), data_root=str(tmp_path), out=tmp_path / "ev3", device="cpu")
    assert "its templates differ from the adapter's" in caplog.text
    other = tmp_path / "other.toml"
    other.write_text(head.replace('"colours"', '"shapes"') + '[data.train]\nfile = "rows.jsonl"\n'
                     '[data.test]\nfile = "rows.jsonl"\n')
    with pytest.raises(ValueError, match="the spec's task 'shapes' is not a task of the adapter"):
        evaluate_adapter(run / "adapter", tasks=str(other), data_root=str(tmp_path), out=tmp_path / "x", device="cpu")
    other.write_text(head.replace('"classification"', '"retrieval"').replace('templates = ["a {} square."]\n', '')
                     + '[data.train]\nfile = "rows.jsonl"\n[data.test]\nfile = "rows.jsonl"\n')
    with pytest.raises(ValueError, match="trained it as 'classification'; give a classification spec"):
        evaluate_adapter(run / "adapter", tasks=str(other), data_root=str(tmp_path), out=tmp_path / "x", device="cpu")
    with pytest.raises(ValueError, match="'nope' is not a task of the adapter"):
        evaluate_adapter(run / "adapter", tasks="nope", data_root=str(tmp_path), out=tmp_path / "x", device="cpu")
    # The kinds' checks of the data to score run in eval too (they ran in training only): a class never trained
    (tmp_path / "green.jsonl").write_text(json.dumps({"image": "red.png", "label": "green"}) + "\n")
    green = tmp_path / "green.toml"
    green.write_text(later.read_text().replace('file = "later.jsonl"', 'file = "green.jsonl"'))
    import mtl_lora_vl.evaluation.evaluate as evaluate_mod

    def no_scoring(*a, **k):
        raise AssertionError("scored before the data was checked")

    with monkeypatch.context() as m, pytest.raises(ValueError, match="task 'colours'.*green"):
        m.setattr(evaluate_mod, "_score", no_scoring)
        evaluate_adapter(run / "adapter", tasks=str(green), data_root=str(tmp_path), out=tmp_path / "x", device="cpu")
    # An adapter saved without the task's head: the clear message for a spec file too (was a bare KeyError)
    headless = tmp_path / "headless"
    shutil.copytree(run / "adapter", headless)
    rec = json.loads((headless / "mtl_lora_config.json").read_text())
    rec["heads"] = {}
    (headless / "mtl_lora_config.json").write_text(json.dumps(rec))
    for tasks in ("colours", str(later)):
        with pytest.raises(ValueError, match=r"no saved task spec or head for \[?'colours'"):
            evaluate_adapter(headless, tasks=tasks, data_root=str(tmp_path), out=tmp_path / "x", device="cpu")


def test_clear_errors(tmp_path, capsys):
    assert train_main(["--tasks", "no_such_task", "--out", str(tmp_path / "a")]) == 2
    assert "no_such_task" in capsys.readouterr().err
    assert train_main(["--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert train_main(["--resume", str(tmp_path / "gone")]) == 2   # review 182: called "not a run directory"
    assert "gone: no such folder" in capsys.readouterr().err
    assert train_main(["--backbone", "open_clip:ViT-B-32", "--out", str(tmp_path / "b")]) == 2
    assert "--pretrained" in capsys.readouterr().err
    assert train_main(["--batch-size", "0", "--out", str(tmp_path / "c")]) == 2
    assert "--batch-size: must be >= 1" in capsys.readouterr().err
    assert train_main(["--targets", "{image: [1]}", "--out", str(tmp_path / "d")]) == 2
    assert "--targets: not valid JSON" in capsys.readouterr().err
    assert train_main(["--eval-split", "tset", "--out", str(tmp_path / "e")]) == 2  # was scored on val, silently
    assert "tset" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_non_finite_losses_skip_then_stop(tmp_path, monkeypatch, capsys):
    from mtl_lora_vl.tasks.retrieval import RetrievalKind

    monkeypatch.setattr(RetrievalKind, "loss", lambda self, *a, **k: torch.tensor(float("nan"), requires_grad=True))
    code = train_main(base_args(tmp_path, tmp_path / "nan", steps=5) + ["--max-bad-steps", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "[mtl-lora-vl] warning: step 1: non-finite loss or gradients, step skipped (1 in a row)" in err
    assert "[mtl-lora-vl] error: 2 non-finite steps in a row" in err


def test_a_precision_the_half_precision_base_cannot_run_is_refused_at_start(tmp_path, capsys):
    """open_clip does not cast its inputs: --precision fp32 with --base-dtype bf16 failed at the first step with
    torch's "Input type (torch.FloatTensor) and weight type (CPUBFloat16Type) should be the same"."""
    out = tmp_path / "run"
    assert train_main(base_args(tmp_path, out, steps=1) + ["--precision", "fp32", "--base-dtype", "bf16"]) == 2
    assert "--precision fp32 with bf16 base weights (--base-dtype): this model does not cast" in capsys.readouterr().err
    assert not out.exists()


def test_a_missing_optional_package_is_one_line(tmp_path, monkeypatch, capsys):
    """The hf_datasets reader's ImportError (with its pip command) came out as a traceback, exit status 1."""
    spec = tmp_path / "hf.toml"
    spec.write_text('kind = "vqa"\n[data]\nformat = "hf_datasets"\n[data.train]\npath = "x"\n[data.val]\npath = "x"\n')
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert train_main(["--tasks", str(spec), "--steps", "1", "--data-root", str(tmp_path),
                       "--out", str(tmp_path / "run")]) == 2
    assert "needs the optional package `datasets`" in capsys.readouterr().err


def test_a_failed_run_stops_its_loader_workers(tmp_path, monkeypatch):
    """Persistent workers ignore SIGTERM; after a failure the exception's traceback kept the loader alive, and
    the process waited for its workers forever at exit (a torchrun job hung with it)."""
    import multiprocessing

    from mtl_lora_vl.tasks.retrieval import RetrievalKind

    monkeypatch.setattr(RetrievalKind, "loss", lambda self, *a, **k: torch.tensor(float("nan"), requires_grad=True))
    assert train_main(base_args(tmp_path, tmp_path / "nan", steps=5) + ["--max-bad-steps", "2", "--workers", "1"]) == 2
    assert multiprocessing.active_children() == []


def test_the_bad_step_streak_survives_a_resume(tmp_path, monkeypatch, capsys):
    """--max-bad-steps counts skipped steps in a row across a resume: the counter was not in the checkpoint,
    so a run resumed after two bad steps stopped two steps later than the uninterrupted one."""
    from mtl_lora_vl.tasks.retrieval import RetrievalKind

    monkeypatch.setattr(RetrievalKind, "loss", lambda self, *a, **k: torch.tensor(float("nan"), requires_grad=True))
    run = tmp_path / "nan"
    args = base_args(tmp_path, run, steps=8) + ["--max-bad-steps", "3", "--save-every", "2"]
    assert train_main(args) == 2
    assert "3 non-finite steps in a row at step 3" in capsys.readouterr().err
    assert train_main(["--resume", str(run)]) == 2   # from the checkpoint of step 2, two bad steps in
    assert "3 non-finite steps in a row at step 3" in capsys.readouterr().err


def test_a_warmup_as_long_as_the_run_is_warned_about(tmp_path, capsys):
    assert train_main(base_args(tmp_path, tmp_path / "run", steps=2) + ["--skip-zero-shot"]) == 0
    assert "--warmup 2 is not shorter than the run's 2 steps" in capsys.readouterr().err


def test_the_opening_line_names_the_run_directory(tmp_path, capsys, monkeypatch):
    """Without --out a run picks runs/TASKS-METHOD-STAMP, and its adapter is loaded or scored from there: the
    opening line names the folder (nothing the run printed said where its files went)."""
    monkeypatch.chdir(tmp_path)
    args = base_args(tmp_path, tmp_path / "unused", steps=2)
    assert train_main(args[:args.index("--out")] + ["--skip-zero-shot"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    err = capsys.readouterr().err
    assert f"; run directory {Path('runs') / run.name}\n" in err
    # and its last line says where the adapter and the report went
    assert err.rstrip().endswith(f"wrote the adapter to {Path('runs') / run.name / 'adapter'}, and eval.json, "
                                 f"report.md and plots/ to {Path('runs') / run.name}"), err[-400:]


def test_a_second_ctrl_c_exits_130(tmp_path, monkeypatch, capsys):
    import mtl_lora_vl.training.train as train_mod

    calls = []
    real = train_mod.forward_backward

    def interrupted(*a, **k):   # what the signal handler raises on a second Ctrl-C, inside step 2
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "forward_backward", interrupted)
    assert train_main(base_args(tmp_path, tmp_path / "run", steps=4)) == 130   # was 0: `train && eval` went on
    assert "interrupted during step 2, not saved" in capsys.readouterr().err


def test_the_logged_rate_is_the_one_the_step_trained_at(tmp_path):
    """metrics.jsonl's lr under step s is the rate step s used: with warm-up 2 the first step trains at half the
    peak (it logged the peak, and the last step logged 0)."""
    from mtl_lora_vl.training.schedule import cosine_with_warmup

    run = tmp_path / "run"
    assert train_main(base_args(tmp_path, run, steps=4) + ["--log-every", "1", "--lr", "0.002"]) == 0
    rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    factor = cosine_with_warmup(2, 4)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["lr"] for r in rows] == pytest.approx([0.002 * factor(s) for s in range(4)])
    assert rows[0]["lr"] == pytest.approx(0.001) and rows[-1]["lr"] > 0


def test_skipped_steps_still_log(tmp_path, monkeypatch):
    """A step skipped for a non-finite loss still reaches its log row, evaluation and periodic checkpoint (it
    went straight to the next step: a skipped last step dropped the final row)."""
    from mtl_lora_vl.tasks.retrieval import RetrievalKind

    monkeypatch.setattr(RetrievalKind, "loss", lambda self, *a, **k: torch.tensor(float("nan"), requires_grad=True))
    run = tmp_path / "nan"
    assert train_main(base_args(tmp_path, run, steps=4) + ["--log-every", "1", "--max-bad-steps", "9",
                                                           "--save-every", "3", "--skip-zero-shot"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "lr" in r] == [1, 2, 3, 4] and not any("loss" in r for r in rows)


def test_config_file_sets_options_and_flags_win(tmp_path, capsys):
    cfg = tmp_path / "opts.json"
    cfg.write_text(json.dumps({"rank": 4, "n-up": 2, "steps": 7, "method": "lora"}))
    opts = parse_train_args(["--config", str(cfg), "--steps", "9"])
    assert (opts.rank, opts.n_up, opts.steps, opts.method) == (4, 2, 9, "lora")
    toml = tmp_path / "opts.toml"
    toml.write_text('temperature = 0.8\nbatch_mode = "homogeneous"\n[targets]\nimage = ["attn$"]\n')
    opts = parse_train_args(["--config", str(toml)])
    assert opts.temperature == 0.8 and opts.batch_mode == "homogeneous"
    assert json.loads(opts.targets) == {"image": ["attn$"]}  # a table, as the README writes targets
    for text, says in (('{"seed": null}', "seed = null is not allowed; seed takes"),   # was a TypeError at start
                       ("out = 2024-01-05\n", "out = \"2024-01-05\" is not allowed")):   # a TOML date: a TypeError
        bad = tmp_path / ("n.json" if text.startswith("{") else "d.toml")
        bad.write_text(text)
        with pytest.raises(SystemExit):
            parse_train_args(["--config", str(bad)])
        assert says in capsys.readouterr().err
    bom = tmp_path / "bom.toml"   # UTF-8 with a byte order mark (Windows editors): was "Invalid statement"
    bom.write_bytes(b"\xef\xbb\xbf" + b"rank = 2\n")
    assert parse_train_args(["--config", str(bom)]).rank == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rnak": 4}))
    with pytest.raises(SystemExit):
        parse_train_args(["--config", str(bad)])
    assert f"--config {bad}: unknown option 'rnak'" in capsys.readouterr().err


def test_help_lists_the_fixed_flags():
    text = build_train_parser().format_help()
    for flag in ("--tasks", "--backbone", "--pretrained", "--data-root", "--method", "--rank", "--alpha", "--n-up",
                 "--temperature", "--steps", "--batch-size", "--lr", "--precision", "--device", "--workers",
                 "--batch-mode", "--seed", "--out", "--resume", "--overwrite", "--save-every", "--eval-every",
                 "--config", "--extend", "--compile", "--no-compile", "--grad-checkpointing",
                 "-v", "-q", "--log-level"):
        assert flag in text, flag
    assert build_train_parser(prog="mtl-lora-vl train").format_usage().startswith("usage: mtl-lora-vl train")


def test_replaced_images_are_counted_in_metrics(tmp_path, monkeypatch, capsys):
    """Rows whose image cannot be decoded are replaced (a warning) and counted per task in metrics.jsonl;
    a task without bad images gets no key."""
    from mtl_lora_vl.data.fallback import ImageFallback
    from mtl_lora_vl.data.images import ImageError

    decode = ImageFallback._decode

    def broken(self, index):   # a quarter of vqa's images, by image (evaluation leaves theirs out, and runs again)
        if self.task == "vqa" and zlib.crc32(str(self.examples[index].image_id).encode()) % 4 == 0:
            raise ImageError(f"example {index}: cannot be decoded (test)")
        return decode(self, index)

    monkeypatch.setattr(ImageFallback, "_decode", broken)
    run = tmp_path / "bad"
    assert train_main(base_args(tmp_path, run, steps=6)) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    counts = [r.get("replaced_images/vqa", 0) for r in rows]
    assert counts[-1] > 0 and counts == sorted(counts), counts
    assert not any("replaced_images/retrieval" in r for r in rows)
    assert "its rows are replaced by other rows of the task" in capsys.readouterr().err

    # Stopped after step 3 and resumed: the counts go on from the checkpoint's (they restarted at 0)
    import rng_kind

    import mtl_lora_vl.training.train as train_module

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as mp:
        mp.setattr(train_module, "forward_backward", rng_kind.sigterm_in_step(3))
        assert train_main(base_args(tmp_path, stopped, steps=6)) == 143
    assert train_main(["--resume", str(stopped), "--workers", "2"]) == 0   # counted as consumed, not as prefetched
    again = [json.loads(x) for x in (stopped / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r.get("replaced_images/vqa", 0) for r in again] == counts


def test_a_bad_evaluation_split_stops_the_run_before_it_trains(tmp_path, capsys, monkeypatch):
    """Evaluation splits were first read after training: a missing val/test file (or a bad option in it) was
    reported at the end of the run -- hours later on real data. They are read once, at start-up, and kept."""
    from PIL import Image

    root = tmp_path / "data"
    root.mkdir()
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (16, 16), colour).save(root / f"{i}.png")
    (root / "train.jsonl").write_text("\n".join(json.dumps({"image": f"{i % 2}.png", "label": ("red", "blue")[i % 2]})
                                                for i in range(8)))
    spec = tmp_path / "colours.toml"
    spec.write_text('kind = "classification"\n[data]\nformat = "jsonl"\n[data.train]\nfile = "train.jsonl"\n'
                    '[data.test]\nfile = "test.jsonl"\n')
    out = tmp_path / "run"
    args = ["--tasks", str(spec), "--data-root", str(root), "--steps", "2", "--batch-size", "4", "--workers", "0",
            "--eval-batch-size", "8", "--out", str(out)]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert "test.jsonl" in err and "train:" not in err and not out.exists()   # no step, no run directory
    # read once per run: the final evaluation takes the split read at start-up
    (root / "test.jsonl").write_text((root / "train.jsonl").read_text())
    reads = []
    real = TaskSpec.load_split
    monkeypatch.setattr(TaskSpec, "load_split",
                        lambda self, split, root=None: reads.append(split) or real(self, split, root))
    assert train_main(args + ["--skip-zero-shot"]) == 0
    assert sorted(reads) == ["test", "train"]


def test_an_epochs_run_records_the_steps_it_trained(tmp_path):
    """config.json recorded the --steps default (400) for a run that trained ceil(epochs x rows / batch) steps."""
    run = tmp_path / "run"
    args = base_args(tmp_path, run) + ["--epochs", "0.1", "--skip-zero-shot", "--eval-split", "val"]
    assert train_main(args) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((run / "config.json").read_text())["steps"] == steps[-1] < 400   # 400: the --steps default


def test_run_directory_names_links_and_missing_paths(tmp_path, capsys, monkeypatch):
    """A default run name built from whole spec paths passed the file system's 255 bytes (it failed after the
    set-up); --overwrite through a symlink moved the link aside and blocked the next --overwrite; a missing
    adapter folder was "not an adapter directory"; Ctrl-C during the final evaluation exited 130 without a word."""
    from mtl_lora_vl.io.layout import AdapterFileError, adapter_layout
    from mtl_lora_vl.options import TrainOptions
    from mtl_lora_vl.rundir import RunDirError, choose_run_dir

    deep = "/".join(["a-rather-long-folder-name"] * 6)
    name = choose_run_dir(TrainOptions(tasks=f"{deep}/vqa.toml,{deep}/retrieval.toml,{deep}/caption_cls.toml,vqa")).name
    assert name.startswith("vqa+retrieval+caption_cls+vqa-mtl_lora-") and len(name.encode()) < 255
    long = choose_run_dir(TrainOptions(tasks=",".join(f"task_number_{i}" for i in range(40)))).name
    assert len(long.encode()) < 200 and re.search(r"-[0-9a-f]{8}-mtl_lora-", long)
    target = tmp_path / "real"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(RunDirError, match=r"is a symbolic link .*give its target"):
        choose_run_dir(TrainOptions(out=str(tmp_path / "link"), overwrite=True))
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")   # was "another run created or wrote to it" at the claim
    with pytest.raises(RunDirError, match=r"gone: is a symbolic link to .*nowhere, which does not exist"):
        choose_run_dir(TrainOptions(out=str(tmp_path / "gone")))
    with pytest.raises(AdapterFileError, match="does not exist"):
        adapter_layout(tmp_path / "gone")

    import mtl_lora_vl.training.train as train_mod

    def interrupted(run):
        (run.dir / "adapter").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "finish", interrupted)
    out = tmp_path / "run"
    assert train_main(base_args(tmp_path, out, steps=1)) == 130
    assert f"interrupted during the final evaluation; the adapter is saved in {out / 'adapter'}" in \
        capsys.readouterr().err


def test_a_spec_edited_while_the_run_trains_is_not_recorded_as_what_it_trained_on(tmp_path, monkeypatch):
    """The checkpoint re-read every spec file at each save: an edit made while the run trained became its
    record, and a resume then accepted the edited spec."""
    import mtl_lora_vl.training.train as train_mod
    from mtl_lora_vl.training.checkpoint import load_checkpoint

    spec = small_spec(tmp_path, "vqa")
    real = train_mod.build_loader
    before = {}

    original = spec.read_text()

    def edit_then_load(run):
        before.update(run.setup.spec_sha256)
        spec.write_text(re.sub(r"(?m)^loss_weight = .*$", "loss_weight = 5.0", original) + "\n[broken")
        return real(run)

    monkeypatch.setattr(train_mod, "build_loader", edit_then_load)
    run = tmp_path / "run"
    args = base_args(tmp_path, run, steps=3)
    args[1] = str(spec)
    assert train_main(args + ["--skip-zero-shot"]) == 0
    assert load_checkpoint(run)["spec_sha256"] == before and before["vqa"]
    # the adapter saves the spec the run trained on: it copied the file as edited (and an invalid one failed the save)
    assert (run / "adapter" / "tasks" / "vqa.toml").read_text() == original


def test_a_batch_too_small_for_the_tasks_is_named_at_start(tmp_path, caplog):
    """--batch-size 2 with three tasks: a mixed batch holds two of them, and retrieval gets < 1 row a batch,
    whose contrastive loss (no negatives) is 0 -- it trained nothing, without a word."""
    import dataclasses
    import logging

    from mtl_lora_vl.distributed import DistInfo, cleanup
    from mtl_lora_vl.training.loading import build_loader, warn_small_batches
    from mtl_lora_vl.training.train import start

    tasks = ",".join(str(small_spec(tmp_path, n)) for n in ("vqa", "retrieval", "caption_cls"))
    for batch, warned in (("2", True), ("8", False)):
        opts = parse_train_args(["--tasks", tasks, "--steps", "1", "--batch-size", batch, "--workers", "0",
                                 "--device", "cpu", "--out", str(tmp_path / f"run{batch}")])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
            run = start(opts)
            loader = build_loader(run)
            loader.close()
            cleanup(run.info)
        text = caplog.text
        assert ("--batch-size 2 is smaller than the 3 tasks" in text) == warned, text
        assert bool(re.search(r"task retrieval gets 0\.\d+ rows a batch on average; its loss needs 2", text)) == warned
        assert "task vqa gets" not in text
    # under DDP retrieval's loss sees every rank's rows: 4 ranks at batch 2 give it enough negatives
    for world, warned in ((1, True), (4, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mtl_lora_vl"):
            warn_small_batches(dataclasses.replace(run, opts=dataclasses.replace(run.opts, batch_size=2),
                                                   info=DistInfo(rank=0, world_size=world)), loader)
        assert ("task retrieval gets" in caplog.text) == warned and "--batch-size 2 is smaller" in caplog.text


def test_evaluation_data_that_cannot_be_scored_is_refused_before_training(tmp_path, capsys):
    """A val question without answers (or a val class training never saw) failed only after the last step,
    and again on --resume; the checks now run when the evaluation splits are read, at start-up."""
    import json as _json

    from PIL import Image

    root = tmp_path / "data"
    root.mkdir()
    Image.new("RGB", (16, 16), "red").save(root / "a.png")
    rows = [{"image": "a.png", "question": "what color is it", "answers": ["red"]}] * 4
    (root / "train.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    (root / "val.jsonl").write_text(_json.dumps({"image": "a.png", "question": "what color", "answers": []}) + "\n")
    spec = tmp_path / "myvqa.toml"
    spec.write_text('kind = "vqa"\n[data]\nformat = "jsonl"\n[data.train]\nfile = "train.jsonl"\n'
                    '[data.val]\nfile = "val.jsonl"\n[data.test]\nfile = "val.jsonl"\n')
    code = train_main(["--tasks", str(spec), "--data-root", str(root), "--steps", "2", "--batch-size", "2",
                       "--device", "cpu", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "task 'myvqa': 1 evaluation questions have no answers" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()   # refused before the run directory was made


def test_eval_refuses_a_spec_file_whose_metrics_the_adapter_does_not_compute(tmp_path, monkeypatch):
    """A spec file's metrics were checked against its own options.ks, but the adapter's options score the task:
    eval scored both passes and then died with a bare KeyError ('error: i2t_r2')."""
    import mtl_lora_vl.evaluation.evaluate as evaluate_mod
    from mtl_lora_vl.evaluation.evaluate import evaluate_adapter

    run = tmp_path / "run"
    assert train_main(["--tasks", str(small_spec(tmp_path, "retrieval", 8, 8)), "--steps", "1", "--batch-size", "4",
                       "--device", "cpu", "--workers", "0", "--skip-zero-shot", "--out", str(run)]) == 0
    spec = tmp_path / "r2.toml"
    spec.write_text((REPO / "tasks" / "retrieval.toml").read_text()
                    .replace('metrics = ["mean_recall", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"]',
                             'metrics = ["i2t_r2"]')
                    .replace("ks = [1, 5, 10]", "ks = [1, 2]"))

    def no_scoring(*a, **k):
        raise AssertionError("scored before the spec was checked")

    monkeypatch.setattr(evaluate_mod, "_score", no_scoring)
    with pytest.raises(ValueError, match=r"lists \['i2t_r2'\], which the adapter's task 'retrieval' does not compute"):
        evaluate_adapter(run / "adapter", tasks=str(spec), out=tmp_path / "x", device="cpu")
    # a spec that lists no metrics took its own options' (i2t_r2 ...) and was refused for metrics it never wrote
    # (review 200): it is scored on the adapter's, its options said to be the adapter's
    unlisted = tmp_path / "unlisted.toml"
    unlisted.write_text("\n".join(line for line in spec.read_text().splitlines() if not line.startswith("metrics")))
    with monkeypatch.context() as m, pytest.raises(AssertionError, match="scored before"):
        m.setattr(evaluate_mod, "_score", no_scoring)   # (checked, then the scoring begins)
        evaluate_adapter(run / "adapter", tasks=str(unlisted), out=tmp_path / "x", device="cpu")
    def no_load(*a, **k):
        raise AssertionError("loaded the base model before refusing '--tasks ,'")

    with monkeypatch.context() as m, pytest.raises(ValueError, match=r"--tasks ',' names no task; give some of the "
                                                                     r"adapter's tasks \['retrieval'\]"):
        m.setattr(evaluate_mod, "load_pretrained", no_load)
        evaluate_adapter(run / "adapter", tasks=",", out=tmp_path / "x", device="cpu")
    with monkeypatch.context() as m, pytest.raises(ValueError, match=r"--tasks '' names no task"):   # was: all tasks
        m.setattr(evaluate_mod, "load_pretrained", no_load)
        evaluate_adapter(run / "adapter", tasks="", out=tmp_path / "x", device="cpu")
    with pytest.raises(ValueError, match=r"gone.toml: spec file not found; .* adapter's tasks \['retrieval'\]"):
        evaluate_adapter(run / "adapter", tasks=str(tmp_path / "gone.toml"), out=tmp_path / "x", device="cpu")


def test_extend_checks_an_explicit_backbone_builtin_like_any_other(tmp_path, capsys):
    """--backbone builtin is the option's default, so --extend took it for 'not given' and silently extended a
    builtin-llava adapter on its own base (helper 108); given explicitly, it is checked against the adapter's."""
    run = tmp_path / "run"
    assert train_main(["--backbone", "builtin-llava", "--tasks", str(small_spec(tmp_path, "vqa")), "--steps", "1",
                       "--batch-size", "4", "--workers", "0", "--eval-batch-size", "16", "--skip-zero-shot",
                       "--out", str(run)]) == 0
    capsys.readouterr()
    ext = tmp_path / "ext"
    assert train_main(["--extend", str(run), "--backbone", "builtin",
                       "--tasks", str(small_spec(tmp_path, "captioning")), "--steps", "1", "--workers", "0",
                       "--out", str(ext)]) == 2
    err = capsys.readouterr().err
    assert "--extend reads the adapter's own base" in err and not ext.exists()


def test_a_resume_in_another_precision_says_so(tmp_path, monkeypatch, capsys):
    """--device is a resume's own and --precision auto follows the device: a run trained in bf16 on a GPU and
    resumed on a CPU (or the reverse) went on in another precision without a word (helper 108)."""
    import mtl_lora_vl.training.train as train_mod

    real, calls = train_mod.forward_backward, []

    def stopped_in_step_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt   # the last periodic checkpoint (step 2) is kept
        return real(*a, **k)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(train_mod, "forward_backward", stopped_in_step_3)
        assert train_main(base_args(tmp_path, run, steps=4) + ["--save-every", "2", "--skip-zero-shot"]) == 130
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["amp_dtype"] == "torch.float32"
    torch.save({**state, "amp_dtype": "torch.bfloat16"}, run / "checkpoint.pt")   # as a GPU's auto would have
    capsys.readouterr()
    assert train_main(["--resume", str(run)]) == 0
    assert "the run trained in bfloat16 up to step 2 and continues in float32 on cpu" in capsys.readouterr().err


def test_eval_val_with_eval_split_val_scores_val_once(tmp_path, monkeypatch):
    """--eval-split val --eval-val scored each task's val split twice with the same model (the end's adapted pass,
    then --eval-val's); eval.json's 'val' is now the adapted scores already taken."""
    from mtl_lora_vl.evaluation import evaluate

    calls = []
    score = evaluate._score

    def counted(setup, name, data, *, adapted, **kw):
        calls.append((name, adapted))
        return score(setup, name, data, adapted=adapted, **kw)

    monkeypatch.setattr(evaluate, "_score", counted)
    run = tmp_path / "run"
    assert train_main(base_args(tmp_path, run, steps=2) + ["--eval-split", "val", "--eval-val"]) == 0
    assert sorted(calls) == [("retrieval", False), ("retrieval", True), ("vqa", False), ("vqa", True)]
    result = json.loads((run / "eval.json").read_text())
    assert result["val"] == {n: t["details"]["adapted"] for n, t in result["tasks"].items()}


def test_batch_larger_than_the_training_data_is_refused(tmp_path, capsys):
    """--batch-size 100000 on a few thousand examples was accepted and ran out of memory (every batch repeats rows)."""
    from mtl_lora_vl.tasks.spec import load_spec

    args = base_args(tmp_path, tmp_path / "run", steps=1)
    specs = [small_spec(tmp_path, t, n_train=8, n_eval=8) for t in ("vqa", "retrieval")]   # (small: fast to train)
    args[args.index("--tasks") + 1] = ",".join(map(str, specs))
    n = sum(len(load_spec(s).load_split("train", None).examples) for s in specs)
    args[args.index("--batch-size") + 1] = str(n + 1)
    assert train_main(args) == 2
    assert re.search(rf"--batch-size {n + 1}: larger than the training data \({n} examples over the trained tasks "
                     rf"\['vqa', 'retrieval'\]\).*--batch-size {n} or less \(--accumulate or more processes: a step "
                     r"repeats them too\)", capsys.readouterr().err)   # (it advised --accumulate, which warns)
    args[args.index("--batch-size") + 1] = str(n)
    args[args.index("--out") + 1] = str(tmp_path / "run2")
    assert train_main(args + ["--skip-zero-shot"]) == 0


def test_a_batch_larger_than_a_tasks_data_is_warned_about(tmp_path, capsys):
    """A task with fewer training examples than it gets rows a batch repeats examples in every batch; it went
    unsaid (only a batch larger than all the data is refused)."""
    from mtl_lora_vl.tasks.spec import load_spec

    tiny = small_spec(tmp_path, "retrieval", n_train=2)
    n = len(load_spec(tiny).load_split("train", None).examples)
    args = ["--tasks", f"{small_spec(tmp_path, 'vqa')},{tiny}", "--steps", "1", "--batch-size", str(n + 1),
            "--batch-mode", "homogeneous", "--workers", "0", "--skip-zero-shot", "--eval-batch-size", "32",
            "--out", str(tmp_path / "run")]
    assert train_main(args) == 0
    err = capsys.readouterr().err
    assert f"task retrieval has {n} training examples and gets {n + 1} rows a step" in err
    assert "task vqa has" not in err


def test_homogeneous_accumulated_steps_train_one_task_each(tmp_path):
    """--batch-mode homogeneous --accumulate 4: each optimizer step's four micro-batches hold one task, in turn
    under round robin (review 182: every step held both)."""
    tasks = f"{small_spec(tmp_path, 'vqa')},{small_spec(tmp_path, 'retrieval')}"
    run = tmp_path / "run"
    assert train_main(["--tasks", tasks, "--steps", "4", "--batch-size", "8", "--accumulate", "4",
                       "--batch-mode", "homogeneous", "--sampling", "round_robin", "--workers", "0",
                       "--log-every", "1", "--warmup", "0", "--skip-zero-shot", "--eval-batch-size", "32",
                       "--out", str(run), "-q"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    per_step = [sorted(k for k in r if k.startswith("loss/")) for r in rows if "loss" in r]
    assert per_step == [["loss/vqa"], ["loss/retrieval"]] * 2
