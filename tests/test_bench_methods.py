"""The method benchmark: statistics on hand-worked numbers, rank matching, and a tiny grid on the built-in
backbone that is killed, resumed without redoing finished runs, and writes its report."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_open_clip

from mtl_lora_vl import __version__
from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.backbones.builtin import builtin_llava_dir
from mtl_lora_vl.benchmark import BenchSettings, run_benchmark
from mtl_lora_vl.benchmark.cli import build_parser, settings_from_args
from mtl_lora_vl.benchmark.grid import (
    ablation_configs,
    count_runs,
    method_configs,
    pick_lr,
    single_task_configs,
)
from mtl_lora_vl.benchmark.params import ParameterCounter
from mtl_lora_vl.benchmark.report import _diff
from mtl_lora_vl.benchmark.specs import eval_subset_specs
from mtl_lora_vl.benchmark.stats import paired_diff, summarize, t_quantile_975
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.tasks import load_spec
from mtl_lora_vl.tasks.spec import builtin_spec_dirs
from mtl_lora_vl.training.train import train


# Statistics ------------------------------------------------------------------------------------------
def test_mean_and_sample_std():
    s = summarize([0.5, 0.6, 0.7])
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1) and s.n == 3  # sqrt((0.01+0+0.01)/2)
    assert summarize([0.3]).std == 0.0


def test_t_quantiles():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(2) == 4.303 and t_quantile_975(30) == 2.042
    assert t_quantile_975(60) == pytest.approx(2.000, abs=1e-3)   # Student t, df 60: 2.0003
    assert t_quantile_975(10_000) == pytest.approx(1.960, abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_paired_interval_by_hand():
    # d = [0.1, 0.2, 0.2]: mean 1/6, sd sqrt(0.00667/2) = 0.057735, se = 0.033333, t(2) = 4.303.
    d = paired_diff([0.6, 0.7, 0.8], [0.5, 0.5, 0.6])
    half = 4.303 * 0.057735027 / math.sqrt(3)
    assert d.mean == pytest.approx(1 / 6)
    assert d.low == pytest.approx(1 / 6 - half) and d.high == pytest.approx(1 / 6 + half)
    assert d.low == pytest.approx(0.02323, abs=1e-4) and d.significant
    assert not paired_diff([0.5, 0.7], [0.6, 0.6]).significant   # d = [-0.1, 0.1]: interval spans 0
    one = paired_diff([0.7], [0.5])
    assert one.mean == pytest.approx(0.2) and one.low is None and not one.significant
    # the same difference at every seed (a small grid's discrete scores): an interval of width 0 is no evidence,
    # and the report says so rather than printing it bold (helper 137)
    flat = paired_diff([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    assert flat.high - flat.low < 1e-9 and flat.low > 0 and not flat.significant
    assert _diff(flat.to_dict()) == "+0.100 (the same at every seed)"
    assert _diff(d.to_dict()).startswith("**+0.167 [")
    with pytest.raises(ValueError):
        paired_diff([0.1, 0.2], [0.1])


# Grid and parameter budgets --------------------------------------------------------------------------
def test_matching_rank_on_a_tiny_clip():
    counter = ParameterCounter(base=tiny_open_clip())
    target = counter.count(3, method="mtl_lora", r=8)
    for method in ("lora", "moe_lora"):
        r = counter.matching_rank(target, 3, method=method)
        gap = {k: abs(counter.count(3, method=method, r=k) - target) for k in (r - 1, r, r + 1)}
        assert gap[r] < gap[r - 1] and gap[r] <= gap[r + 1], method  # counts grow with r: a local best is the best
    assert counter.matching_rank(target, 3, method="mtl_lora") == 8


def test_grid_plan_and_lr_pick():
    s = BenchSettings(tasks=["vqa", "retrieval"], lr_grid=[1e-3, 3e-3], seeds=3)
    methods = method_configs(s, ["vqa", "retrieval"], {"lora": 17, "task_lora": 6, "multi_lora": 6, "moe_lora": 6})
    assert [c.cid for c in methods] == ["lora-r8", "lora-r17", "task_lora-r8", "task_lora-r6", "multi_lora-r8",
                                        "multi_lora-r6", "moe_lora-r8", "moe_lora-r6", "mtl_lora-r8"]
    abl = ablation_configs(s, ["vqa", "retrieval"])
    assert len(abl) == 2 + 3 + 2 + 2 + 1  # the default value of each option is the reference run itself
    assert {c.options["task_lr_mult"] for c in abl} == {1.0, 10.0}
    assert count_runs(s, methods, abl) == 1 + 9 * (2 + 2) + 10 * 3
    recs = [{"lr": 1e-3, "val": {"a": 0.5, "b": 0.7}}, {"lr": 3e-3, "val": {"a": 0.6, "b": 0.6}},
            {"lr": 1e-2, "val": {"a": 0.4, "b": 0.4}}]
    assert pick_lr(recs) == 1e-3  # a tie on the average: the smaller rate
    quick = settings_from_args(build_parser().parse_args(["--quick", "--seeds", "3"]))
    assert quick.methods == ["lora", "mtl_lora"] and quick.seeds == 3 and quick.steps == 30


def test_ablate_flag_chooses_the_ablations_and_names_bad_values(capsys):
    args = build_parser().parse_args(["--ablate", "lambda_type=none,diagonal", "--ablate", "n_up=1",
                                      "--ablate", "temperature=0.25,0.5"])
    s = settings_from_args(args)
    assert s.ablations == {"lambda_type": ["none", "diagonal"], "n_up": [1], "temperature": [0.25, 0.5]}
    labels = [c.label for c in ablation_configs(s, ["vqa"])]  # τ = 0.5 is the reference run itself
    assert labels == ["mtl_lora lambda_type=none", "mtl_lora lambda_type=diagonal", "mtl_lora n_up=1",
                      "mtl_lora temperature=0.25"]
    assert settings_from_args(build_parser().parse_args([])).ablations.keys() == {
        "lambda_type", "n_up", "rank", "temperature", "task_lr_mult"}
    for bad, says in (("n_up=0", "'0' is not an integer >= 1"), ("rank=x", "'x' is not an integer >= 1"),
                      ("lambda_type=diag", "'diag' is not one of"), ("tau=1", "OPTION one of"),
                      ("temperature=-1", "not a finite number > 0")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--ablate", bad])
        assert says in capsys.readouterr().err
    with pytest.raises(ValueError, match="contradict"):
        settings_from_args(build_parser().parse_args(["--ablate", "n_up=1", "--no-ablations"]))
    assert "95 % intervals" in build_parser().format_help().replace("\n", " ")
    # Checked before settings.json is written (the trainer refused them after set-up, naming --lr, and the
    # corrected command then met "a grid with other settings")
    with pytest.raises(ValueError, match=r"--lr-grid: '3e-3,1e-2x' is not a comma-separated list of numbers"):
        settings_from_args(build_parser().parse_args(["--lr-grid", "3e-3,1e-2x"]))
    for over, says in (({"lr_grid": [0.0, 1e-3]}, r"--lr-grid: every learning rate must be a finite number > 0, "
                                                  r"got \[0.0\]"),
                       ({"warmup": -1}, "--warmup must be >= 0"), ({"val_n": 0}, "--val-n must be >= 1"),
                       ({"seeds": 0}, "--seeds must be >= 1, got 0"), ({"batch_size": -4}, "--batch-size must be >= 1"),
                       ({"steps": 0}, "--steps must be >= 1"), ({"lr_grid": []}, "--lr-grid: give at least one")):
        with pytest.raises(ValueError, match=says):
            BenchSettings(**over).validate()


# A tiny grid, killed and resumed ---------------------------------------------------------------------
needs_builtin = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                   reason="built-in backbone not built (python scripts/pretrain_backbone.py)")


def _small_spec(tmp: Path, name: str) -> str:
    src = next(d / f"{name}.toml" for d in builtin_spec_dirs() if (d / f"{name}.toml").is_file())
    text = src.read_text()
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        text = re.sub(rf"^\[data\.{split}\]$", f"[data.{split}]\nn = {n}", text, flags=re.M)
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{name}.toml"
    path.write_text(text)
    return str(path)


def _vqa_settings(tmp_path: Path) -> BenchSettings:
    """A one-task grid (a small VQA spec, MTL-LoRA only) for tests of the grid's folder and its checks."""
    return BenchSettings(tasks=[_small_spec(tmp_path / "specs", "vqa")], methods=["mtl_lora"], device="cpu")


class Killed(KeyboardInterrupt):
    pass


@needs_builtin
def test_tiny_grid_resumes_and_reports(tmp_path, monkeypatch):
    specs = tmp_path / "specs"
    settings = BenchSettings(tasks=[_small_spec(specs, "vqa"), _small_spec(specs, "retrieval")],
                             methods=["lora", "mtl_lora"], match_params=False, single_task=True,
                             ablations={"task_lr_mult": [1.0, 10.0]}, seeds=2, lr_grid=[3e-3], steps=2,
                             batch_size=4, warmup=1, eval_batch_size=16, device="cpu")
    out = tmp_path / "bench"
    calls: list[str] = []

    def killed_at_fourth(opts: TrainOptions) -> Path:
        calls.append(opts.out)
        if len(calls) == 4:  # a half-written run: the folder exists, no result
            Path(opts.out).mkdir(parents=True)
            (Path(opts.out) / "partial").write_text("x")
            raise Killed()
        return train(opts)

    with pytest.raises(Killed):
        run_benchmark(settings, out, trainer=killed_at_fourth, stream=io.StringIO())
    done_before = sorted(p.parent for p in (out / "runs").rglob("result.json"))
    assert len(done_before) == 3
    stamps = {p: (p / "result.json").stat().st_mtime_ns for p in done_before}

    again: list[str] = []

    def counting(opts: TrainOptions) -> Path:
        again.append(opts.out)
        return train(opts)

    import mtl_lora_vl.benchmark.runner as runner_module

    monkeypatch.setattr(runner_module, "code_version", lambda: "9.9.9+gother")  # resumed on other code
    log = io.StringIO()
    results = run_benchmark(settings, out, trainer=counting, stream=log)
    total = 1 + 4 * (1 + 1) + 1 * 2  # zero-shot, (2 methods + 2 single-task) x (1 lr + 1 seed), 1 ablation x 2
    assert results["runs_total"] == total and len(results["runs"]) == total
    assert len(again) == total - 3 and calls[3] in again  # the killed run is redone, the finished ones are not
    assert not (Path(calls[3]) / "partial").exists()
    assert all((p / "result.json").stat().st_mtime_ns == stamps[p] for p in done_before)
    lines = [x for x in log.getvalue().splitlines() if x.startswith("[bench ")]
    assert len(lines) == total and "ETA" in lines[-1] and sum("done earlier" in x for x in lines) == 3

    # The report, the numbers and the plots.
    report = (out / "report.md").read_text()
    # the specs' own val size (it said "150 scenes per built-in task", --val-n's, which a spec's n overrides)
    assert "validation: vqa 8 scenes, retrieval 8 scenes (the same for every run)" in report
    assert report.startswith("# Method benchmark: vqa, retrieval")
    for heading in ("## Findings", "## Methods", "## Paired difference to mtl_lora r=8", "## Interference",
                    "## MTL-LoRA ablations", "## Learning-rate tuning", "## Budget and protocol"):
        assert heading in report, heading
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["configs"]) == {"lora-r8", "mtl_lora-r8", "single-vqa", "single-retrieval",
                                     "ablation-task_lr_mult=10"}
    assert saved["configs"]["single-vqa"]["batch_size"] == 2  # equal train sizes: half of the joint batch of 4
    mtl = saved["configs"]["mtl_lora-r8"]
    assert mtl["scores"]["average"]["n"] == 2 and mtl["params"] > saved["configs"]["lora-r8"]["params"] > 0
    assert set(saved["zero_shot"]) == {"vqa", "retrieval"}
    assert saved["paired_vs_reference"]["lora-r8"]["average"]["n"] == 2
    assert saved["interference"]["mtl_lora-r8"]["average"]["low"] is not None
    # interference with the single-task runs at the joint method's learning rate (seed 0; one lr here)
    by_key = {(r["config"], r["seed"]): r for r in saved["runs"] if r["lr"] == saved["configs"]["mtl_lora-r8"]["lr"]}
    want = [by_key[("mtl_lora-r8", 0)]["tasks"][t] - by_key[(f"single-{t}", 0)]["tasks"][t]
            for t in ("vqa", "retrieval")]
    got = saved["interference_same_lr"]["mtl_lora-r8"]
    assert [got["vqa"], got["retrieval"]] == pytest.approx(want) and got["average"] == pytest.approx(sum(want) / 2)
    assert "The same at one learning rate" in report and "cost of sharing a rate" in report
    assert (f"**Code: the runs come from 2 versions** (a grid resumed on other code): "
            f"3 run(s) with {__version__}" in report)
    assert f"{total - 3} run(s) with 9.9.9+gother." in report
    assert [r["value"] for r in saved["ablations"]["task_lr_mult"]] == [1.0, 10.0]
    assert saved["task_mixing"]["seeds"]["0"]["towers"]["image"]
    spread = saved["task_mixing"]["seeds"]["0"]["spread"]["image"]
    assert 0 <= spread["weight_min"] <= spread["weight_max"] <= 1 and 0 <= spread["tv_median"] <= spread["tv_max"] <= 1
    assert "## Task mixing per projection" in report
    tune = [r for r in saved["runs"] if r["tune"]]
    assert tune and all(set(r["val"]) == set(r["tasks"]) for r in tune)
    for name in ("methods.png", "paired_vs_mtl_lora.png", "ablations.png", "task_mixing.png", "params_vs_score.png"):
        assert (out / "plots" / name).is_file(), name
    # Grid runs skip the zero-shot score; task_lr_mult puts Λ_t, w_t in a group of their own at 10x
    # (the heads: decayed, not decayed).
    run = out / "runs" / "ablation-task_lr_mult=10" / "lr0.003-seed0" / "train"
    assert json.loads((run / "eval.json").read_text())["tasks"]["vqa"]["zero_shot"] is None
    groups = torch.load(run / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups[:2]] == pytest.approx([3e-3, 3e-2]) and len(groups) == 4   # + 2 of heads

    # Other settings in the same folder are refused: the budget, an edited spec, another device or dtype.
    with pytest.raises(RuntimeError, match="other settings"):
        run_benchmark(BenchSettings(**{**settings.__dict__, "steps": 3}), out, trainer=counting)
    spec = Path(settings.tasks[0])
    spec.write_text(spec.read_text().replace("[data.train]\nn = 24", "[data.train]\nn = 20"))
    with pytest.raises(RuntimeError, match=r"other settings \(spec_sha256 differ"):
        run_benchmark(settings, out, trainer=counting)
    spec.write_text(spec.read_text().replace("[data.train]\nn = 20", "[data.train]\nn = 24"))
    import mtl_lora_vl.benchmark.bench as bench_mod

    with pytest.MonkeyPatch.context() as mp:   # as if resumed on a GPU, where auto precision is bf16
        mp.setattr(bench_mod, "resolve_precision", lambda *a, **k: torch.bfloat16)
        with pytest.raises(RuntimeError, match=r"other settings \(runtime differ"):
            run_benchmark(settings, out, trainer=counting)
    assert len(again) == total - 3   # nothing was trained by the refused calls


def test_a_task_without_a_test_split_is_refused(tmp_path):
    """Learning rates are chosen on val; a spec without test would be 'tested' on val too."""
    spec = tmp_path / "folder.toml"
    spec.write_text('name = "cls"\nkind = "classification"\n[data]\nformat = "imagefolder"\n'
                    '[data.train]\nfolder = "train"\n[data.val]\nfolder = "val"\n')
    with pytest.raises(ValueError, match=r"folder.toml: the benchmark needs .* no test split; add a \[data.test\]"):
        run_benchmark(BenchSettings(tasks=[str(spec)], device="cpu"), tmp_path / "out", trainer=None)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not (builtin_llava_dir() / "model.safetensors").is_file(), reason="built-in LLaVA not built")
def test_the_same_grid_runs_on_the_built_in_llava(tmp_path):
    """Issue 10's generative path: the built-in specs take their LM path on builtin-llava (answers and
    captions generated, classes scored by likelihood) and the report comes out the same way."""
    specs = tmp_path / "specs"
    settings = BenchSettings(tasks=[_small_spec(specs, t) for t in ("vqa", "captioning", "caption_cls")],
                             backbone="builtin-llava", methods=["lora", "mtl_lora"], match_params=False,
                             single_task=False, ablations={}, seeds=1, lr_grid=[3e-3], steps=2, batch_size=6,
                             warmup=1, eval_batch_size=16, device="cpu")
    results = run_benchmark(settings, tmp_path / "bench", stream=io.StringIO())
    assert results["runs_total"] == 3
    report = (tmp_path / "bench" / "report.md").read_text()
    assert report.startswith("# Method benchmark: vqa, captioning, caption_cls on `builtin-llava`")
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert set(saved["zero_shot"]) == {"vqa", "captioning", "caption_cls"}
    run = tmp_path / "bench" / "runs" / "mtl_lora-r8" / "lr0.003-seed0" / "train"
    scores = json.loads((run / "eval.json").read_text())["tasks"]
    assert [scores[t]["metric"] for t in ("vqa", "captioning", "caption_cls")] == ["vqa_accuracy", "bleu4", "top1"]
    assert "cider" in scores["captioning"]["details"]["adapted"]  # generated captions were scored


def test_eval_subsets_reach_a_commented_header_and_a_default_split(tmp_path):
    """A [data.val] header with a comment, and a test split the built-in defaults supply without a table,
    both get their evaluation size (both raised before)."""
    src = Path(load_spec("vqa").source_file).read_text()
    text = re.sub(r"^\[data\.test\]\n(?:(?!\[).*\n)*", "", src.replace("[data.val]", "[data.val]  # val"), flags=re.M)
    assert not re.search(r"^\[data\.test\]", text, flags=re.M)   # (the comments still show one)
    assert "test" in load_spec(_write(tmp_path / "vqa.toml", text)).data.splits
    args = eval_subset_specs([str(tmp_path / "vqa.toml")], tmp_path / "out", {"val": 7, "test": 9})
    splits = load_spec(args["vqa"]).data.splits
    assert splits["val"]["n"] == 7 and splits["test"]["n"] == 9


def test_eval_subsets_name_the_users_spec_when_its_copy_cannot_be_read(tmp_path):
    """An inline `val = {}` split table: the copy's added [data.val] declared it twice, and the error named only the
    copy under OUT/specs (review 189)."""
    text = 'name = "q"\nkind = "vqa"\n[data]\nsource = "builtin"\nval = {}\n[data.train]\n[data.test]\n'
    with pytest.raises(ValueError, match=r"q\.toml: its copy with evaluation sizes could not be read .*a \[data\."
                                         r"<split>\] table per split \(not an inline one\)"):
        eval_subset_specs([_write(tmp_path / "q.toml", text)], tmp_path / "out", {"val": 7})


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_out_must_be_a_benchmark_folder_before_anything_is_deleted_or_written(tmp_path, monkeypatch):
    """--overwrite deleted whatever --out named (the current directory too), and without it the report was
    written over a folder of the user's own files."""
    from mtl_lora_vl.benchmark.bench import BenchDirError

    settings = _vqa_settings(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    for overwrite in (False, True):
        with pytest.raises(BenchDirError, match="holds no benchmark .no settings.json"):
            run_benchmark(settings, mine, trainer=None, overwrite=overwrite)
    assert (mine / "report.md").read_text() == "my notes"
    grid = tmp_path / "grid"
    grid.mkdir()
    (grid / "settings.json").write_text("{}")
    monkeypatch.chdir(grid)
    with pytest.raises(BenchDirError, match="is the current directory or holds it"):
        run_benchmark(settings, Path("."), trainer=None, overwrite=True)
    assert (grid / "settings.json").is_file()
    link = tmp_path / "link"   # --overwrite through a link was "Cannot call rmtree on a symbolic link"
    link.symlink_to(grid)
    with pytest.raises(BenchDirError, match=f"is a symbolic link .to {grid}.; --overwrite replaces a folder"):
        run_benchmark(settings, link, trainer=None, overwrite=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(BenchDirError, match="which does not exist"):
        run_benchmark(settings, tmp_path / "dangling", trainer=None)
    assert link.is_symlink() and (grid / "settings.json").is_file()


def test_a_diverging_learning_rate_is_a_result_not_a_stop(tmp_path):
    """The trainer stops a run after --max-bad-steps non-finite steps (FloatingPointError): that stopped the
    whole grid with a traceback, and every rerun diverged again at the same run."""
    specs = tmp_path / "specs"
    settings = BenchSettings(tasks=[_small_spec(specs, "vqa"), _small_spec(specs, "retrieval")],
                             methods=["mtl_lora"], match_params=False, single_task=False, ablations={}, seeds=1,
                             lr_grid=[3e-3, 10.0], steps=2, batch_size=4, warmup=1, eval_batch_size=16, device="cpu")

    def diverging_at(bad: float, seed: int | None = None):
        def trainer(opts: TrainOptions) -> Path:
            if opts.lr == bad and (seed is None or opts.seed == seed):
                raise FloatingPointError("5 non-finite steps in a row at step 2; lower --lr")
            return train(opts)
        return trainer

    log = io.StringIO()
    results = run_benchmark(settings, tmp_path / "a", trainer=diverging_at(10.0), stream=log)
    cfg = results["configs"]["mtl_lora-r8"]
    assert cfg["lr"] == 3e-3 and cfg["lr_val"]["10"] is None and cfg["lr_val"]["0.003"] is not None
    assert "lr 10, seed 0: diverged" in log.getvalue()
    assert re.search(r"\| mtl_lora r=8 \| \*\*\d\.\d{3}\*\* \| diverged \|", (tmp_path / "a" / "report.md").read_text())
    # Every rate diverges: a clear error, the runs kept.
    every = BenchSettings(**{**settings.__dict__, "lr_grid": [10.0]})
    with pytest.raises(ValueError, match=r"mtl_lora r=8: training diverged at every learning rate .*\(10;"):
        run_benchmark(every, tmp_path / "b", trainer=diverging_at(10.0), stream=io.StringIO())
    # The picked rate diverges at another seed: a result too (it made the whole grid unreportable, at its
    # end): the configuration's scores are over the seeds that trained, and the report says which diverged.
    two = BenchSettings(**{**settings.__dict__, "lr_grid": [3e-3], "seeds": 2})
    log = io.StringIO()
    results = run_benchmark(two, tmp_path / "c", trainer=diverging_at(3e-3, seed=1), stream=log)
    cfg = results["configs"]["mtl_lora-r8"]
    assert cfg["diverged_seeds"] == [1] and cfg["scores"]["average"]["n"] == 1 and list(cfg["per_seed"]) == ["0"]
    assert [(d["seed"], d["lr"]) for d in results["diverged"]] == [(1, 3e-3)]
    assert "mtl_lora r=8, seed 1: diverged at learning rate 0.003" in log.getvalue()
    report = (tmp_path / "c" / "report.md").read_text()
    assert "| mtl_lora r=8 (seed 1 diverged) |" in report and "**mtl_lora r=8, seed 1: diverged**" in report
    assert (tmp_path / "c" / "runs" / "mtl_lora-r8" / "lr0.003-seed1" / "result.json").is_file()


def test_a_bad_device_is_one_line(tmp_path, capsys):
    from mtl_lora_vl.benchmark.cli import main

    assert main(["--device", "gpu", "--out", str(tmp_path / "b")]) == 2   # was a traceback, exit status 1
    assert "error: --device 'gpu': not a device this package runs on" in capsys.readouterr().err


def test_a_stopped_run_stops_the_grid_resumably(tmp_path):
    """Ctrl-C / SIGTERM in a run: the trainer raises RunStopped; the grid stops as interrupted (rerun continues)."""
    import signal

    from mtl_lora_vl.benchmark.runner import GridStopped
    from mtl_lora_vl.training.stopping import RunStopped

    settings = _vqa_settings(tmp_path)

    def stopped(opts: TrainOptions) -> Path:
        raise RunStopped(Path(opts.out), 1, signal.SIGTERM)

    with pytest.raises(GridStopped, match="stopped by SIGTERM at step 1") as info:
        run_benchmark(settings, tmp_path / "out", trainer=stopped, stream=io.StringIO())
    assert info.value.exit_code == 143   # the CLI exits with it (it said 130, Ctrl-C's, for a SIGTERM)
    assert not list((tmp_path / "out" / "runs").rglob("result.json"))

    def broken(opts: TrainOptions) -> Path:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (test)")

    with pytest.raises(RuntimeError, match="mat1") as info:   # the run is named and its log holds the traceback
        run_benchmark(settings, tmp_path / "out", trainer=broken, stream=io.StringIO())
    note = info.value.__notes__[0]
    assert note.startswith("in bench run zero_shot") and "train.log" in note
    log = next((tmp_path / "out" / "runs").rglob("train.log")).read_text()
    assert "Traceback" in log and "mat1 and mat2" in log


def test_mixing_spread_sees_choices_that_the_average_over_projections_hides():
    """Two tasks choosing opposite up-projections in two projections average to the same uniform mixture:
    the heatmap (and the README's old reading of it) said the tasks barely choose differently."""
    from mtl_lora_vl.benchmark.mixing import _spread

    m = torch.tensor([[[0.9, 0.1], [0.1, 0.9]],     # projection 1: task 0 takes B1, task 1 takes B2
                      [[0.1, 0.9], [0.9, 0.1]]])    # projection 2: the other way round
    assert torch.allclose(m.mean(0), torch.full((2, 2), 0.5))
    got = _spread(m)
    assert got["tv_median"] == pytest.approx(0.8) and got["tv_max"] == pytest.approx(0.8)
    assert (got["weight_min"], got["weight_max"], got["projections"]) == (pytest.approx(0.1), pytest.approx(0.9), 2)
    same = _spread(torch.full((3, 2, 3), 1 / 3))
    assert same["tv_median"] == 0 and same["weight_max"] == pytest.approx(1 / 3)


def test_code_version_names_the_commit_and_uncommitted_changes(tmp_path):
    """Each run records the code that trained it: version, +g<commit>, .dirty with uncommitted changes to
    tracked files (untracked files do not count); outside a checkout the version alone."""
    import shutil
    import subprocess

    from mtl_lora_vl.benchmark.runner import code_version

    assert code_version(tmp_path) == __version__
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()[:12]
    assert code_version(tmp_path) == f"{__version__}+g{sha}"
    # the same commit reads the same in every clone: `--short` took core.abbrev (and grows with a clone's objects)
    for abbrev in ("4", "20", "auto"):
        subprocess.run([*git, "config", "core.abbrev", abbrev], check=True)
        assert code_version(tmp_path) == f"{__version__}+g{sha}", abbrev
    (tmp_path / "new.py").write_text("")
    assert code_version(tmp_path) == f"{__version__}+g{sha}"
    (tmp_path / "a.py").write_text("x = 2\n")
    dirty = code_version(tmp_path)
    assert dirty.startswith(f"{__version__}+g{sha}.dirty") and code_version(tmp_path) == dirty
    # other uncommitted changes on the same commit are other code: a grid resumed after an edit says so
    (tmp_path / "a.py").write_text("x = 3\n")
    assert code_version(tmp_path).startswith(f"{__version__}+g{sha}.dirty") and code_version(tmp_path) != dirty


def test_code_version_of_one_edit_does_not_depend_on_the_users_git_config(tmp_path):
    """The .dirty hash was that of `git diff HEAD`'s text, which git config shapes (diff.noprefix, diff.context):
    the same edited checkout read as two code versions for two users (a grid resumed by the other one said so)."""
    import shutil
    import subprocess

    from mtl_lora_vl.benchmark.runner import code_version

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("".join(f"x{i} = {i}\n" for i in range(20)))
    (tmp_path / "b.py").write_text("y = 1\n")
    subprocess.run([*git, "add", "a.py", "b.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    (tmp_path / "a.py").write_text("".join(f"x{i} = {i * (i in (3, 15))}\n" for i in range(20)))
    (tmp_path / "b.py").unlink()
    plain = code_version(tmp_path)
    assert ".dirty" in plain
    for key, value in (("diff.noprefix", "true"), ("diff.context", "8"), ("diff.mnemonicPrefix", "true")):
        subprocess.run([*git, "config", key, value], check=True)
        assert code_version(tmp_path) == plain, key


def test_abbreviated_flags_are_refused_with_the_option_they_are_close_to(tmp_path, capsys):
    """'--seed 3' was taken as '--seeds 3' (three seeds) and '--lr 1e-3' as a one-value --lr-grid, silently."""
    from mtl_lora_vl.benchmark.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--seed", "3", "--lr", "1e-3", "--quick", "--out", str(tmp_path / "b")])
    assert e.value.code == 2 and not (tmp_path / "b").exists()
    # (--seed 3 is one seed, --seeds a count of them: no hint, a2813e7)
    assert ("unrecognized arguments: --seed 3 --lr (did you mean --lr-grid?) 1e-3"
            in capsys.readouterr().err)


def test_bench_takes_the_logging_flags_of_the_other_commands(tmp_path, capsys):
    """-v / -q / --log-level, which the README gives every command, were refused by bench as unknown."""
    from mtl_lora_vl.benchmark.cli import main

    assert main(["--tasks", "vqa,vqa", "-v", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: " in err and "named more than once" in err   # -v: the traceback too
    assert main(["--tasks", "vqa,vqa", "-q", "--out", str(tmp_path / "b")]) == 2
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--log-level", "loud", "--out", str(tmp_path / "b")])
    assert e.value.code == 2 and "--log-level: expected one of" in capsys.readouterr().err


def test_grid_settings_that_would_run_less_than_they_say_are_refused(tmp_path):
    """'vqa,vqa' (or a spec file named like a built-in task) benchmarked one task; '--methods ,' trained the
    zero-shot run, then failed in fmean; 'lora,lora' reported 7 runs of 5; two rates equal to 6 digits shared
    one run folder (the second never trained); a bad --backbone left settings.json, so the fixed command was
    refused as 'a grid with other settings'."""
    specs = tmp_path / "specs"
    vqa = _small_spec(specs, "vqa")
    for settings, message in [
        (BenchSettings(tasks=[vqa, "vqa"], device="cpu"), r"--tasks: task 'vqa' is named more than once"),
        (BenchSettings(tasks=[vqa], methods=[], ablations={}, device="cpu"), "--methods names no method"),
        (BenchSettings(tasks=[vqa], methods=["lora", "lora", "mtl_lora"], device="cpu"),
         r"--methods names \['lora'\] more than once"),
        (BenchSettings(tasks=[vqa], lr_grid=[0.0031622776, 0.00316227766], device="cpu"),
         r"are one rate to 6 significant digits \(\['0.00316228'\]\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_benchmark(settings, tmp_path / "out", trainer=None)
        assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="builtin-typo"):
        run_benchmark(BenchSettings(tasks=[vqa], backbone="builtin-typo", device="cpu"), tmp_path / "out",
                      trainer=None)
    assert not (tmp_path / "out").exists()


def test_the_single_task_batch_is_the_task_s_rows_in_a_joint_batch(tmp_path):
    """The single-task reference's batch came from the sampling probabilities, but a joint batch floors a
    small task's share at one row and shrinks the others: with 400 and 1 training rows at batch 8, the large
    task trained alone on 8 rows a step where a joint batch gives it 7."""
    from PIL import Image

    from mtl_lora_vl.benchmark.specs import joint_shares
    from mtl_lora_vl.data.sampler import MultiTaskBatchSampler

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    args = {}
    for name, n in (("big", 400), ("small", 1)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"image": "a.png", "label": f"c{i % 2}"}) + "\n"
                                                        for i in range(n)))
        spec = tmp_path / f"{name}.toml"
        spec.write_text(f'name = "{name}"\nkind = "classification"\ntemplates = ["a {{}}."]\n[data]\n'
                        f'format = "jsonl"\n[data.train]\nfile = "{name}.jsonl"\n[data.val]\nfile = "{name}.jsonl"\n')
        args[name] = str(spec)
    shares = joint_shares(args, 8, str(tmp_path))
    d = TrainOptions()
    sampler = MultiTaskBatchSampler([400, 1], 8, strategy=d.sampling, temperature=d.sampling_temperature,
                                    mode=d.batch_mode, seed=0, steps=400)
    rows = [sum(t == 0 for t, _ in batch) for batch in sampler]
    assert sum(rows) / len(rows) == pytest.approx(8 * shares["big"], abs=0.05)
    singles = single_task_configs(list(args), 8, shares)
    assert [c.batch_size for c in singles] == [7, 1]


@needs_builtin
def test_a_grid_is_not_resumed_on_other_base_weights(tmp_path):
    """The grid's identity named --pretrained by its path only: weights rewritten there (pretrain_backbone.py
    run again) were resumed into the grid, old and new runs mixed in one report."""
    import shutil

    from mtl_lora_vl.benchmark.bench import BenchDirError, _check_settings, grid_identity

    weights = tmp_path / "w.safetensors"
    shutil.copy(builtin_dir() / "model.safetensors", weights)
    settings = BenchSettings(tasks=["vqa"], pretrained=str(weights), device="cpu")
    specs = [load_spec("vqa")]
    out = tmp_path / "grid"
    _check_settings(out, grid_identity(settings, specs), overwrite=False)
    _check_settings(out, grid_identity(settings, specs), overwrite=False)      # the same weights: resumed
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(100)   # other values, same size and path
    weights.write_bytes(bytes(data))
    with pytest.raises(BenchDirError, match=r"holds a grid with other settings \(base_sha256 differ\)"):
        _check_settings(out, grid_identity(settings, specs), overwrite=False)
    old = json.loads((out / "settings.json").read_text())   # a grid begun before weights were fingerprinted
    del old["base_sha256"]
    (out / "settings.json").write_text(json.dumps(old))
    _check_settings(out, grid_identity(settings, specs), overwrite=False)


def test_a_grid_folder_in_use_is_refused(tmp_path):
    """A second bench on the same --out took the first one's unfinished runs for killed ones and deleted them
    under it."""
    import os

    from mtl_lora_vl.benchmark.bench import BenchDirError, grid_lock

    settings = _vqa_settings(tmp_path)
    out = tmp_path / "grid"
    out.mkdir()
    (out / "settings.json").write_text("{}")
    with grid_lock(out):   # (flock: a second open file description conflicts, in this process too)
        for overwrite in (False, True):
            with pytest.raises(BenchDirError, match=rf"another benchmark is running in it \(process {os.getpid()}\)"):
                run_benchmark(settings, out, trainer=None, overwrite=overwrite)
        assert (out / "settings.json").read_text() == "{}"
    with pytest.raises(Exception, match="holds a grid with other settings"):   # free again (a stale file is too)
        run_benchmark(settings, out, trainer=None)


def test_bench_leaves_the_callers_thread_count_as_it_was(tmp_path):
    """main() set torch's thread count to --threads and left it there for the rest of the process."""
    from mtl_lora_vl.benchmark.cli import main

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["--tasks", "vqa,vqa", "--threads", "1", "--out", str(tmp_path / "b")]) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


def test_a_grid_recorded_before_per_task_validation_sizes_renders_its_protocol_line():
    """results.json of the committed grid gives one validation size for every task: the line read
    "150 scenes per built-in task (subsets of the built-in world's splits) (the same for every run)" (helper 125)."""
    from pathlib import Path

    from mtl_lora_vl.benchmark.report import render

    results = json.loads((Path(__file__).parent / "fixtures" / "bench" / "clip_methods_results.json").read_text())
    text = render(results)
    assert ("validation: 150 scenes per built-in task, subsets of the built-in world's splits (the same for every "
            "run)") in text and "splits) (" not in text
    results["settings"].update(steps=2, warmup=3)   # each run warms up min(warmup, steps) steps (review 189)
    assert "2 steps, batch" in render(results) and "2 warm-up steps then cosine" in render(results)


@needs_builtin
def test_a_grid_names_the_fp16_autocast_its_language_model_runs_in_on_a_gpu_without_bf16(monkeypatch):
    """The identity's autocast ignored the base weights' dtype: on a GPU without bf16 (V100, T4) builtin-llava loads
    in fp16 and trains under fp16 autocast, but the grid recorded float32, so a grid begun there was resumed on a
    CPU (fp32) as the same grid. Checked without a GPU: CUDA is faked up to the dtype choice."""
    import mtl_lora_vl.backbones.base as base
    import mtl_lora_vl.precision as precision
    from mtl_lora_vl.benchmark.bench import grid_identity

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for module in (base, precision):
        monkeypatch.setattr(module, "cuda_has_bf16", lambda device=None: False)
    llava = BenchSettings(tasks=["vqa"], backbone="builtin-llava", device="cuda")
    assert grid_identity(llava, [load_spec("vqa")])["runtime"] == {"device": "cuda", "autocast": "torch.float16"}
    clip = BenchSettings(tasks=["vqa"], device="cuda")   # open_clip: fp32 weights, fp32 without bf16
    assert grid_identity(clip, [load_spec("vqa")])["runtime"] == {"device": "cuda", "autocast": "torch.float32"}


def test_two_runners_started_together_do_not_delete_each_others_grid(tmp_path, monkeypatch):
    """Two `bench --overwrite` on one --out started at once: both found the folder free (the lock was taken only
    after the settings check), the later one deleted the earlier one's grid and lock file, and both ran."""
    import mtl_lora_vl.benchmark.bench as bench_mod
    from mtl_lora_vl.benchmark.bench import BenchDirError

    settings = _vqa_settings(tmp_path)
    out = tmp_path / "grid"
    out.mkdir()
    (out / "settings.json").write_text("{}")
    real, other = bench_mod.grid_identity, []

    def identity_while_another_starts(*args, **kwargs):   # the other runner takes the folder meanwhile
        other.append(bench_mod.grid_lock(out))
        other[0].__enter__()
        (out / "runs").mkdir()
        (out / "runs" / "theirs.json").write_text("{}")
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_mod, "grid_identity", identity_while_another_starts)
    with pytest.raises(BenchDirError, match="another benchmark is running in it"):
        run_benchmark(settings, out, trainer=None, overwrite=True)
    other[0].__exit__(None, None, None)
    assert (out / "runs" / "theirs.json").is_file() and (out / "settings.json").read_text() == "{}"


def test_a_run_out_of_memory_is_one_line_naming_the_run(tmp_path, capsys, monkeypatch):
    """A run that ran out of host memory (MemoryError: numpy's 'Unable to allocate', torch's CPU allocator) ended
    bench with a traceback and exit status 1, where CUDA's out of memory (a RuntimeError) was one line and 2."""
    import mtl_lora_vl.benchmark.cli as cli_mod
    import mtl_lora_vl.benchmark.command as command_mod

    def out_of_memory(opts: TrainOptions) -> Path:
        raise MemoryError("Unable to allocate 3.2 GiB for an array (test)")

    real = command_mod.run_benchmark
    monkeypatch.setattr(command_mod, "run_benchmark", lambda *a, **k: real(*a, **k, trainer=out_of_memory,
                                                                            stream=io.StringIO()))
    spec = _small_spec(tmp_path / "specs", "vqa")
    argv = ["--out", str(tmp_path / "b"), "--tasks", spec, "--methods", "mtl_lora", "--no-ablations", "--seeds", "1",
            "--lr-grid", "1e-3", "--device", "cpu"]
    assert cli_mod.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("[mtl-lora-vl] error: Unable to allocate 3.2 GiB") and "in bench run zero_shot" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
