"""A run that fails (out of memory at one configuration, say) is recorded, the grid goes on, the report marks it,
and a later start keeps it as failed unless ``--retry-failed``; Ctrl-C still stops the grid."""

from __future__ import annotations

import gc
import io
import json
import re
import weakref
from pathlib import Path

import pytest
import torch
from test_bench_methods import _small_spec

from mtl_lora_vl.benchmark import BenchSettings, run_benchmark
from mtl_lora_vl.benchmark import cli as bench_cli
from mtl_lora_vl.benchmark import command as bench_command
from mtl_lora_vl.benchmark.grid import RunSpec, method_configs
from mtl_lora_vl.benchmark.report import render
from mtl_lora_vl.benchmark.runner import Runner
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.training.train import train


def _settings(tmp_path: Path, **over) -> BenchSettings:
    specs = tmp_path / "specs"
    base = dict(tasks=[_small_spec(specs, "vqa"), _small_spec(specs, "retrieval")], methods=["lora", "mtl_lora"],
                match_params=False, single_task=False, ablations={}, seeds=2, lr_grid=[3e-3, 1e-2], steps=2,
                batch_size=4, warmup=1, eval_batch_size=16, device="cpu")
    return BenchSettings(**{**base, **over})


def _oom_at(*where: tuple[str, float | None, int | None], calls: list[str] | None = None):
    """A trainer that runs out of memory at (method, lr, seed) (None: any) but in the zero-shot run, else trains."""
    def trainer(opts: TrainOptions) -> Path:
        if calls is not None:
            calls.append(opts.out)
        for method, lr, seed in where:
            if opts.steps > 1 and opts.method == method and lr in (None, opts.lr) and seed in (None, opts.seed):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        return train(opts)
    return trainer


def test_a_failed_run_is_recorded_and_the_grid_goes_on(tmp_path):
    settings, out = _settings(tmp_path), tmp_path / "bench"
    log = io.StringIO()
    results = run_benchmark(settings, out, trainer=_oom_at(("lora", None, 1), ("mtl_lora", 1e-2, 0)), stream=log)
    # Every run was tried: 1 zero-shot + 2 configurations x (2 rates + 1 more seed).
    assert len(results["runs"]) == 7 and "run(s) FAILED" in log.getvalue()
    record = json.loads(next((out / "runs" / "lora-r8").glob("*-seed1/failed.json")).read_text())
    assert record["failed"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "Traceback" in (out / record["log"]).read_text()
    assert not list((out / "runs" / "lora-r8").glob("*seed1/result.json"))
    lora, mtl = results["configs"]["lora-r8"], results["configs"]["mtl_lora-r8"]
    assert lora["failed_seeds"] == [1] and lora["scores"]["average"]["n"] == 1 and list(lora["per_seed"]) == ["0"]
    assert mtl["lr"] == 3e-3 and mtl["lr_failed"] == ["0.01"] and mtl["lr_val"]["0.01"] is None
    assert mtl["scores"]["average"]["n"] == 2 and not mtl["failed_seeds"]
    assert {(f["label"], f["seed"]) for f in results["failed"]} == {("lora r=8", 1), ("mtl_lora r=8", 0)}
    report = (out / "report.md").read_text()
    assert "| lora r=8 (seed 1 failed) |" in report and "**lora r=8, seed 1" in report
    assert "the run failed** (`OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB`" in report
    assert re.search(r"\| mtl_lora r=8 \| \*\*\d\.\d{3}\*\* \| failed \|", report)
    best = next(line for line in report.splitlines() if line.startswith("- Best average"))
    assert "mtl_lora r=8" in best   # lora, one seed short, is left out of the comparison of means

    # A later start keeps the failed runs as failed: nothing is trained again.
    calls: list[str] = []
    log = io.StringIO()
    again = run_benchmark(settings, out, trainer=_oom_at(calls=calls), stream=log)
    assert calls == [] and len(again["failed"]) == 2 and log.getvalue().count("failed earlier") == 2
    # --retry-failed runs exactly those again.
    again = run_benchmark(settings, out, trainer=_oom_at(calls=calls), stream=io.StringIO(), retry_failed=True)
    assert len(calls) == 2 and again["failed"] == [] and not list((out / "runs").rglob("failed.json"))
    assert again["configs"]["lora-r8"]["scores"]["average"]["n"] == 2


def test_a_configuration_failing_at_every_rate_leaves_the_others_reported(tmp_path):
    settings = _settings(tmp_path, methods=["lora", "mtl_lora"], ablations={"task_lr_mult": [1.0, 10.0]},
                         lr_grid=[3e-3], seeds=1)
    log = io.StringIO()
    results = run_benchmark(settings, tmp_path / "a", trainer=_oom_at(("mtl_lora", None, None)), stream=log)
    assert "lora-r8" in results["configs"] and "mtl_lora-r8" not in results["configs"]
    assert results["reference"] is None and results["ablations"] == {}
    assert "its ablations, run at its rate, are not run" in log.getvalue()
    assert [f["effect"] for f in results["failed"]] == [
        "no learning rate finished, so the configuration has no scores and its other seeds did not run"]


def test_ctrl_c_in_a_run_stops_the_grid_and_is_not_a_failure(tmp_path):
    settings, out = _settings(tmp_path, methods=["mtl_lora"], lr_grid=[3e-3], seeds=1), tmp_path / "b"

    def interrupted(opts: TrainOptions) -> Path:
        if opts.steps > 1:   # after the zero-shot run
            raise KeyboardInterrupt
        return train(opts)

    with pytest.raises(KeyboardInterrupt):
        run_benchmark(settings, out, trainer=interrupted, stream=io.StringIO())
    assert not list((out / "runs").rglob("failed.json"))


def test_the_command_exits_1_when_runs_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_command, "run_benchmark", lambda *a, **k: {"failed": [{"label": "x"}]})
    assert bench_cli.main(["--out", str(tmp_path / "o"), "--retry-failed"]) == 1
    assert "1 run(s) failed (see the report); rerun with --retry-failed" in capsys.readouterr().err


def test_the_single_task_row_says_which_seed_failed_or_diverged():
    """A configuration's row said '(seed 1 failed)', the single-task reference's row nothing, though its scores then
    leave that seed out for every task (only the findings named the run)."""
    r = json.loads((Path(__file__).parent / "fixtures" / "bench" / "clip_quick_results.json").read_text())
    r["configs"]["single-retrieval"]["failed_seeds"] = [1]
    r["configs"]["single-vqa"]["diverged_seeds"] = [1]
    row = next(line for line in render(r).splitlines() if line.startswith("| single-task lora"))
    assert row.startswith("| single-task lora (each task alone) (seed 1 diverged: vqa; seed 1 failed: retrieval) |")
    r["configs"]["single-vqa"]["diverged_seeds"] = []
    assert "| single-task lora (each task alone) (seed 1 failed: retrieval) |" in render(r)
    # a task whose runs all failed has no step time: it counted as 0 s in the row's mean
    r["configs"]["single-retrieval"]["step_s"] = None
    row = next(line for line in render(r).splitlines() if line.startswith("| single-task lora"))
    left = [c["step_s"] for c in r["configs"].values() if c["group"] == "single" and c["step_s"]]
    assert len(left) == 2 and row.endswith(f"| {sum(left) / 2:.3f} |"), row


def test_a_single_task_reference_missing_a_seed_is_not_compared_in_the_best_line():
    """The best line set the single-task reference's mean over seed 0 alone (a run of seed 1 failed) against the
    joint means over seeds 0 and 1 and called it 'higher'."""
    r = json.loads((Path(__file__).parent / "fixtures" / "bench" / "clip_quick_results.json").read_text())
    r["single_task"]["scores"]["average"]["mean"] = 0.6
    assert "scores 0.600 ± 0.012, higher." in render(r)
    del r["single_task"]["per_seed"]["1"]
    r["single_task"]["scores"]["average"]["n"] = 1
    line = next(s for s in render(r).splitlines() if s.startswith("- Best average"))
    assert line.endswith("each task trained alone (the single-task reference) scores 0.600 over seed 0 and lora r=8 "
                         "over seeds 0, 1 (a run failed or diverged): means over other seeds, not compared."), line


def test_a_failed_single_task_seed_is_not_said_to_leave_the_best_score_comparison():
    """A single-task configuration's failed seed was 'left out of the best-score comparison, which needs every seed':
    single-task configurations are never in it."""
    from mtl_lora_vl.benchmark.analysis import _failed
    from mtl_lora_vl.benchmark.grid import _config

    single, joint = _config("single-vqa", "single", "lora, vqa alone", ["vqa"]), _config("m", "method", "m", ["vqa"])
    runs = {c.cid: [{"key": f"{c.cid}-1", "label": c.label, "seed": 1, "lr": 1e-3, "failed": "boom", "log": "x"}]
            for c in (single, joint)}
    scored = {c.cid: {"per_seed": {"0": {}}} for c in (single, joint)}
    effects = {f["label"]: f["effect"] for f in _failed([single, joint], runs, {}, {"single-vqa": 1e-3, "m": 1e-3},
                                                         scored)}
    assert effects["lora, vqa alone"].startswith("its scores are over the 1 seed that finished; the single-task "
                                                 "reference (each task trained alone) is over the seeds where every")
    assert "best-score" not in effects["lora, vqa alone"]
    assert effects["m"].startswith("its scores are over the 1 seed that finished, and paired differences use the")
    assert effects["m"].endswith("left out of the best-score comparison, which needs every seed")
def test_a_failed_run_lets_go_of_its_memory_when_it_is_recorded(tmp_path):
    # The next run starts right after: a failed run's model (on the GPU after an out-of-memory; a model holds reference
    # cycles) must be freed by then, not kept by the exception's traceback or left to the garbage collector's timing.
    settings = _settings(tmp_path, methods=["lora"], seeds=1)
    held: list[weakref.ref] = []

    def out_of_memory(opts: TrainOptions) -> Path:
        model = torch.nn.Linear(256, 256)
        model.me = [model]   # a reference cycle, as an adapted model's
        held.append(weakref.ref(model.weight))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    runner = Runner(tmp_path / "b", settings, {"vqa": "vqa", "retrieval": "retrieval"}, out_of_memory, 1,
                    io.StringIO())
    config = method_configs(settings, ["vqa", "retrieval"], {})[0]
    gc.disable()   # (a collection at the wrong moment would hide the reference)
    try:
        record = runner.run(RunSpec(config, 0, 3e-3, tune=True))
        alive = held[0]() is not None
    finally:
        gc.enable()
    assert record["failed"].startswith("OutOfMemoryError") and not alive


def test_a_single_task_run_that_failed_at_a_joint_method_s_rate_leaves_the_same_rate_table():
    """The same-rate interference took the single-task tuning run at the joint method's rate whatever it held: one that
    failed (no scores) ended the analysis with a TypeError after the whole grid had run, and every rerun again."""
    from mtl_lora_vl.benchmark.analysis import _same_lr_interference
    from mtl_lora_vl.benchmark.grid import _config

    tasks = ["vqa", "retrieval"]
    joint = _config("lora-r8", "method", "lora r=8", tasks, method="lora")
    singles = [_config(f"single-{t}", "single", f"lora, {t} alone", [t], method="lora") for t in tasks]
    final = {"lora-r8": [{"seed": 0, "lr": 1e-3, "tasks": {"vqa": 0.5, "retrieval": 0.7}}]}
    tuning = {"single-vqa": [{"seed": 0, "lr": 1e-3, "tasks": {"vqa": 0.4}}],
              "single-retrieval": [{"seed": 0, "lr": 1e-3, "tasks": {"retrieval": 0.6}}]}
    picked = {"lora-r8": 1e-3, "single-vqa": 1e-3, "single-retrieval": 1e-3}
    same = _same_lr_interference(tasks, [joint, *singles], final, tuning, picked)
    assert same["lora-r8"]["vqa"] == pytest.approx(0.1) and same["lora-r8"]["average"] == pytest.approx(0.1)
    tuning["single-vqa"] = [{"seed": 0, "lr": 1e-3, "failed": "OutOfMemoryError: boom", "tasks": None, "val": None}]
    assert _same_lr_interference(tasks, [joint, *singles], final, tuning, picked) == {}
