"""The benchmark's settings are checked before anything is written (helper 137): ablation values as the trainer
would check them, values that would share a run folder, empty --methods / --lr-grid; a NaN validation score is
never the picked learning rate."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest
import torch

import mtl_lora_vl.benchmark.bench as bench_module
from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.benchmark import BenchSettings, run_benchmark
from mtl_lora_vl.benchmark.cli import build_parser, settings_from_args
from mtl_lora_vl.benchmark.grid import ablation_configs, pick_lr
from mtl_lora_vl.benchmark.report import render
from mtl_lora_vl.tasks import load_spec
from mtl_lora_vl.tasks.spec import builtin_spec_dirs

needs_builtin = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                   reason="built-in backbone not built")


def _small_vqa(tmp: Path) -> str:
    src = next(d / "vqa.toml" for d in builtin_spec_dirs() if (d / "vqa.toml").is_file()).read_text()
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        src = re.sub(rf"^\[data\.{split}\]$", f"[data.{split}]\nn = {n}", src, flags=re.M)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vqa.toml").write_text(src)
    return str(tmp / "vqa.toml")


# 1. Non-finite ablation values pass every check before settings.json is written --------------------------
@pytest.mark.parametrize("flag", ["temperature=inf", "task_lr_mult=inf"])
def test_ablate_refuses_infinite_values_at_parse_time(flag, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--ablate", flag])
    assert "finite" in capsys.readouterr().err


@pytest.mark.parametrize("ablations", [{"temperature": [math.inf]}, {"task_lr_mult": [math.inf]},
                                       {"n_up": [0]}, {"lambda_type": ["diag"]}])
def test_settings_validate_checks_ablation_values(ablations):
    # run_benchmark's API gets no argparse check at all: validate() looks only at the ablation *names*
    with pytest.raises(ValueError, match=f"--ablate {next(iter(ablations))}="):
        BenchSettings(ablations=ablations).validate()
    BenchSettings(ablations={"temperature": [0.25, 1.0], "n_up": [1, 2], "lambda_type": ["none"]}).validate()


@needs_builtin
def test_bad_ablation_value_writes_no_settings_json(tmp_path):
    """temperature=inf failed in _run_grid's parameter count, *after* settings.json was written, so the corrected
    command was refused as 'a grid with other settings (ablations differ)' (task_lr_mult=inf fails later still:
    after every method run, ~60 runs into the default grid)."""
    s = BenchSettings(tasks=[_small_vqa(tmp_path / "specs")], methods=["mtl_lora"], match_params=False,
                      ablations={"temperature": [math.inf]}, seeds=1, lr_grid=[3e-3], steps=1, device="cpu")
    with pytest.raises(ValueError, match="temperature"):
        run_benchmark(s, tmp_path / "out", trainer=None)
    assert not (tmp_path / "out" / "settings.json").exists()



@pytest.mark.parametrize("workers", [-5, 10_000])
def test_bad_workers_are_refused_before_the_grid_folder_is_made(workers, tmp_path):
    """--workers -5 (or more than the cores take) was refused by the first run only, after settings.json, specs/ and
    the run's folder were written."""
    s = BenchSettings(workers=workers, device="cpu")
    with pytest.raises(ValueError, match="--workers"):
        run_benchmark(s, tmp_path / "out", trainer=None)
    assert not (tmp_path / "out").exists()
    BenchSettings(workers=-1).validate()


# 2. Two ablation values with the same 6-digit name share one run folder ----------------------------------
def test_ablation_values_that_share_a_folder_are_refused():
    s = BenchSettings(ablations={"temperature": [0.25, 0.2500001]})
    cids = [c.cid for c in ablation_configs(s, ["vqa"])]
    # was: the second run was "done earlier" with the first's scores, the report showed one row, the count two
    assert cids == ["ablation-temperature=0.25"] * 2
    with pytest.raises(ValueError, match=r"--ablate temperature: values \['0.25'\] are one value"):
        s.validate()


@pytest.mark.parametrize("flag", ["rank=8", "lambda_type=full", "task_lr_mult=1"])
def test_an_ablation_of_only_the_default_value_is_refused(flag):
    """'--ablate rank=8' ran no ablation run (8 is the reference itself) and reported a table of one row, silently."""
    with pytest.raises(ValueError, match=f"--ablate {flag.split('=')[0]}=.*the reference run itself.*another value"):
        settings_from_args(build_parser().parse_args(["--ablate", flag])).validate()
    name, default = flag.split("=")
    other = {"rank": "4", "lambda_type": "none", "task_lr_mult": "10"}[name]
    settings_from_args(build_parser().parse_args(["--ablate", f"{name}={default},{other}"])).validate()


@pytest.mark.parametrize("argv", [["--methods", "lora"], ["--quick", "--methods", "lora"]])
def test_methods_without_mtl_lora_name_the_flag_that_turns_the_default_ablations_off(argv):
    """The ablations are on by default (--quick too): the refusal said 'turn ablations off' and named no flag."""
    with pytest.raises(ValueError, match="--no-ablations"):
        settings_from_args(build_parser().parse_args(argv)).validate()
    settings_from_args(build_parser().parse_args([*argv, "--no-ablations"])).validate()


# 3. An empty --methods / --lr-grid silently means the defaults --------------------------------------------
@pytest.mark.parametrize("argv", [["--methods", ""], ["--lr-grid", ""]])
def test_empty_list_flags_are_refused_not_defaulted(argv):
    with pytest.raises(ValueError, match=argv[0]):
        settings_from_args(build_parser().parse_args(argv)).validate()


def test_methods_naming_nothing_says_so():
    with pytest.raises(ValueError, match="names no method"):
        settings_from_args(build_parser().parse_args(["--methods", ","])).validate()


# 4. Hardening: a NaN validation score is picked when it comes first ---------------------------------------
def test_pick_lr_never_picks_a_nan_validation_score():
    recs = [{"lr": 1e-3, "label": "x", "val": {"a": math.nan}}, {"lr": 3e-3, "label": "x", "val": {"a": 0.5}}]
    assert pick_lr(recs) == 3e-3


@needs_builtin
def test_report_says_what_ranks_are_matched_to_without_mtl_lora(tmp_path):
    """--methods lora: lora's rank is still matched to MTL-LoRA's default count, but the report's explanation was
    blank (it was written only beside an MTL-LoRA row)."""
    s = BenchSettings(tasks=[_small_vqa(tmp_path / "specs")], methods=["lora"], ablations={}, seeds=1,
                      lr_grid=[3e-3], steps=1, batch_size=4, warmup=0, eval_batch_size=16, device="cpu")
    run_benchmark(s, tmp_path / "out", stream=io.StringIO())
    report = (tmp_path / "out" / "report.md").read_text()
    assert re.search(r"closest to MTL-LoRA's at its default rank \(r = 8; not run here\), counted by attaching",
                     report), report
    runs = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert runs and all(r["threads"] == torch.get_num_threads() for r in runs)   # each run records its threads


def test_report_names_a_grid_resumed_on_another_thread_count():
    """A grid resumed with another --threads mixed runs of both counts and the report named only the last."""
    r = json.loads((Path(__file__).parent / "fixtures" / "bench" / "clip_quick_results.json").read_text())
    for i, run in enumerate(r["runs"]):
        run["threads"] = 1 if i < 5 else 2
    assert "**runs trained with 5 run(s) on 1 thread(s), 18 run(s) on 2 thread(s)**" in render(r)
    for run in r["runs"]:
        run["threads"] = 2
    r["threads"] = 1
    assert ", 2 thread(s)." in render(r)



def _colors_task(root: Path) -> str:
    """A file-based classification task: two classes of tiny images in train, val and test folders."""
    from PIL import Image

    for split in ("train", "val", "test"):
        for label, color in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), color).save(root / split / label / "a.png")
    (root / "colors.toml").write_text('name = "colors"\nkind = "classification"\n[data]\nformat = "imagefolder"\n'
                                      + "".join(f'[data.{s}]\nfolder = "{s}"\n' for s in ("train", "val", "test")))
    return str(root / "colors.toml")


class _Stop(KeyboardInterrupt):
    pass


def _stop(opts) -> Path:   # the grid's folder and settings are checked by then
    raise _Stop()


def test_a_spec_given_by_a_relative_then_an_absolute_path_is_one_grid(tmp_path, monkeypatch):
    """settings.json stored --tasks as typed: the same spec file as 'specs/vqa.toml' in one start and by its absolute
    path in the next was refused as 'a grid with other settings (tasks differ)'."""
    _small_vqa(tmp_path / "specs")
    _colors_task(tmp_path / "data")   # (a task that reads files: one that reads none refuses a --data-root)
    monkeypatch.chdir(tmp_path)
    settings = BenchSettings(tasks=["specs/vqa.toml", "data/colors.toml"], methods=["mtl_lora"], match_params=False,
                             ablations={}, device="cpu", data_root="data")
    out = tmp_path / "out"
    with pytest.raises(_Stop):
        run_benchmark(settings, out, trainer=_stop, stream=io.StringIO())
    stored = json.loads((out / "settings.json").read_text())
    assert stored["tasks"] == [str(tmp_path / "specs" / "vqa.toml"), str(tmp_path / "data" / "colors.toml")]
    assert stored["data_root"] == str(tmp_path / "data")

    def check(s: BenchSettings) -> None:   # what a later start checks before its first run
        bench_module._check_settings(out, bench_module.grid_identity(s, [load_spec(t) for t in s.tasks]), False)

    again = BenchSettings(**{**settings.__dict__, "tasks": [str(tmp_path / "specs" / "vqa.toml"),
                                                            str(tmp_path / "data" / "colors.toml")],
                             "data_root": str(tmp_path / "data")})
    check(again)   # resumed, not refused
    typed = {**stored, "tasks": ["specs/vqa.toml", "data/colors.toml"], "data_root": "data"}
    # a settings.json written before paths were resolved still resumes from the folder it was started in
    (out / "settings.json").write_text(json.dumps(typed))
    check(again)
    _small_vqa(tmp_path / "other")   # the same text in another file: another grid
    with pytest.raises(RuntimeError, match=r"other settings \(tasks differ\); rerun"):
        check(BenchSettings(**{**again.__dict__, "tasks": ["other/vqa.toml", again.tasks[1]]}))
    # from another folder, such a file is refused saying why, and a resume from its own folder records them resolved
    (out / "settings.json").write_text(json.dumps(typed))
    monkeypatch.chdir(tmp_path / "other")
    with pytest.raises(RuntimeError, match=r"data_root, tasks differ\); its settings.json holds relative paths "
                                           r"\(data_root, tasks\), read against the current folder .*other: start "
                                           r"from the folder the grid was started in"):
        check(again)
    monkeypatch.chdir(tmp_path)
    check(again)
    assert json.loads((out / "settings.json").read_text()) == stored
    monkeypatch.chdir(tmp_path / "other")
    check(again)


def test_a_backbone_folder_by_a_relative_then_an_absolute_path_is_one_grid(tmp_path, monkeypatch):
    """--backbone hf:models/x in one start and hf:/abs/models/x in the next was 'backbone differ' (its weights are
    fingerprinted by content in base_sha256 either way); a name or a missing folder stays as given."""
    (tmp_path / "models" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for kind in ("hf", "open_clip"):
        rel = bench_module.resolved_paths({"backbone": f"{kind}:models/x"})
        assert rel == bench_module.resolved_paths({"backbone": f"{kind}:{tmp_path / 'models' / 'x'}"})
        assert rel == {"backbone": f"{kind}:{tmp_path / 'models' / 'x'}"}
    for given in ("builtin", "open_clip:ViT-B-32", "hf:models/missing"):
        assert bench_module.resolved_paths({"backbone": given}) == {"backbone": given}
