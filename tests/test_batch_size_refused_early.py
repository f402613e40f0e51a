"""A --batch-size larger than all the training rows is refused before the model loads: it was refused only after
the backbone had loaded (about 7 s on the built-in LLaVA; minutes on a real model), though the rows alone decide it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mtl_lora_vl.cli import train_main
from mtl_lora_vl.multitask import setup as setup_mod
from mtl_lora_vl.tasks.spec import builtin_spec_dirs

REFUSAL = (r"--batch-size 13: larger than the training data \(12 examples over the trained tasks \['vqa'\]\), so every "
           r"batch would repeat examples; give --batch-size 12 or less")


def vqa_spec(tmp: Path) -> Path:
    """The built-in vqa spec with 4 training scenes: 12 training questions."""
    src = next(d / "vqa.toml" for d in builtin_spec_dirs() if (d / "vqa.toml").is_file())
    text = re.sub(r"^\[data\.(train|val|test)\]$", r"[data.\1]\nn = 4", src.read_text(), flags=re.M)
    path = tmp / "vqa.toml"
    path.write_text(text)
    return path


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the --batch-size refusal")


@pytest.mark.parametrize("backbone", ["builtin", "builtin-llava"])
def test_batch_larger_than_the_rows_is_refused_before_the_backbone_loads(tmp_path, monkeypatch, capsys, backbone):
    monkeypatch.setattr(setup_mod, "load_backbone", no_model)
    args = ["--tasks", str(vqa_spec(tmp_path)), "--backbone", backbone, "--steps", "2", "--workers", "0",
            "--out", str(tmp_path / "run")]
    assert train_main([*args, "--batch-size", "13"]) == 2
    err = capsys.readouterr().err
    assert re.search(REFUSAL, err), err
    assert "the model was loaded" not in err
    assert not (tmp_path / "run").exists()
    # a batch that fits gets as far as the backbone (here: the stand-in that refuses)
    with pytest.raises(AssertionError, match="the model was loaded"):
        train_main([*args, "--batch-size", "12"])


def test_an_extend_run_is_refused_before_the_adapter_loads(tmp_path, monkeypatch, capsys):
    """--extend counts its new tasks' rows (the ones it trains), before the adapter and its base model load."""
    monkeypatch.setattr(setup_mod, "load_pretrained", no_model)
    monkeypatch.setattr(setup_mod, "find_adapter_dir", no_model)
    args = ["--tasks", str(vqa_spec(tmp_path)), "--extend", str(tmp_path / "old"), "--steps", "2", "--workers", "0",
            "--out", str(tmp_path / "run"), "--batch-size", "13"]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert re.search(REFUSAL, err), err


@pytest.mark.parametrize("name", ["vqa", "retrieval", "captioning", "caption_cls", "nlvr"])
def test_a_builtin_training_split_has_a_row_a_scene_or_more(name):
    """The bound early_train_splits reads by: --batch-size at most a built-in task's scenes fits its rows, so the rows
    are read before the model only above it (a task the backbone cannot serve is refused before any row is read)."""
    from dataclasses import replace

    from mtl_lora_vl.tasks import resolve_tasks
    from mtl_lora_vl.training.loading import builtin_scenes

    spec = resolve_tasks(name)[0]
    assert builtin_scenes(spec) is not None and builtin_scenes(spec) >= 1000   # (the world's default size)
    for n in (1, 2, 3, 7):
        for seed in (0, 1, 5):
            small = replace(spec, data=replace(spec.data, splits={**spec.data.splits, "train": {"n": n}},
                                               options={**spec.data.options, "seed": seed}))
            assert builtin_scenes(small) == n
            assert len(small.load_split("train").examples) >= n


def test_a_batch_within_the_scenes_reads_no_row_before_the_model(tmp_path, monkeypatch, capsys):
    from mtl_lora_vl.tasks.spec import TaskSpec

    read = []
    monkeypatch.setattr(TaskSpec, "load_split", lambda self, *a, **k: read.append(self.name) or no_model())
    monkeypatch.setattr(setup_mod, "load_backbone", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("loaded")))
    args = ["--tasks", str(vqa_spec(tmp_path)), "--steps", "2", "--workers", "0", "--out", str(tmp_path / "run"),
            "--batch-size", "4"]   # (4 scenes: it fits whatever their rows)
    assert train_main(args) != 0
    assert "error: loaded" in capsys.readouterr().err and read == []   # the backbone came first


def test_the_default_batch_size_is_checked_once_the_backbone_gives_it(tmp_path, capsys):
    """Left out, --batch-size is the path's (64 contrastive, 16 generative): known once the backbone has loaded,
    checked then (reading it before the model compared None with a number)."""
    args = ["--tasks", str(vqa_spec(tmp_path)), "--steps", "2", "--workers", "0", "--out", str(tmp_path / "run")]
    assert train_main(args) == 2
    assert re.search(r"--batch-size 64: larger than the training data \(12 examples", capsys.readouterr().err)
