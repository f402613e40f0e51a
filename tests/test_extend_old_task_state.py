"""--extend rebuilds an old file-based task saved without its state (``tasks/<t>.state.json``) from the folder the
adapter records for it, the folder it is scored on, not from the new tasks' --data-root; ``eval --data-root`` scores
such a task on that folder, its state still rebuilt from the recorded one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.attach import attach
from mtl_lora_vl.backbones import builtin_dir, load_backbone
from mtl_lora_vl.cli import train_main
from mtl_lora_vl.config import MTLLoRAConfig
from mtl_lora_vl.evaluation.evaluate import evaluate_adapter
from mtl_lora_vl.multitask.setup import extend_setup
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.tasks import build_kind, load_spec
from mtl_lora_vl.tasks.spec import SpecError
from mtl_lora_vl.training.checkpoint import CheckpointError, check_inputs_unchanged

pytestmark = [pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                 reason="built-in backbone not built (python scripts/pretrain_backbone.py)"),
              pytest.mark.filterwarnings("ignore::UserWarning")]   # (test rows = train rows: said, and meant here)


def folder(root: Path, classes: tuple[str, str], answers: tuple[str, str]) -> Path:
    """Images, a classification split (rows.jsonl) and a VQA split (qa.jsonl) under the same names in each folder."""
    root.mkdir()
    for c in ("red", "blue"):
        Image.new("RGB", (16, 16), c).save(root / f"{c}.png")
    rows = [{"image": f"{c}.png", "label": lab} for c, lab in zip(("red", "blue"), classes)] * 2
    qa = [{"image": f"{c}.png", "question": "what colour?", "answers": [a]} for c, a in zip(("red", "blue"), answers)]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa * 2))
    return root


def spec(where: Path, name: str, kind: str, file: str) -> Path:
    path = where / f"{name}.toml"
    path.write_text(f'name = "{name}"\nkind = "{kind}"\ntemplates = ["a {{}} square."]\n[data]\nformat = "jsonl"\n'
                    f'[data.train]\nfile = "{file}"\n[data.test]\nfile = "{file}"\n')
    return path


def stateless_adapter(tmp_path: Path, d: Path) -> tuple[Path, dict]:
    """An adapter of 'color' (classification) and 'ask' (VQA) built on d's training rows (untrained), saved as older
    adapters were: without their state (class names, answer list); and the kinds it was built with."""
    specs = {"color": load_spec(spec(tmp_path, "color", "classification", "rows.jsonl")),
             "ask": load_spec(spec(tmp_path, "ask", "vqa", "qa.jsonl"))}
    bb = load_backbone("builtin")
    kinds = {t: build_kind(s, s.load_split("train", d), bb) for t, s in specs.items()}
    heads = {t: k.build_head(bb) for t, k in kinds.items()}
    attach(bb.model, MTLLoRAConfig(tasks=list(specs), r=2))
    adapter = mlv.save_adapter(bb.model, tmp_path / "adapter", heads=heads, task_specs=specs,
                               base={"backbone": "builtin"}, data_roots={t: d for t in specs})   # no kinds: no state
    assert not list((adapter / "tasks").glob("*.state.json"))
    return adapter, kinds


def test_extend_rebuilds_an_old_task_without_state_from_its_own_folder(tmp_path):
    """Repro: classes blue/red and answers red/blue trained under d; the adapter saved without their state;
    --extend --data-root d2 (green/yellow, left/right under the same file names) rebuilt 'color' as green/yellow
    and 'ask' with d2's answers -- silently, as the counts match -- while it scored them on d's rows."""
    d = folder(tmp_path / "d", ("red", "blue"), ("red", "blue"))
    d2 = folder(tmp_path / "d2", ("green", "yellow"), ("left", "right"))
    adapter, kinds = stateless_adapter(tmp_path, d)
    new = spec(d2, "shade", "classification", "rows.jsonl")
    setup = extend_setup(TrainOptions(extend=str(adapter), tasks=str(new), data_root=str(d2)), torch.device("cpu"))
    assert setup.kinds["color"].class_names == kinds["color"].class_names == ["blue", "red"]
    assert setup.kinds["ask"].answers == kinds["ask"].answers and set(kinds["ask"].answers) == {"red", "blue"}
    assert setup.data_root("color", str(d2)) == str(d)   # scored where it is rebuilt from
    assert setup.kinds["shade"].class_names == ["green", "yellow"]
    # a built-in new task: --data-root d2 is read by no task (the old ones read d), so it is refused as unread
    with pytest.raises(SpecError, match=r"--data-root .*d2: no task of --tasks or of the adapter --extend grows reads "
                                        r"files \(vqa are built-in tasks, made by the built-in world; tasks 'color', "
                                        r"'ask' read the folder the adapter records \(.*d\)\)"):
        extend_setup(TrainOptions(extend=str(adapter), tasks="vqa", data_root=str(d2)), torch.device("cpu"))
    # its folder gone: rebuilt from --data-root, as it is scored
    d.rename(tmp_path / "gone")
    setup = extend_setup(TrainOptions(extend=str(adapter), tasks=str(new), data_root=str(d2)), torch.device("cpu"))
    assert setup.kinds["color"].class_names == ["green", "yellow"] and "color" not in setup.data_roots
    # back for the --resume: it would rebuild and score 'color' on d, not d2 as the run started (refused)
    (tmp_path / "gone").rename(d)
    resumed = extend_setup(TrainOptions(extend=str(adapter), tasks=str(new), data_root=str(d2), resume=str(tmp_path)),
                           torch.device("cpu"))
    assert resumed.kinds["color"].class_names == ["blue", "red"]
    saved = {"extend_task_roots": setup.inputs["extend_task_roots"]}
    with pytest.raises(CheckpointError, match=r"tasks 'ask', 'color' on --data-root's files, as the folder\(s\) "
                                              r"the adapter records, \[.*d'\], were gone when it started; they are "
                                              r"back"):
        check_inputs_unchanged(saved, resumed.inputs, tmp_path)
    check_inputs_unchanged({}, resumed.inputs, tmp_path)   # (a checkpoint from before the folders were recorded)


def test_eval_data_root_rebuilds_a_task_without_state_from_its_own_folder(tmp_path):
    """Repro: the adapter above (blue/red, answers red/blue, trained under d), eval --data-root d2 (green/yellow,
    left/right): 'color' was rebuilt as green/yellow and scored on d2, each green row on blue's head row, and 'ask'
    answered from d2's answer list. The state now comes from d: d2's unknown classes are refused; a copy of d (the
    data moved) is still scored where --data-root says, on the recorded vocabulary."""
    d = folder(tmp_path / "d", ("red", "blue"), ("red", "blue"))
    d2 = folder(tmp_path / "d2", ("green", "yellow"), ("left", "right"))
    adapter, _ = stateless_adapter(tmp_path, d)
    with pytest.raises(ValueError, match=r"task 'color': the evaluation split has class\(es\) \['green', 'yellow'\] "
                                         r"that training did not have \(training classes: \['blue', 'red'\]"):
        evaluate_adapter(adapter, tasks="color", data_root=str(d2), device="cpu", out=tmp_path / "ev2")
    moved = Path(shutil.copytree(d, tmp_path / "moved"))
    evaluate_adapter(adapter, data_root=str(moved), device="cpu", out=tmp_path / "ev", predictions=True)
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert {t["data_root"] for t in result["tasks"].values()} == {str(moved)}   # scored on --data-root
    rows = [json.loads(line) for line in (tmp_path / "ev" / "predictions" / "ask.jsonl").read_text().splitlines()]
    assert {r["adapted"]["answer"] for r in rows} <= {"red", "blue"}   # answered from d's list


def test_extend_says_a_damaged_config_without_the_base_model_advice(tmp_path):
    """--extend A --backbone builtin, A's config not valid JSON: the error added "give --backbone / --pretrained
    only where that model now lives elsewhere", advice for a base model not found, not for a damaged file."""
    bb = load_backbone("builtin")
    attach(bb.model, MTLLoRAConfig(tasks=["vqa"], r=2))
    adapter = mlv.save_adapter(bb.model, tmp_path / "adapter", task_specs={"vqa": load_spec("vqa")},
                               base={"backbone": "builtin"})
    (adapter / "mtl_lora_config.json").write_text("{")
    with pytest.raises(mlv.AdapterFileError, match="not valid JSON") as e:
        extend_setup(TrainOptions(extend=str(adapter), tasks="caption_cls"), torch.device("cpu"),
                     given_names={"backbone"})
    assert "--backbone" not in str(e.value)


def test_resume_with_data_root_moved_into_an_old_tasks_own_folder_is_not_lost(tmp_path):
    """Repro: an extend run read old task 'color' from its own folder d and the new task from --data-root d2; d2
    gone, ``--resume --data-root d`` (the new task's files now under d) read 'color' from d, the same files, but was
    refused as if d were gone ("the files under [d], which are gone")."""
    d, d2 = tmp_path / "d", tmp_path / "d2"
    d.mkdir()
    saved = {"extend_task_roots": {"color": str(d)}}
    check_inputs_unchanged(saved, {"extend_task_roots": {}}, tmp_path, str(d))   # read from --data-root d: d itself
    with pytest.raises(CheckpointError, match=r"task 'color' on the files under \[.*d'\], which are gone"):
        check_inputs_unchanged(saved, {"extend_task_roots": {}}, tmp_path, str(d2))


def test_resume_with_data_root_moved_into_an_old_tasks_folder_that_came_back_is_refused(tmp_path, capsys):
    """Repro: the stateless adapter's folder d gone, ``--extend --data-root d2`` rebuilt and scored 'color' on d2
    (green/yellow); d back and the new task's file moved under it, ``--resume --data-root d`` rebuilt 'color' from d
    (blue/red) and went on silently: the old tasks' own folder equal to --data-root was not "own", so the check
    for a folder come back never saw it. Refused now; a run that started on d itself resumes on d."""
    d = folder(tmp_path / "d", ("red", "blue"), ("red", "blue"))
    d2 = folder(tmp_path / "d2", ("green", "yellow"), ("left", "right"))
    adapter, _ = stateless_adapter(tmp_path, d)
    (d2 / "shades.jsonl").write_text((d2 / "rows.jsonl").read_text())
    new = spec(tmp_path, "shade", "classification", "shades.jsonl")
    common = ["--steps", "1", "--batch-size", "4", "--device", "cpu", "--workers", "0", "--skip-zero-shot"]
    d.rename(tmp_path / "gone")
    assert train_main(["--extend", str(adapter), "--tasks", str(new), "--data-root", str(d2), *common,
                       "--out", str(tmp_path / "ext")]) == 0
    (tmp_path / "gone").rename(d)
    (d2 / "shades.jsonl").rename(d / "shades.jsonl")
    shutil.rmtree(d2)
    capsys.readouterr()
    assert train_main(["--resume", str(tmp_path / "ext"), "--workers", "0", "--data-root", str(d)]) == 2
    err = capsys.readouterr().err
    assert "tasks 'ask', 'color' on the files of its earlier --data-root" in err, err
    assert f"the --data-root {d} given now is that folder, back" in err
    assert json.loads((tmp_path / "ext" / "config.json").read_text())["data_root"] == str(d2)   # left as it was
    # started on d (the folder the adapter records): read from it, and resumed on it
    assert train_main(["--extend", str(adapter), "--tasks", str(new), "--data-root", str(d), *common,
                       "--out", str(tmp_path / "ext_d")]) == 0
    assert train_main(["--resume", str(tmp_path / "ext_d"), "--workers", "0", "--data-root", str(d)]) == 0


def test_a_data_root_written_from_home_by_hand_is_the_folder_it_names(tmp_path, monkeypatch):
    """Repro: the adapter's data_roots edited by hand to '~/d' (d under $HOME): it counted as gone (no expanduser):
    --extend --data-root d2 rebuilt 'color' from d2 (green/yellow), warning that '~/d' "is no longer a folder", and
    eval without --data-root was refused as if the folder were gone."""
    monkeypatch.setenv("HOME", str(tmp_path))
    d = folder(tmp_path / "d", ("red", "blue"), ("red", "blue"))
    d2 = folder(tmp_path / "d2", ("green", "yellow"), ("left", "right"))
    adapter, kinds = stateless_adapter(tmp_path, d)
    cfg = adapter / "mtl_lora_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "data_roots": {"color": "~/d", "ask": "~/d"}}))
    new = spec(d2, "shade", "classification", "rows.jsonl")
    setup = extend_setup(TrainOptions(extend=str(adapter), tasks=str(new), data_root=str(d2)), torch.device("cpu"))
    assert setup.kinds["color"].class_names == kinds["color"].class_names == ["blue", "red"]
    assert setup.data_root("color", str(d2)) == str(d)
    evaluate_adapter(adapter, device="cpu", out=tmp_path / "ev")
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert {t["data_root"] for t in result["tasks"].values()} == {str(d)}


def test_eval_reads_the_adapter_config_once_before_load_pretrained(tmp_path, monkeypatch):
    """eval read the adapter's config three times before load_pretrained read it again (checking its files): for
    --tasks, for the base model's paths (recorded_base) and for the tasks' own folders (own_folders). One
    document now serves the three."""
    import mtl_lora_vl.evaluation.evaluate as evaluate_module
    import mtl_lora_vl.io.adapter_files as adapter_files

    d = folder(tmp_path / "d", ("red", "blue"), ("red", "blue"))
    adapter, _ = stateless_adapter(tmp_path, d)
    reads = []
    real = adapter_files.read_adapter_config
    for module in (evaluate_module, adapter_files):
        monkeypatch.setattr(module, "read_adapter_config", lambda *a, **k: reads.append(a) or real(*a, **k))
    evaluate_adapter(adapter, tasks="color", device="cpu", out=tmp_path / "ev")
    assert len(reads) == 1


def test_a_data_root_from_an_unknown_users_home_still_lets_the_adapter_load(tmp_path):
    """Review h436: since '~' is expanded in data_roots, one written as '~someone/d' where no user someone exists (a
    config edited on another machine) made every read of the adapter raise "RuntimeError: Could not determine home
    directory." (pathlib's expanduser), load_adapter and eval included. It is left as written (a folder not there)."""
    d = folder(tmp_path / "d", ("red", "blue"), ("red", "blue"))
    adapter, _ = stateless_adapter(tmp_path, d)
    cfg = adapter / "mtl_lora_config.json"
    gone = "~no-such-user-h436/d"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "data_roots": {"color": gone, "ask": str(d)}}))
    assert mlv.read_adapter_config(adapter)["data_roots"] == {"color": gone, "ask": str(d)}
