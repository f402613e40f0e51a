"""Two gloo processes: sharded evaluation scores what one process scores, and a resumed DDP run (every
rank's generators restored from its own state) repeats the uninterrupted one bit for bit."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import ddp_lm
import ddp_step
import gathered_negatives
import pytest
import rng_kind
import sharded_eval
import torch
from safetensors.torch import load_file

from mtl_lora_vl import distributed
from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.cli import eval_main
from mtl_lora_vl.distributed import DistInfo
from mtl_lora_vl.io import ADAPTER_WEIGHTS

TESTS = Path(__file__).resolve().parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
pytestmark = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                reason="built-in backbone not built (python scripts/pretrain_backbone.py)")


#: Marks every process of one torchrun (the agent, its ranks, their loader workers: they inherit the environment), so
#: that a test's clean-up finds those an agent that died left running under PID 1.
RUN_MARK = "MTL_LORA_VL_TEST_TORCHRUN"


def torchrun(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *args]
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, **(env or {}), RUN_MARK: mark})
    proc.mark = mark   # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float = 400, ok: bool = True) -> tuple[str, str]:
    """``proc``'s output once it ends: exit status 0 when ``ok``, else not 0. A run still going after
    ``timeout`` fails with every one of its processes' Python stacks (see :func:`_stacks`)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{' '.join(proc.args[3:])} did not end within {timeout} s:\n{_stacks(proc)}") from None
    assert (proc.returncode == 0) == ok, (proc.returncode, err[-4000:])
    return out, err


def _stacks(proc: subprocess.Popen) -> str:
    """What a hung torchrun was doing: its processes (the agent, the ranks and their loader workers, found by
    the script they run, since a worker whose rank ended is no longer the agent's descendant, then the run's others
    its mark finds: an evaluation loader's fork server and its workers) dump their Python stacks
    (``PYTHONFAULTHANDLER``, on SIGABRT) into the run's stderr, which is returned with the processes' states (a run
    hung in CI once, at the end of a resumed run, and did not repeat in 41 tries here). Every process of the run is
    killed before its output is read to the end: a fork server and its workers, which outlive a killed rank (they
    watch the server, not the rank), held the run's pipes, and the read waited for ever."""
    import psutil

    script = next(a for a in proc.args[3:] if a.endswith(".py"))   # the run's script, after torchrun's options
    found = [p for p in psutil.process_iter(["cmdline"]) if script in (p.info["cmdline"] or []) and p.pid != proc.pid]
    found += [p for p in run_processes(proc) if p.pid != proc.pid and p.pid not in {f.pid for f in found}]
    agent = [psutil.Process(proc.pid)] if proc.poll() is None else []
    states = []
    for p in found + agent:
        with contextlib.suppress(psutil.Error):   # (one that ended meanwhile is left out)
            states.append(f"pid {p.pid} ppid {p.ppid()} {p.status()}: {' '.join(p.cmdline()[:4])}")
    for p in agent:   # paused: a rank's end would make it stop the others before they say where they are
        p.suspend()
    for p in found + agent:   # one at a time: their dumps would interleave in the one pipe
        with contextlib.suppress(psutil.Error):
            p.resume()
            p.send_signal(signal.SIGABRT)
        deadline = time.time() + 10
        with contextlib.suppress(psutil.Error):   # ended: gone, or a zombie its paused parent has not reaped
            while p.status() != psutil.STATUS_ZOMBIE and time.time() < deadline:
                time.sleep(0.05)
    found += agent
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=30)
    for p in [*found, *run_processes(proc)]:   # (the latter: any started since, e.g. a fork server's new worker)
        with contextlib.suppress(psutil.Error):
            p.kill()
    out, err = proc.communicate()
    return "\n".join(states) + f"\nagent exit status {proc.returncode}\nstderr:\n{err}"


def run_processes(proc: subprocess.Popen) -> list:
    """Every process of the torchrun ``proc`` still there, the agent's descendants and those its mark names (a
    rank whose agent died is no longer the agent's descendant)."""
    import psutil

    found = {}
    if proc.poll() is None:   # (an agent reaped already: its pid may be another process's now)
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(proc.pid)
            found = {p.pid: p for p in [*root.children(recursive=True), root]}
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.pid not in found and p.environ().get(RUN_MARK) == proc.mark:
                found[p.pid] = p
    return list(found.values())


def kill_run(proc: subprocess.Popen) -> None:
    """Kill every process of the torchrun ``proc`` (its ranks run in sessions of their own), then reap it."""
    import psutil

    for p in run_processes(proc):
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.communicate()


@pytest.fixture
def procs():
    """Started torchrun processes; any of their processes still running when the test ends (it failed) are killed,
    ranks whose agent is gone included."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:   # the agent and its ranks hold the pipes: killing the agent alone left communicate()
        kill_run(p)     # waiting on them for ever


def _floats_near(value: object) -> object:
    """``value`` with every float as ``pytest.approx`` of it (1e-4), for comparing nested results."""
    if isinstance(value, float):
        return pytest.approx(value, abs=1e-4)
    if isinstance(value, dict):
        return {k: _floats_near(v) for k, v in value.items()}
    return [_floats_near(v) for v in value] if isinstance(value, list) else value


def test_sharded_evaluation_equals_one_process(tmp_path, procs):
    proc = torchrun(str(TESTS / "sharded_eval.py"), str(tmp_path / "ddp"), str(tmp_path / "ddp.json"))
    procs.append(proc)
    one = json.loads(json.dumps(sharded_eval.scores(tmp_path / "one"), sort_keys=True))  # while it runs
    finish(proc)
    two = json.loads((tmp_path / "ddp.json").read_text())
    shards = two.pop("shards")
    assert two == _floats_near(one)   # (prediction rows hold scores: batches of other sizes round them otherwise)
    assert {k: v for k, v in two.items() if k != "predictions"} == {k: v for k, v in one.items() if k != "predictions"}
    # rank 0 scored only its half of every sharded list: vqa, caption_cls, retrieval
    # images and texts, captioning images, for zero-shot and adapted
    assert shards and all(start == 0 and stop == n // 2 for n, start, stop in shards)
    assert {n for n, _, _ in shards} >= {13, 5}
    assert set(one["test"]) == {"vqa", "retrieval", "caption_cls"}
    assert any(r["adapted"] != r["zero_shot"] for r in one["test"].values())
    assert set(one["val_adapted"]) == {"vqa", "retrieval", "caption_cls"}
    # the prediction rows (eval --predictions) are one process's: every scored row once, in split order, with both
    # passes (compared whole above: same inputs, references and predictions)
    assert set(one["predictions"]) == {"vqa", "retrieval", "caption_cls"}
    for task, rows in one["predictions"].items():
        assert [r["index"] for r in rows] == sorted({r["index"] for r in rows}), task
        assert len(rows) == one["test"][task]["n"] and all("adapted" in r and "zero_shot" in r for r in rows), task
    assert [r["index"] for r in one["captioning"]["records"]] == list(range(5))


def test_two_ranks_train_retrieval_on_the_global_batchs_negatives(tmp_path, procs):
    """Each rank's InfoNCE took its negatives from its own rows only: two ranks at batch 4 trained another loss
    than one process at batch 8. Now the loss and the DDP-averaged gradients are that process's (rows 1 and 6,
    on different ranks, show one image and stay positives)."""
    proc = torchrun(str(TESTS / "gathered_negatives.py"), str(tmp_path / "ddp"), str(tmp_path / "ddp.json"))
    procs.append(proc)
    one = gathered_negatives.loss_and_grads(tmp_path / "one", DistInfo())   # while it runs
    finish(proc)
    two = json.loads((tmp_path / "ddp.json").read_text())
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-6)
    assert two["grads"].keys() == one["grads"].keys() and len(one["grads"]) > 100
    for name, grad in one["grads"].items():
        assert torch.tensor(two["grads"][name]) == pytest.approx(torch.tensor(grad), abs=1e-5), name
    assert any(any(g != 0 for g in grad) for name, grad in one["grads"].items() if "lora_A" in name)


def test_two_ranks_take_the_accumulated_step_one_process_takes_on_their_rows(tmp_path, procs):
    """The whole step, not one forward: the loader's rank chunks, the trainer's DDP wrapping, ``no_sync`` on the
    first of two micro-batches and each micro-batch's 1/accumulate give two ranks at batch 4 the losses and
    averaged gradients of one process at batch 8 (vqa's per-rank means, retrieval's gathered negatives)."""
    proc = torchrun(str(TESTS / "ddp_step.py"), str(tmp_path / "ddp"), str(tmp_path / "ddp.json"))
    procs.append(proc)
    one = ddp_step.step_grads(tmp_path / "one", DistInfo())   # while it runs
    finish(proc)
    two = json.loads((tmp_path / "ddp.json").read_text())
    _assert_same_step(one, two)


def _assert_same_step(one: dict, two: dict) -> None:
    """One process's accumulated step (16 rows) and two ranks': the same losses (1e-6) and gradients (1e-5)."""
    assert two["samples"] == one["samples"] == 16
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-6)
    assert two["grads"].keys() == one["grads"].keys() and len(one["grads"]) > 100
    for name, grad in one["grads"].items():
        assert torch.tensor(two["grads"][name]) == pytest.approx(torch.tensor(grad), abs=1e-5), name


def test_generative_step_and_sharded_generation_on_two_ranks_are_one_processs(tmp_path, procs):
    """The generative path (built-in LLaVA, vqa + captioning): two ranks at batch 4 take the accumulated step one
    process takes at batch 8 -- each task's loss the mean of its rows' LM losses, the ranks holding equal counts of
    each task's rows, so DDP's average weighs every row alike -- and greedy generation split over the ranks scores
    and records what one process does, on splits of odd sizes (15 questions, 5 images: no row scored twice)."""
    proc = torchrun(str(TESTS / "ddp_lm.py"), str(tmp_path / "ddp"), str(tmp_path / "ddp.json"))
    procs.append(proc)
    one = json.loads(json.dumps(ddp_lm.step_and_scores(tmp_path / "one", DistInfo())))   # while it runs
    finish(proc)
    two = json.loads((tmp_path / "ddp.json").read_text())
    _assert_same_step(one, two)
    # rank 0 generated for its half of each split only (zero-shot and adapted), and the scores are one process's
    assert sorted(two["shards"]) == [[5, 0, 2]] * 2 + [[15, 0, 7]] * 2
    assert two["test"] == one["test"] and set(one["test"]) == {"vqa", "captioning"}
    assert {t: r["n"] for t, r in one["test"].items()} == {"vqa": 15, "captioning": 5}
    assert one["test"]["captioning"]["adapted"] != one["test"]["captioning"]["zero_shot"]
    assert two["predictions"] == _floats_near(one["predictions"])
    for task, rows in one["predictions"].items():   # every row once, in split order, with both passes
        assert [r["index"] for r in rows] == list(range(one["test"][task]["n"])), task
        assert all("adapted" in r and "zero_shot" in r for r in rows), task


def test_every_rank_takes_rank_0s_run_dir_or_its_error(tmp_path, procs):
    """A default run name spelled differently on two ranks (started in different seconds): both get rank 0's.
    An --out another run holds: rank 0's claim fails and rank 1 stops with the same message (it waited at a
    barrier for a rank that had stopped)."""
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    (tmp_path / "afile").write_text("x")
    proc = torchrun(str(TESTS / "claim_ranks.py"), str(tmp_path))
    procs.append(proc)
    finish(proc, timeout=120)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0]["default"] == got[1]["default"] == str(tmp_path / "default-rank0")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("default")) == ["default-rank0"]
    assert got[0]["taken"] == got[1]["taken"] and "another run created or wrote to it" in got[0]["taken"]
    assert (got[0]["under_a_file"] == got[1]["under_a_file"]
            and "cannot make the run directory" in got[0]["under_a_file"])
    assert (tmp_path / "taken" / "config.json").read_text() == "{}"


def _step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - not there yet, or being replaced
        return 0


def _copy_at_checkpoint(run: Path, dest: Path, proc: subprocess.Popen) -> int:
    """Copy ``run``'s checkpoint files as soon as it has a checkpoint (what a kill would leave); its step."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "checkpoint.pt").is_file() and _step(run / "checkpoint.pt") > 0:
            dest.mkdir()
            shutil.copy(run / "checkpoint.pt", dest)
            shutil.copy(run / "checkpoint-rank1.pt", dest)
            shutil.copy(run / "config.json", dest)
            lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
            (dest / "metrics.jsonl").write_text("".join(x for x in lines if x.endswith("\n")))
            return _step(dest / "checkpoint.pt")
        time.sleep(0.02)
    raise AssertionError("the run ended before a checkpoint could be copied")


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


def test_ddp_resume_repeats_the_run_and_its_sharded_scores_match_one_process(tmp_path, procs):
    steps = 8
    tasks = f"{rng_kind.small_spec(tmp_path, 'vqa')},{rng_kind.small_spec(tmp_path, 'retrieval', kind=rng_kind.KIND)}"
    args = ["--tasks", tasks, "--steps", str(steps), "--batch-size", "6", "--workers", "1", "--dropout", "0.1",
            "--log-every", "2", "--save-every", "3", "--eval-every", "4", "--eval-batch-size", "32",
            "--warmup", "2", "--device", "cpu"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = torchrun(str(TESTS / "rng_kind.py"), *args, "--out", str(straight), "--predictions")
    procs.append(proc)
    at = _copy_at_checkpoint(straight, killed, proc)
    out, err = finish(proc)
    assert "world size 2" in err and out.count("| vqa | vqa_accuracy |") == 1   # rank 0 logs and reports
    assert 0 < at < steps

    # resumed with --workers 0 (a resume may change it): its rows and periodic and final evaluations are read in
    # the ranks, which still repeat the run with workers bit for bit; the resume below keeps --workers 1
    finish(torchrun(str(TESTS / "rng_kind.py"), "--resume", str(killed), "--workers", "0", "--device", "cpu"))
    a, b = (load_file(str(d / "adapter" / ADAPTER_WEIGHTS)) for d in (straight, killed))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0, msg=k)
    assert _rows(killed) == _rows(straight)
    assert any("eval/sampled/mean_recall" in r for r in _rows(straight))   # periodic evaluation, sharded

    # SIGTERM reaching rank 1 alone inside step 3: both ranks finish step 3, agree to stop, save step 3
    # (rank 1's file too), and the resumed run is the uninterrupted one.
    stopped = tmp_path / "stopped"
    out, err = finish(torchrun(str(TESTS / "rng_kind.py"), *args, "--out", str(stopped),
                               env={"SIGTERM_RANK_STEP": "1:3"}), ok=False)   # a stopped run is no success
    assert _step(stopped / "checkpoint.pt") == 3 and not (stopped / "adapter").exists()
    assert "stopped at step 3" in err and "exitcode  : 143" in err
    finish(torchrun(str(TESTS / "rng_kind.py"), "--resume", str(stopped), "--workers", "1", "--device", "cpu"))
    c = load_file(str(stopped / "adapter" / ADAPTER_WEIGHTS))
    assert all(torch.equal(c[k], a[k]) for k in a) and _rows(stopped) == _rows(straight)

    # The run's final evaluation (sharded over two processes) equals one process scoring its adapter.
    ddp = json.loads((straight / "eval.json").read_text())["tasks"]
    with rng_kind.registered():
        assert eval_main(["--adapter", str(straight / "adapter"), "--batch-size", "32", "--out",
                          str(tmp_path / "one"), "--predictions"]) == 0
    one = json.loads((tmp_path / "one" / "eval.json").read_text())["tasks"]
    assert set(ddp) == {"vqa", "sampled"}
    for task in ddp:
        assert (ddp[task]["zero_shot"], ddp[task]["adapted"]) == (one[task]["zero_shot"], one[task]["adapted"])
        assert ddp[task]["details"] == one[task]["details"]

    # evaluate_vl under torchrun: each rank scores its shard, rank 0 alone prints and writes; same scores.
    out, err = finish(torchrun(str(TESTS / "rng_kind.py"), "eval", "--adapter", str(straight / "adapter"),
                               "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path / "two"),
                               "--predictions"))
    assert out.count("| vqa | vqa_accuracy |") == 1
    two = json.loads((tmp_path / "two" / "eval.json").read_text())["tasks"]
    for task in one:
        assert (two[task]["zero_shot"], two[task]["adapted"], two[task]["details"]) == \
            (one[task]["zero_shot"], one[task]["adapted"], one[task]["details"])
    # train --predictions and eval --predictions under torchrun: rank 0 writes one process's rows
    for task in ("vqa", "sampled"):
        rows = [(d / "predictions" / f"{task}.jsonl").read_text().splitlines() for d in (straight, tmp_path / "two")]
        mine = [json.loads(line) for line in (tmp_path / "one" / "predictions" / f"{task}.jsonl").open()]
        assert len(mine) == one[task]["n"] and all({"adapted", "zero_shot"} <= set(r) for r in mine), task
        for lines in rows:
            assert [json.loads(line) for line in lines] == _floats_near(mine), task


def test_each_rank_names_itself_in_the_broken_images_it_met_in_training(tmp_path, procs):
    """Each rank replaces the rows whose image is broken in its own batches and warns once per file it finds: two
    ranks meeting one file printed the same line twice, and no line said which rank met which file. Now each line
    names its rank, and none is printed twice."""
    from collections import Counter

    proc = torchrun(str(TESTS / "broken_images.py"), "--tasks", str(rng_kind.small_spec(tmp_path, "vqa")),
                    "--steps", "6", "--batch-size", "6", "--workers", "0", "--skip-zero-shot", "--device", "cpu",
                    "--out", str(tmp_path / "run"))
    procs.append(proc)
    _, err = finish(proc, timeout=200)
    lines = [x for x in err.splitlines() if "its rows are replaced by other rows" in x]
    assert lines and max(Counter(lines).values()) == 1, Counter(lines).most_common(2)
    assert all(f"rank {r}: task 'vqa': " in err for r in (0, 1)), err[-3000:]


def test_ddp_trains_a_task_that_never_runs_the_text_tower(tmp_path, procs):
    """Classification alone leaves the text tower's adapters without gradients: DDP must be told, or it
    stops at step 2 waiting for their reduction. The set-up's warning (val reads the training rows) and those of the
    final evaluation (no test split; --keep-best scores on val) are said once, not once per rank, and rank 0 alone
    reports. With --eval-every and --keep-best every rank chooses the same evaluation (test_train's two-process
    gloo run, merged here: one process group fewer)."""
    from PIL import Image

    for c, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):   # an ImageFolder task with no test split
        (tmp_path / "data" / "train" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), tuple(max(0, x - 20 * i) for x in colour)).save(
                tmp_path / "data" / "train" / c / f"{i}.png")
    spec = tmp_path / "colours.toml"
    spec.write_text('name = "colours"\nkind = "classification"\ntemplates = ["a {}."]\n[data]\nformat = '
                    '"imagefolder"\n[data.train]\nfolder = "train"\n[data.val]\nfolder = "train"\n')
    run = tmp_path / "run"
    proc = torchrun(str(TESTS / "rng_kind.py"), "--tasks", str(spec), "--data-root", str(tmp_path / "data"),
                    "--steps", "4", "--batch-size", "4", "--log-every", "2", "--eval-every", "2", "--keep-best",
                    "--skip-zero-shot", "--eval-batch-size", "32", "--workers", "0", "--device", "cpu",
                    "--out", str(run))
    procs.append(proc)
    out, err = finish(proc)
    assert (run / "adapter").is_dir() and "world size 2" in err
    for said in ("task colours has no test split: scored on val instead",
                 "[data.val] reads the same rows as [data.train]", "--keep-best: colours scored at the end on val"):
        assert err.count(said) == 1, (said, err[-3000:])
    assert out.count("| colours | val |") == 1, out   # only rank 0 reports
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    evals = [r for r in rows if "eval/selection" in r]
    assert [r["step"] for r in evals] == [2, 4]
    chosen = max(evals, key=lambda r: r["eval/selection"])["step"]
    assert json.loads((run / "eval.json").read_text())["selected"]["step"] == chosen


def test_ddp_trains_a_coca_whose_decoder_no_task_runs(tmp_path, procs):
    """A CoCa's default targets include its caption decoder; retrieval alone never runs it, so its adapters get
    no gradient and DDP stopped at step 2 waiting for their reduction (one process trained fine)."""
    from vl_tiny import tiny_backbone_dir

    coca = tiny_backbone_dir(tmp_path / "coca", coca=True)
    spec = rng_kind.small_spec(tmp_path, "retrieval")
    proc = torchrun(str(TESTS.parent / "scripts" / "train_vl.py"), "--backbone", f"open_clip:{coca}",
                    "--tasks", str(spec),
                    "--steps", "3", "--batch-size", "4", "--skip-zero-shot", "--eval-batch-size", "32",
                    "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "run"))
    procs.append(proc)
    finish(proc)
    assert (tmp_path / "run" / "adapter").is_dir()


def test_a_rank_failing_its_set_up_leaves_the_run_overwrite_would_replace(tmp_path, procs):
    """Rank 1's set-up fails: rank 0 (whose set-up went fine) moved the --overwrite run aside, then waited for
    rank 1 and was killed by torchrun, leaving the old run in .run.replaced. Now every rank learns of the
    failure before rank 0 claims the directory."""
    run = tmp_path / "run"
    run.mkdir()
    old = json.dumps({"tasks": "caption_cls", "method": "mtl_lora", "out": str(run)})   # a run's (review 207)
    (run / "config.json").write_text(old)
    (run / "metrics.jsonl").write_text("old\n")
    spec = rng_kind.small_spec(tmp_path, "caption_cls")
    proc = torchrun(str(TESTS / "rng_kind.py"), "--tasks", str(spec), "--steps", "2", "--batch-size", "4",
                    "--device", "cpu", "--out", str(run), "--overwrite", env={"FAIL_SETUP_RANK": "1"})
    procs.append(proc)
    _, err = finish(proc, timeout=120, ok=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caption_cls.toml", "run"]
    assert (run / "metrics.jsonl").read_text() == "old\n" and sorted(p.name for p in run.iterdir()) == [
        "config.json", "metrics.jsonl"]
    assert "this rank's set-up failed" in err and "the start-up failed on rank 1 (that process's error says why)" in err


def test_ddp_homogeneous_batches_on_the_generative_path_find_no_unused_parameters(tmp_path, procs):
    """One task per batch on builtin-llava: every task runs the same modules and no head has parameters, so
    DDP need not search for unused ones (it did, and warned each run that it found none, at a cost per step).
    A wrong 'no' would stop the run at step 2 instead."""
    specs = ",".join(str(rng_kind.small_spec(tmp_path, n, n_train=16, n_eval=4)) for n in ("vqa", "captioning"))
    proc = torchrun(str(TESTS.parent / "scripts" / "train_vl.py"), "--backbone", "builtin-llava",
                    "--tasks", specs, "--batch-mode", "homogeneous", "--steps", "3", "--batch-size", "2",
                    "--skip-zero-shot", "--eval-batch-size", "8", "--workers", "0", "--device", "cpu",
                    "--out", str(tmp_path / "run"))
    procs.append(proc)
    _, err = finish(proc)
    assert "find_unused_parameters=True was specified" not in err
    assert (tmp_path / "run" / "adapter").is_dir()


def test_ddp_trains_qwen2vl_on_mixed_batches_and_its_sharded_scores_match_one_process(tmp_path, procs):
    """Qwen2-VL's packed vision tower under DDP: mixed-task batches (the tower's hooks, the packed banks) train on
    two ranks, and the run's sharded evaluation scores what one process scores from the saved adapter."""
    from qwen_tiny import save_tiny_qwen2vl

    folder = save_tiny_qwen2vl(tmp_path / "qwen")
    specs = ",".join(str(rng_kind.small_spec(tmp_path, n, n_train=16, n_eval=6)) for n in ("vqa", "captioning"))
    proc = torchrun(str(TESTS.parent / "scripts" / "train_vl.py"), "--backbone", f"hf:{folder}",
                    "--tasks", specs, "--steps", "3", "--batch-size", "4", "--warmup", "1", "--eval-batch-size", "4",
                    "--device", "cpu", "--out", str(tmp_path / "run"))   # default --workers: the ranks pool their cores
    procs.append(proc)
    finish(proc)
    ddp = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert eval_main(["--adapter", str(tmp_path / "run" / "adapter"), "--out", str(tmp_path / "ev"),
                      "--workers", "0"]) == 0
    one = json.loads((tmp_path / "ev" / "eval.json").read_text())
    for name in ("vqa", "captioning"):
        assert one["tasks"][name]["n"] == ddp["tasks"][name]["n"] > 0
        for which in ("zero_shot", "adapted"):
            assert one["tasks"][name][which] == pytest.approx(ddp["tasks"][name][which], abs=1e-6), (name, which)
            assert one["tasks"][name]["details"][which] == pytest.approx(ddp["tasks"][name]["details"][which])
    assert ddp["tasks"]["captioning"]["details"]["adapted"]["cider"] > 0   # (the tiny model's VQA scores are 0)


def test_a_hung_run_fails_with_its_processes_stacks(tmp_path, procs):
    """The diagnosis a hang in CI lacked: ``finish`` reports where each process of a run that does not end is. Each
    rank has a child started from Python's fork server, as an evaluation loader's workers are in a process group:
    killing the ranks left the server and its child running, holding the run's pipes, and ``finish`` waited for
    ever (a run slowed past its time under load hung so here)."""
    script = tmp_path / "hangs.py"
    script.write_text("import multiprocessing, os, pathlib, time\n\ndef wait_forever():\n    time.sleep(3600)\n\n"
                      "if __name__ == '__main__':\n"
                      "    multiprocessing.get_context('forkserver').Process(target=time.sleep, args=(3600,)).start()\n"
                      f"    pathlib.Path({str(tmp_path)!r}, os.environ['RANK']).touch()\n    wait_forever()\n")
    proc = torchrun(str(script))
    procs.append(proc)
    deadline = time.time() + 120
    while not all((tmp_path / r).exists() for r in "01") and time.time() < deadline:
        time.sleep(0.1)
    left: list[int] = []

    def unblock() -> None:   # what finish left holding the pipes, killed so that the test ends (and fails)
        import psutil

        for p in run_processes(proc):
            if p.pid != proc.pid:
                left.append(p.pid)
                with contextlib.suppress(psutil.Error):
                    p.kill()

    watchdog = threading.Timer(240, unblock)
    watchdog.start()
    try:
        with pytest.raises(AssertionError) as e:
            finish(proc, timeout=1)
    finally:
        watchdog.cancel()
    assert not left, f"processes {left} of the run held its output after finish had killed its processes"
    msg = str(e.value)
    assert "did not end within 1 s" in msg and msg.count(f"{script}\", line 4 in wait_forever") == 2   # both ranks
    assert proc.poll() is not None and not run_processes(proc)


@pytest.mark.parametrize("own_error", [False, True])
def test_a_failed_start_up_names_the_rank_and_destroys_the_process_group(monkeypatch, own_error):
    """Review 192: every rank said the failure's error was "above" (the order of the ranks' output is a race), and
    the process group was left undestroyed (NCCL warns at exit). The collective is stubbed: rank 2 of 3 failed."""
    import mtl_lora_vl.distributed as distributed

    destroyed = []
    monkeypatch.setattr(distributed, "max_over_ranks", lambda value, info: 3)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: destroyed.append(1))
    info = DistInfo(rank=0, world_size=3)
    with pytest.raises(ValueError if own_error else distributed.StartupError) as got:
        distributed.all_ready(info, ValueError("own") if own_error else None)
    assert destroyed == [1]
    if not own_error:
        assert "the start-up failed on rank 2" in str(got.value)
    destroyed.clear()
    monkeypatch.setattr(distributed, "max_over_ranks", lambda value, info: 0)
    distributed.all_ready(info)   # no rank failed: the group stays
    assert destroyed == []


def test_ranks_stop_with_a_checkpoint_when_the_agent_is_killed(tmp_path, procs):
    """Review 275: ``kill -9`` of the torchrun agent left both ranks training under PID 1, holding the run's lock (a
    --resume was refused "a run is training in it now") and ports. Now the kernel SIGTERMs each rank when the agent
    dies: both stop at a step boundary, save a checkpoint and let the lock go; each says the signal it got, with its
    rank."""
    import psutil

    from mtl_lora_vl.rundir import RUN_LOCK, lock_holder

    run = tmp_path / "run"
    proc = torchrun(str(TESTS / "rng_kind.py"), "--tasks", str(rng_kind.small_spec(tmp_path, "caption_cls")),
                    "--steps", "5000", "--batch-size", "2", "--workers", "1", "--log-every", "1", "--save-every",
                    "5000", "--skip-zero-shot", "--device", "cpu", "--out", str(run))
    procs.append(proc)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:   # training: a few steps logged
        if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 3:
            break
        time.sleep(0.1)
    ranks = psutil.Process(proc.pid).children()
    assert len(ranks) == 2 and lock_holder(run / RUN_LOCK) is not None
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(ranks, timeout=60)   # (here 5 to 9 s: the step in progress, the checkpoint)
    assert not alive, f"ranks {[p.pid for p in alive]} still running 60 s after their agent was killed"
    _, err = proc.communicate(timeout=30)   # (loader workers, which hold the pipes too, ended with their ranks)
    step = _step(run / "checkpoint.pt")
    assert err.count(f"stopped at step {step}; checkpoint saved") == 1, err[-3000:]   # rank 0 says it
    # each rank got a SIGTERM and says so once, with its rank (two identical lines said neither whose nor how many)
    assert err.count("SIGTERM: stopping after this step") == 2, err[-3000:]
    assert all(err.count(f"rank {r}: SIGTERM: stopping after this step") == 1 for r in (0, 1)), err[-3000:]
    assert 3 <= step < 5000 and (run / "checkpoint-rank1.pt").is_file() and not (run / "adapter").exists()
    assert lock_holder(run / RUN_LOCK) is None   # a --resume may continue it


def test_a_rank_asks_for_sigterm_when_its_agent_dies_only_under_torchrun_on_linux(monkeypatch):
    """The kernel's parent-death signal is asked for under torchrun on Linux only; a rank whose agent died between
    reading its parent and asking (reparented: no signal would come) SIGTERMs itself. In a process of its own."""
    import mtl_lora_vl.distributed as distributed

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert distributed.end_with_the_agent() is False   # not torchrun
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setattr(distributed.sys, "platform", "darwin")
    assert distributed.end_with_the_agent() is False
    if not sys.platform.startswith("linux"):
        return
    code = ("import ctypes, os, signal\nimport mtl_lora_vl.distributed as d\ngot = []\n"
            "signal.signal(signal.SIGTERM, lambda *a: got.append(a[0]))\nparents = iter([os.getppid(), 1])\n"
            "d.os.getppid = lambda: next(parents)   # the agent dies during the call\n"
            "assert d.end_with_the_agent() is True\nsig = ctypes.c_int()\n"
            "assert ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0) == 0   # PR_GET_PDEATHSIG\n"
            "print(sig.value, got)\n")
    out = subprocess.run([sys.executable, "-c", code], env={**ENV, "TORCHELASTIC_RUN_ID": "x"}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [str(int(signal.SIGTERM)), f"[{int(signal.SIGTERM)}]"]


def test_a_rank_whose_agent_died_before_it_joined_the_group_stops(tmp_path, procs):
    """Review h304: a ``kill -9`` of the agent while its ranks were still importing (seconds: torch, the model
    libraries) left them waiting in ``init_process_group`` for the dead agent's store for 30 minutes (gloo), under PID
    1: the parent-death signal is asked for only there. Now a rank whose parent changed since the package's import
    SIGTERMs itself there. The script waits for a file in place of the long imports."""
    import psutil

    script = tmp_path / "late_join.py"
    script.write_text("import os, pathlib, time\nimport mtl_lora_vl.distributed as d\n"
                      f"here = pathlib.Path({str(tmp_path)!r})\n(here / os.environ['RANK']).touch()\n"
                      "while not (here / 'go').exists():\n    time.sleep(0.05)\n"
                      "d.init_distributed('cpu')\n(here / ('joined' + os.environ['RANK'])).touch()\n")
    proc = torchrun(str(script), env={"PYTHONPATH": str(TESTS.parent)})
    procs.append(proc)
    deadline = time.time() + 120
    while not all((tmp_path / r).exists() for r in "01") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    ranks = psutil.Process(proc.pid).children()
    assert len(ranks) == 2, proc.communicate()[1][-3000:]
    proc.kill()
    proc.wait()
    (tmp_path / "go").touch()
    _, alive = psutil.wait_procs(ranks, timeout=30)
    assert not alive, f"ranks {[p.pid for p in alive]} still waiting 30 s after their agent was killed"
    assert not list(tmp_path.glob("joined*"))


def test_a_start_up_stopped_by_a_signal_is_named_as_stopped(monkeypatch):
    """Helper 548: a rank whose set-up a Ctrl-C or SIGTERM stopped told the others its start-up had "failed (that
    process's error says why)", though it printed no error (a Ctrl-C nothing). The collective is stubbed."""
    sent: list[int] = []
    monkeypatch.setattr(distributed, "max_over_ranks", lambda value, info: sent.append(value) or max(sent))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    with pytest.raises(KeyboardInterrupt):
        distributed.all_ready(DistInfo(rank=1, world_size=3), KeyboardInterrupt())   # what rank 1 sends
    with pytest.raises(distributed.StartupError, match=r"the start-up was stopped on rank 1 \(a Ctrl-C or SIGTERM"):
        distributed.all_ready(DistInfo(rank=0, world_size=3))   # rank 0 receives it
    sent.clear()   # an error on rank 1 (it prints its own): named as failed, not stopped
    with pytest.raises(ValueError):
        distributed.all_ready(DistInfo(rank=1, world_size=3), ValueError("rank 1's own"))
    with pytest.raises(distributed.StartupError, match=r"the start-up failed on rank 1 \(that process's error says"):
        distributed.all_ready(DistInfo(rank=0, world_size=3))
