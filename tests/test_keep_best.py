"""--keep-best and --patience: the run finishes with the adapter and heads of its best validation evaluation (the
last step's included), stops early when told, and a resumed run chooses as an uninterrupted one."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from test_train import adapter_tensors, small_specs

from mtl_lora_vl.cli import eval_main, train_main
from mtl_lora_vl.training import step as step_module
from mtl_lora_vl.training.validation import Best


def _args(tmp: Path, run: Path, *extra: str, steps: int = 8) -> list[str]:
    return ["--tasks", small_specs(tmp), "--steps", str(steps), "--batch-size", "8", "--workers", "0",
            "--log-every", "2", "--save-every", "2", "--eval-batch-size", "32", "--warmup", "0", "--eval-every", "2",
            "--keep-best", "--skip-zero-shot", "--out", str(run), "-q", *extra]


def _evaluations(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval/selection" in r]


def test_best_keeps_the_highest_score_and_counts_the_evaluations_since():
    best = Best()
    w = {"a": torch.ones(2)}
    assert best.offer(2, 0.5, w) and best.step == 2 and best.since == 0
    w["a"] += 1   # the kept copy does not follow the parameter
    assert not best.offer(4, 0.5, w) and not best.offer(6, math.nan, w) and best.since == 2
    assert torch.equal(best.state["a"], torch.ones(2)) and best.exhausted(2) and not best.exhausted(3)
    assert not best.exhausted(0)
    again = Best.from_state(best.state_dict())
    assert (again.step, again.score, again.since, again.last) == (2, 0.5, 2, 6) and Best.from_state({}).step == -1


def test_the_run_finishes_with_its_best_validation_evaluation(tmp_path):
    """At --lr 0.002 the small tasks' validation score is highest at the first evaluation (step 2 of 8): the saved
    adapter scores step 2's validation numbers, not the last step's."""
    run = tmp_path / "run"
    assert train_main(_args(tmp_path, run, "--lr", "0.002")) == 0
    evals = _evaluations(run)
    assert [r["step"] for r in evals] == [2, 4, 6, 8]   # the last step is scored too
    top = max(evals, key=lambda r: r["eval/selection"])
    selected = json.loads((run / "eval.json").read_text())["selected"]
    assert selected["step"] == top["step"] != 8 and selected["score"] == pytest.approx(top["eval/selection"])
    out = tmp_path / "val"
    assert eval_main(["--adapter", str(run / "adapter"), "--tasks", small_specs(tmp_path), "--split", "val",
                      "--batch-size", "32", "--out", str(out), "-q"]) == 0
    scored = json.loads((out / "eval.json").read_text())["tasks"]
    for task, r in scored.items():
        assert r["adapted"] == pytest.approx(top[f"eval/{task}/{r['metric']}"]), task


def test_patience_stops_after_evaluations_without_a_higher_score(tmp_path):
    """At a learning rate too small to change a score, the second evaluation is no better: --patience 1 stops at
    step 4 of 12 and the run finishes with step 2's adapter."""
    run = tmp_path / "run"
    assert train_main(_args(tmp_path, run, "--lr", "1e-12", "--patience", "1", steps=12)) == 0
    assert [r["step"] for r in _evaluations(run)] == [2, 4]
    assert max(r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())) == 4
    selected = json.loads((run / "eval.json").read_text())["selected"]
    assert selected["step"] == 2 and selected["stopped_early_at"] == 4


def test_a_resumed_run_chooses_as_an_uninterrupted_one(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    assert train_main(_args(tmp_path, straight, "--lr", "0.002")) == 0
    cut = tmp_path / "cut"
    real, calls = step_module.forward_backward, []

    def interrupted(*args, **kwargs):   # a second Ctrl-C in step 6: the checkpoint of step 4 (best: step 2) stays
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr("mtl_lora_vl.training.train.forward_backward", interrupted)
    assert train_main(_args(tmp_path, cut, "--lr", "0.002")) == 130
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["best"]["step"] == 2
    monkeypatch.setattr("mtl_lora_vl.training.train.forward_backward", real)
    assert train_main(["--resume", str(cut), "-q"]) == 0
    a, b = adapter_tensors(straight), adapter_tensors(cut)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0, msg=k)
    assert [json.loads((d / "eval.json").read_text())["selected"] for d in (straight, cut)] == [
        json.loads((straight / "eval.json").read_text())["selected"]] * 2


@pytest.mark.parametrize("extra, message", [
    (["--keep-best"], r"--keep-best chooses among the validation evaluations of --eval-every N"),
    (["--patience", "2"], r"--patience 2: counts evaluations without a better --keep-best score"),
])
def test_options_that_would_do_nothing_are_refused(tmp_path, capsys, extra, message):
    args = ["--tasks", small_specs(tmp_path), "--out", str(tmp_path / "run"), *extra]
    assert train_main(args) == 2
    assert re.search(message, capsys.readouterr().err)
