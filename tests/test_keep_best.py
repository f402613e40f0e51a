"""--keep-best and --patience: the run finishes with the adapter and heads of its best validation evaluation (the
last step's included), stops early when told, and a resumed run chooses as an uninterrupted one; review 184's
findings (a Ctrl-C or error in the final validation, a resumed early-stopped run, options given again at a resume,
scores reported on the selection split, the last losses of an early stop, plot temporaries)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from rng_kind import sigterm_in_step
from test_train import adapter_tensors, small_specs

from mtl_lora_vl.cli import eval_main, train_main
from mtl_lora_vl.training import step as step_module
from mtl_lora_vl.training import validation as validation_module
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
    assert "Adapted: step 2's adapter and heads, chosen by --keep-best on validation (mean headline " \
           f"{selected['score']:.4f}); --patience stopped training at step 4." in (run / "report.md").read_text()


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


def _args4(tmp, run, *extra, steps=4):
    return ["--tasks", small_specs(tmp), "--steps", str(steps), "--batch-size", "8", "--workers", "0",
            "--log-every", "2", "--eval-batch-size", "32", "--warmup", "0", "--eval-every", "2",
            "--keep-best", "--skip-zero-shot", "--out", str(run), "-q", *extra]


def test_ctrl_c_during_the_final_validation_keeps_a_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C while --keep-best scores the last step: the trained steps are checkpointed before it (review 184: the
    final validation ran before the final checkpoint, and a Ctrl-C or error in it lost every step since the last
    periodic checkpoint -- here all of them)."""
    import mtl_lora_vl.training.validation as v
    real, calls = v.evaluate_adapted, []

    def ctrl_c_in_final(*a, **k):
        calls.append(1)
        if len(calls) == 2:   # the final validation (step 4); the first was step 2's
            h = signal.getsignal(signal.SIGINT)
            if callable(h) and h is not signal.default_int_handler:
                h(signal.SIGINT, None)   # the loop's StopRequest: stop after this, saving
            else:
                raise KeyboardInterrupt   # what Python's default SIGINT handler does
        return real(*a, **k)

    monkeypatch.setattr(v, "evaluate_adapted", ctrl_c_in_final)
    run = tmp_path / "run"
    assert train_main(_args4(tmp_path, run, "--save-every", "100")) == 130
    assert (run / "checkpoint.pt").is_file(), "4 trained steps lost: no checkpoint to --resume"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4


def test_all_nan_selection_does_not_lose_the_trained_steps(tmp_path, monkeypatch):
    """Every selection score NaN: finish_with_best raises before the final checkpoint() (review 184), so the
    steps since the last periodic checkpoint are lost and a --resume retrains them only to fail again."""
    import mtl_lora_vl.training.validation as v
    monkeypatch.setattr(v, "selection_score", lambda run, scores: float("nan"))
    run = tmp_path / "run"
    assert train_main(_args4(tmp_path, run, "--save-every", "100")) != 0
    assert (run / "checkpoint.pt").is_file()


def test_resume_of_an_early_stopped_run_says_it_finished(tmp_path, capsys):
    """An early-stopped run (--patience) with eval.json written: --resume should say the run finished (as it does
    for step >= --steps), not 'resumed at step 4/12' as if it would train."""
    run = tmp_path / "run"
    assert train_main(_args4(tmp_path, run, "--lr", "1e-12", "--patience", "1", "--save-every", "2", steps=12)) == 0
    assert json.loads((run / "eval.json").read_text())["selected"]["stopped_early_at"] == 4
    rows_before = (run / "metrics.jsonl").read_text().splitlines()
    capsys.readouterr()
    assert train_main(["--resume", str(run)]) == 0
    assert (run / "metrics.jsonl").read_text().splitlines() == rows_before   # no duplicated rows
    err = capsys.readouterr().err
    assert "the run finished" in err, err[-2000:]


def test_resume_repeating_the_runs_own_keep_best_is_not_told_to_give_eval_every(tmp_path, capsys):
    """`--resume RUN --keep-best` (the run's own value; explicit options equal to the run's are accepted) fails
    with '--keep-best chooses among ... --eval-every N, which is 0 (never); give --eval-every' although the run
    has --eval-every 2: TrainOptions.validate() (train.py:149) checks the command line before resumed_options()
    merges the run's config.json."""
    run = tmp_path / "run"
    assert train_main(_args4(tmp_path, run, "--save-every", "2")) == 0
    capsys.readouterr()
    code = train_main(["--resume", str(run), "--keep-best", "-q"])
    err = capsys.readouterr().err
    assert "give --eval-every" not in err, err
    assert code == 0


def test_keep_best_with_eval_split_val_warns_that_the_report_is_the_selection_split(tmp_path, capsys):
    """README: 'the test split is scored once, on the model validation chose, never used to choose it'. With
    --eval-split val (or a task without a test split: test falls back to val) the reported 'adapted' scores are
    the very numbers the choice maximised (an optimistic max over evaluations), and nothing says so."""
    run = tmp_path / "run"
    assert train_main(_args4(tmp_path, run, "--eval-split", "val", "--save-every", "2")) == 0
    d = json.loads((run / "eval.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    chosen = next(r for r in rows if r.get("eval/selection") is not None and r["step"] == d["selected"]["step"])
    for task, r in d["tasks"].items():   # the reported score is the selection evaluation's own
        assert r["adapted"] == pytest.approx(chosen[f"eval/{task}/{r['metric']}"])
    err = capsys.readouterr().err
    assert any("keep-best" in m and "val" in m for m in err.splitlines()), err


def test_an_early_stop_logs_the_last_training_losses(tmp_path):
    """--patience stops at step 4 of 12 with --log-every 3: step 4's loss is averaged into no row (the loop flushes
    the loss window at `step % log_every == 0 or step == run.total_steps`, train.py:435, and an early stop is
    neither), so metrics.jsonl and plots/training_curves.png end at step 3 though the adapter trained to 4."""
    run = tmp_path / "run"
    assert train_main(_args4(tmp_path, run, "--lr", "1e-12", "--patience", "1", "--log-every", "3",
                            "--save-every", "100", steps=12)) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((run / "eval.json").read_text())["selected"]["stopped_early_at"] == 4
    assert [r["step"] for r in rows if "loss" in r] == [3, 4]
    # each row's lr is the rate its last step trained at (cosine over 12 steps): step 4's, not step 5's
    lrs = [r["lr"] for r in rows if "loss" in r]
    assert lrs == pytest.approx([1e-12 * 0.5 * (1 + math.cos(math.pi * s / 12)) for s in (2, 3)], rel=1e-6, abs=0)


def test_resume_of_a_file_is_not_called_a_missing_folder(tmp_path, capsys):
    """`--resume RUN/checkpoint.pt` (a natural slip) says 'no such folder' of a file that is there (rundir.py:45)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"x")
    assert train_main(["--resume", str(run / "checkpoint.pt")]) == 2
    err = capsys.readouterr().err
    assert "no such folder" not in err, err


def test_a_killed_plot_write_leaves_no_temporary_behind(tmp_path):
    """_save now writes plots through atomic_file (plots/.<name>.*.tmp); remove_stale_temporaries (run at a
    resume) looks only in the run directory's top level (_RUN_OUTPUTS), so a SIGKILL mid-plot leaves the
    temporary in plots/ for good."""
    from mtl_lora_vl.training.checkpoint import remove_stale_temporaries
    (tmp_path / "plots").mkdir()
    left = tmp_path / "plots" / ".training_curves.png.abc123.tmp"
    left.write_bytes(b"half a png")
    remove_stale_temporaries(tmp_path)
    assert not left.exists()


def test_a_kill_after_the_final_validation_row_does_not_log_it_twice(tmp_path, monkeypatch):
    """Killed between the final validation's row and the checkpoint that records it: the resume scores the last
    step again, and its row was in metrics.jsonl twice (review 184's remaining gap)."""
    import mtl_lora_vl.training.train as train_module
    import mtl_lora_vl.training.validation as validation

    real, calls = validation.validate, []

    def killed_after_the_final_row(run, step, log, best):
        real(run, step, log, best)
        calls.append(step)
        if len(calls) == 2:   # step 4's, the final validation: its row is written, its checkpoint is not
            raise KeyboardInterrupt

    for module in (train_module, validation):   # the loop's validations, and the final one
        monkeypatch.setattr(module, "validate", killed_after_the_final_row)
    run = tmp_path / "run"
    assert train_main(_args4(tmp_path, run, "--save-every", "100")) == 130
    for module in (train_module, validation):
        monkeypatch.setattr(module, "validate", real)
    assert train_main(["--resume", str(run), "-q"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/selection" in r] == [2, 4]


def test_a_run_dying_between_its_early_stop_and_its_final_checkpoint_resumes(tmp_path, monkeypatch):
    """--patience stops at step 4, whose periodic checkpoint holds an unlogged loss window (--log-every 3); the
    process dies before the final checkpoint. The resume logs that window at once, with the rate of the run's
    last step: it read a rate only the training loop sets (review 199: UnboundLocalError)."""
    run = tmp_path / "run"

    def dies(self, step):
        raise KeyboardInterrupt

    monkeypatch.setattr("mtl_lora_vl.training.train.ScalerSkips.report", dies)
    args = _args4(tmp_path, run, "--lr", "1e-12", "--patience", "1", "--log-every", "3", "--save-every", "4",
                  steps=12)
    assert train_main(args) == 130
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
    monkeypatch.undo()
    assert train_main(["--resume", str(run), "-q"]) == 0
    assert json.loads((run / "eval.json").read_text())["selected"]["stopped_early_at"] == 4
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [3, 4]   # step 4's window logged once


@pytest.mark.parametrize("where", ["last step", "final validation"])
def test_a_stop_after_the_loop_says_how_to_continue(tmp_path, monkeypatch, capsys, where):
    """SIGTERM in the last step, or during --keep-best's final validation: the run exited 143 without a word (the
    stop inside the loop says "checkpoint saved. Continue the run with --resume"); a preempted job's log showed
    nothing to say the run was not finished nor how to finish it (review 327)."""
    if where == "last step":
        monkeypatch.setattr("mtl_lora_vl.training.train.forward_backward", sigterm_in_step(4))
    else:
        real, calls = validation_module.evaluate_adapted, []

        def sigterm_in_final(*a, **k):
            calls.append(1)
            if len(calls) == 2:   # the final validation (step 4); the first was step 2's
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*a, **k)

        monkeypatch.setattr(validation_module, "evaluate_adapted", sigterm_in_final)
    run = tmp_path / "run"
    assert train_main(_args4(tmp_path, run, "--save-every", "100")) == 143
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
    err = capsys.readouterr().err
    assert f"--resume {run}" in err, err
