"""Resume repeats the uninterrupted run bit for bit: every generator, per rank, and the loader's rows.

The runs use adapter dropout (torch's generator in the training process), temperature task sampling of two
tasks in mixed batches, gradient accumulation (two micro-batches a step), ``--workers 2``, and a task kind
(``rng_kind.SampledRetrievalKind``) that draws from Python's ``random``, NumPy and torch in the loader's rows and
from ``random`` and NumPy in its loss. metrics.jsonl's rows are compared whole (but for their timing). Each
ablation test drops one piece of the saved or seeded state on resume and checks that the run then no longer
matches, so the main test can fail.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import rng_kind
import torch
from safetensors.torch import load_file
from vl_tiny import tiny_backbone

import mtl_lora_vl.data.seeding as seeding
import mtl_lora_vl.training.checkpoint as checkpoint
import mtl_lora_vl.training.train as train_module
from mtl_lora_vl.backbones import builtin_dir
from mtl_lora_vl.cli import train_main
from mtl_lora_vl.data.loader import MultiTaskLoader
from mtl_lora_vl.data.world import build_split
from mtl_lora_vl.distributed import DistInfo, map_shards, shard_bounds, sharded_evaluation
from mtl_lora_vl.io import ADAPTER_WEIGHTS
from mtl_lora_vl.training.rng import preserved_rng, rng_state, seed_everything, set_rng_state

SNAP_AT, STEPS = 4, 8
builtin_only = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file(),
                                  reason="built-in backbone not built (python scripts/pretrain_backbone.py)")


def run_args(tmp: Path) -> list[str]:
    tasks = f"{rng_kind.small_spec(tmp, 'vqa')},{rng_kind.small_spec(tmp, 'retrieval', kind=rng_kind.KIND)}"
    return ["--tasks", tasks, "--steps", str(STEPS), "--batch-size", "4", "--accumulate", "2", "--workers", "2",
            "--dropout", "0.1", "--sampling", "temperature", "--log-every", "2", "--save-every", str(SNAP_AT),
            "--eval-batch-size", "32", "--warmup", "2"]


def adapter_tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / ADAPTER_WEIGHTS))


def losses(run: Path) -> list[dict[str, float]]:
    """metrics.jsonl's rows, whole but for the one timing (samples_per_s): losses, step, lr, counts."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


def same_run(a: Path, b: Path) -> bool:
    ta, tb = adapter_tensors(a), adapter_tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta) and losses(a) == losses(b)


@pytest.fixture(scope="module")
def sampled_kind():
    with rng_kind.registered():
        yield


@pytest.fixture(scope="module")
def straight(tmp_path_factory, sampled_kind):
    """An uninterrupted run, and a copy of its run directory as it was right after the step-4 checkpoint."""
    tmp = tmp_path_factory.mktemp("resume")
    save = checkpoint.save_checkpoint

    def save_and_snapshot(state, run_dir):
        path = save(state, run_dir)
        if state["step"] == SNAP_AT:
            shutil.copytree(run_dir, tmp / "snapshot")
        return path

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "save_checkpoint", save_and_snapshot)
        assert train_main(run_args(tmp) + ["--out", str(tmp / "straight")]) == 0
    return tmp / "straight", tmp / "snapshot"


def resume_copy(snapshot: Path, tmp: Path) -> Path:
    run = Path(shutil.copytree(snapshot, tmp / "resumed"))
    assert int(torch.load(run / "checkpoint.pt", weights_only=True)["step"]) == SNAP_AT
    assert train_main(["--resume", str(run), "--workers", "2"]) == 0
    return run


@builtin_only
def test_resumed_run_with_workers_equals_the_uninterrupted_one(straight, tmp_path, monkeypatch):
    full, snapshot = straight
    state = checkpoint.load_checkpoint(snapshot)
    assert state["checkpoint_version"] == 2 and state["world_size"] == 1
    assert set(state["rng_state"]) == {"python", "numpy", "torch", "cuda"}
    read, reads = checkpoint._read, []
    monkeypatch.setattr(checkpoint, "_read", lambda path: reads.append(path.name) or read(path))
    restore, devices = train_module.restore_training_state, []
    monkeypatch.setattr(train_module, "restore_training_state",
                        lambda *a, **k: devices.append(k.get("device")) or restore(*a, **k))
    resumed = resume_copy(snapshot, tmp_path)
    assert reads.count(checkpoint.CHECKPOINT_NAME) == 1   # read once at start-up (it was read twice)
    assert devices == [torch.device("cpu")]               # the device a GPU stream would be restored onto
    a, b = adapter_tensors(full), adapter_tensors(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0, msg=k)
    assert losses(resumed) == losses(full)
    assert [r["step"] for r in losses(full)] == [2, 4, 6, 8]


def _torch_state_only(state, device=None):
    torch.set_rng_state(state["torch"])


@builtin_only
@pytest.mark.parametrize("dropped", ["python_numpy_state", "torch_state", "row_seeds"])
def test_resume_without_each_piece_of_state_differs(straight, tmp_path, monkeypatch, dropped):
    """Without the python/numpy generators, the torch one, or the rows' own seeds the resumed run
    differs: the equality above is not an accident of nothing drawing from them."""
    full, snapshot = straight
    if dropped == "python_numpy_state":
        monkeypatch.setattr(checkpoint, "set_rng_state", _torch_state_only)
    elif dropped == "torch_state":
        monkeypatch.setattr(checkpoint, "set_rng_state",
                            lambda s, d=None: set_rng_state({**s, "torch": torch.get_rng_state()}, d))
    else:  # rows drawn from the workers' running streams, as a plain DataLoader does
        monkeypatch.setattr(seeding, "seed_global_rngs", lambda key: None)
    assert not same_run(full, resume_copy(snapshot, tmp_path))


# ------------------------------------------------------------------------------------------- loader


class _Drawing:
    """A loader-side kind stub whose rows carry what the three global generators gave."""

    name, uses_text = "drawing", False

    def sample_text(self, example):
        return None

    def sample_fields(self, example, index):
        draws = [random.random(), float(np.random.rand()), float(torch.rand(()))]
        return {"draws": torch.tensor(draws, dtype=torch.float64)}


def _draws(loader, n=None):
    out = []
    for batch in loader:
        out.append(batch["tasks"]["drawing"]["draws"])
        if n is not None and len(out) == n:
            break
    return out


def test_rows_are_seeded_by_position_not_by_worker(tmp_path):
    bb = tiny_backbone(tmp_path)
    split = build_split("classification", "train", n=24, seed=0)

    def loader(workers, seed=0):
        return MultiTaskLoader([_Drawing()], [split], bb, batch_size=4, seed=seed, steps=6, num_workers=workers,
                               pin_memory=False)

    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    plain = _draws(loader(0))
    # making batches in the training process leaves its generators where they were
    after = torch.get_rng_state(), random.getstate(), np.random.get_state()[1]
    assert torch.equal(before[0], after[0]) and before[1] == after[1] and (before[2] == after[2]).all()
    workers = _draws(loader(2))
    assert all(torch.equal(a, b) for a, b in zip(plain, workers)) and len(plain) == 6
    assert len({float(x) for batch in plain for x in batch[:, 0]}) == 24     # rows draw different numbers
    # a loader resumed after three consumed batches (its workers prefetched more) continues identically
    first = loader(2)
    _draws(first, 3)
    again = loader(2)
    again.load_state_dict(first.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain[3:], _draws(again)))
    assert not torch.equal(_draws(loader(0, seed=1))[0], plain[0])


# ------------------------------------------------------------------------------------------- units


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    seed_everything(3)
    random.random(), np.random.rand(), np.random.randn(), torch.rand(2)
    torch.save({"rng_state": rng_state()}, tmp_path / "c.pt")
    expected = random.random(), float(np.random.randn()), torch.rand(3)
    seed_everything(99)
    set_rng_state(torch.load(tmp_path / "c.pt", weights_only=True)["rng_state"])
    got = random.random(), float(np.random.randn()), torch.rand(3)
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_preserved_rng_puts_every_generator_back():
    seed_everything(5)
    expected = random.random(), float(np.random.rand()), torch.rand(2)
    seed_everything(5)
    with preserved_rng():
        random.random(), np.random.rand(), torch.rand(7)
    got = random.random(), float(np.random.rand()), torch.rand(2)
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


class FakeCuda:
    """torch.cuda's generator calls over ``n`` pretend devices (each state a one-element tensor), so the CUDA
    branches of .rng run on a CPU; ``made`` says whether CUDA has been initialised."""

    def __init__(self, monkeypatch, n: int, made: bool = True, current: int = 0):
        self.states = {i: torch.tensor([100 + i]) for i in range(n)}
        self.made, self.current, self.seeded = made, current, []
        for name, fn in {"is_available": lambda: True, "is_initialized": lambda: self.made,
                         "device_count": lambda: len(self.states), "current_device": lambda: self.current,
                         "get_rng_state": lambda i: self.states[i].clone(),
                         "get_rng_state_all": lambda: [self.states[i].clone() for i in range(n)],
                         "set_rng_state": self._set, "manual_seed_all": self._seed_all}.items():
            monkeypatch.setattr(torch.cuda, name, fn)

    def _set(self, state, i):
        self.states[i] = state.clone()

    def _seed_all(self, seed):
        self.seeded.append(seed)
        self.states = {i: torch.tensor([seed]) for i in self.states}


def test_a_checkpoint_keeps_its_own_gpu_stream_and_a_resume_puts_it_on_the_gpu_it_trains_on(monkeypatch, tmp_path):
    """Rank 1 saw two GPUs and trained on cuda:1; resumed where each rank sees one GPU (CUDA_VISIBLE_DEVICES), it
    trains on cuda:0. The states were saved and restored by device number: cuda:0 got the untouched device's
    stream, not the one rank 1 drew dropout from."""
    cuda = FakeCuda(monkeypatch, 2)
    cuda.states[1] = torch.tensor([7])       # where rank 1's stream stood
    checkpoint.save_rank_state(tmp_path, 1, 4, {}, torch.device("cuda", 1))
    saved = checkpoint._rank_state(tmp_path, 1, 4)["rng_state"]
    assert saved["cuda"] == [] and torch.equal(saved["cuda_own"], torch.tensor([7]))
    cuda.states = {0: torch.tensor([0])}
    set_rng_state(saved, torch.device("cuda", 0))
    assert cuda.states == {0: torch.tensor([7])}
    set_rng_state(saved)                     # on a CPU: nothing of a GPU to restore
    assert cuda.states == {0: torch.tensor([7])}
    before = {i: s.clone() for i, s in cuda.states.items()}   # a checkpoint of version 2's first form: by number
    set_rng_state({**saved, "cuda_own": None, "cuda": [torch.tensor([5])]}, torch.device("cuda", 0))
    assert cuda.states == {0: torch.tensor([5])} and before != cuda.states


def test_training_saves_and_restores_each_ranks_gpu_stream_on_the_device_it_trains_on(monkeypatch, tmp_path):
    """The trainer's save and resume pass the rank's device on (rank 0's checkpoint.pt and rank 1's rank file)."""
    from types import SimpleNamespace

    cuda = FakeCuda(monkeypatch, 2)
    stub = SimpleNamespace(trainable_state=dict, state_dict=lambda: {"optimizer": {}, "scheduler": {}},
                           load_trainable_state=lambda s: None,
                           load_state_dict=lambda s: None)
    for rank in (0, 1):
        cuda.states = {0: torch.tensor([10]), 1: torch.tensor([11])}
        info = DistInfo(rank=rank, device=torch.device("cuda", rank))
        checkpoint.save_training_checkpoint(tmp_path / str(rank), stub, stub, stub, checkpoint.Progress(step=3), info)
        cuda.states = {0: torch.tensor([0])}          # resumed with one GPU visible per rank
        state = checkpoint.load_checkpoint(tmp_path / "0")   # rank 1 finds its own state in its rank file
        checkpoint.restore_training_state(state, stub, stub, stub, run_dir=tmp_path / str(rank), rank=rank,
                                          device=torch.device("cuda", 0))
        assert cuda.states == {0: torch.tensor([10 + rank])}, rank


def test_preserved_rng_puts_back_the_gpu_generators_it_brought_into_being(monkeypatch):
    """train() seeds every generator; a caller that had not used CUDA found its CUDA generators as training
    left them, not at the seed they would have started from."""
    cuda = FakeCuda(monkeypatch, 2, made=False)
    torch.manual_seed(11)
    with preserved_rng():
        cuda.made = True                      # training made the GPU context, seeded and drew
        torch.manual_seed(3)
        cuda.states[0] = torch.tensor([99])
    assert cuda.states == {0: torch.tensor([11]), 1: torch.tensor([11])}
    cuda.seeded.clear()
    with preserved_rng():                     # live on entry: restored, not reseeded
        cuda.states[1] = torch.tensor([42])
    assert cuda.states == {0: torch.tensor([11]), 1: torch.tensor([11])} and cuda.seeded == []


def test_rank_file_keeps_the_last_two_steps_and_restores_by_step(tmp_path):
    for step in (3, 6, 9):
        torch.manual_seed(step)
        checkpoint.save_rank_state(tmp_path, 1, step, {"loss": [float(step)]})
    doc = torch.load(checkpoint.rank_file(tmp_path, 1), weights_only=True)
    assert sorted(doc["states"]) == [6, 9] and doc["rank"] == 1
    torch.manual_seed(6)
    expected = torch.rand(2)
    mine = checkpoint._rank_state(tmp_path, 1, 6)
    assert mine["log_window"] == {"loss": [6.0]}
    set_rng_state(mine["rng_state"])
    assert torch.equal(torch.rand(2), expected)
    assert checkpoint._rank_state(tmp_path, 1, 3) is None and checkpoint._rank_state(tmp_path, 2, 6) is None


def test_map_shards_without_ddp_is_the_plain_call():
    assert shard_bounds(10, 0, 3) == (0, 3) and shard_bounds(10, 2, 3) == (6, 10)
    assert [shard_bounds(5, r, 2) for r in range(2)] == [(0, 2), (2, 5)]
    with sharded_evaluation(DistInfo()):
        assert map_shards(lambda xs: [x * 2 for x in xs], [1, 2, 3]) == [2, 4, 6]


def test_a_sharded_evaluation_scope_shards_only_its_own_thread():
    """The open scopes were a module-level list: one thread's sharded evaluation made every other thread's
    map_shards call collectives (here: 'Default process group has not been initialized')."""
    opened, release = threading.Event(), threading.Event()

    def hold() -> None:
        with sharded_evaluation(DistInfo(rank=0, world_size=2)):
            opened.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert opened.wait(10)
        assert map_shards(lambda xs: [x * 2 for x in xs], [1, 2, 3]) == [2, 4, 6]
    finally:
        release.set()
        t.join()


@builtin_only
@pytest.mark.parametrize("at_step", [6, STEPS])
def test_sigterm_during_a_step_finishes_it_saves_and_resumes_exactly(straight, tmp_path, monkeypatch, at_step):
    """SIGTERM arrives after the step's batch is drawn: the step completes before the checkpoint, so the
    saved loader is not a batch ahead of the saved step (which made --resume run out of batches). After the last
    step a second SIGTERM arrives while its checkpoint is written (outside the loop's signal handling, it cut that
    save short: --resume went back to the step-4 checkpoint)."""
    import os
    import signal

    full, _ = straight
    run = tmp_path / "stopped"
    real, sent = train_module.save_training_checkpoint, []

    def save(run_dir, model, optim, loader, progress, *args, **kwargs):
        if progress.step == STEPS and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
        return real(run_dir, model, optim, loader, progress, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(train_module, "forward_backward", rng_kind.sigterm_in_step(at_step))
        if at_step == STEPS:
            mp.setattr(train_module, "save_training_checkpoint", save)
        assert train_main(run_args(tmp_path) + ["--out", str(run)]) == 143  # stopped, not finished (was 0)
    assert int(torch.load(run / "checkpoint.pt", weights_only=True)["step"]) == at_step
    assert not (run / "adapter").exists()  # stopped: no final adapter (nor evaluation) yet, even after the last step
    assert train_main(["--resume", str(run), "--workers", "2"]) == 0
    assert same_run(run, full)


@builtin_only
def test_resuming_with_another_number_of_processes_says_so_before_the_setup(straight, tmp_path, capsys):
    """It failed after the whole set-up with the sampler's "resume with the same tasks and sampling options"."""
    full, _ = straight
    run = tmp_path / "copy"
    shutil.copytree(full, run)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["world_size"] = 2
    torch.save(state, run / "checkpoint.pt")
    assert train_main(["--resume", str(run)]) == 2
    assert ("the run was trained by 2 process(es) and this is 1; resume it with the same number (2 processes in "
            "all: torchrun --nnodes N --nproc_per_node M with N x M = 2)") in capsys.readouterr().err


@builtin_only
def test_fp16_skipped_steps_are_counted_across_a_resume(tmp_path, monkeypatch):
    """The fp16 loss scaler's skip counters were not checkpointed: after a resume metrics.jsonl under-reported
    fp16_skipped_steps and the closing report counted only the steps since the resume (helper 108). On the CPU:
    fp16 autocast with GradScaler('cpu'); --lr 0.05 overflows the first steps at scale 65536."""
    tasks = ",".join(str(rng_kind.small_spec(tmp_path, t, n_eval=8)) for t in ("vqa", "retrieval"))
    args = ["--tasks", tasks, "--steps", "3", "--batch-size", "8", "--workers", "0", "--precision", "fp16",
            "--log-every", "3", "--save-every", "2", "--warmup", "2", "--lr", "0.05", "--eval-batch-size", "32",
            "--skip-zero-shot"]   # (fp16 steps are slow on a CPU: the resume from step 2 takes one)
    save = checkpoint.save_checkpoint

    def snapshot(state, run_dir):
        path = save(state, run_dir)
        if state["step"] == 2 and not (tmp_path / "snap").exists():
            shutil.copytree(run_dir, tmp_path / "snap")
        return path

    torch.set_num_threads(1)
    with monkeypatch.context() as mp:
        mp.setattr(checkpoint, "save_checkpoint", snapshot)
        assert train_main(args + ["--out", str(tmp_path / "straight")]) == 0
    resumed = Path(shutil.copytree(tmp_path / "snap", tmp_path / "resumed"))
    assert train_main(["--resume", str(resumed)]) == 0

    def skips(run):
        return [json.loads(x).get("fp16_skipped_steps") for x in (run / "metrics.jsonl").read_text().splitlines()]

    assert skips(tmp_path / "straight")[0] >= 1   # a step before the checkpoint overflowed (at scale 65536)
    assert skips(resumed) == skips(tmp_path / "straight")


@pytest.mark.parametrize("damage", ["empty", "half"])
def test_a_damaged_checkpoint_says_what_to_do(tmp_path, damage):
    """An empty or half-copied checkpoint.pt said "cannot read the checkpoint (); it may be truncated" (helper 123)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    good = tmp_path / "good.pt"
    torch.save({"step": 2, "x": torch.zeros(1000)}, good)
    data = good.read_bytes()
    (run / "checkpoint.pt").write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_checkpoint(run)
    msg = str(e.value)
    assert "checkpoint.pt" in msg and "bytes" in msg          # names the file and what it holds now
    assert f"--out {run} --overwrite" in msg                   # and the way forward
    assert "()" not in msg                                     # no empty exception text


@builtin_only
def test_resume_removes_the_temporaries_a_crash_left(tmp_path, capsys):
    """A kill inside save_checkpoint / save_adapter leaves .checkpoint.pt.*.tmp / .adapter.*.tmp/ in the run
    directory (atomic_file / atomic_dir clean up only on an exception); a resume removes them."""
    tasks = f"{rng_kind.small_spec(tmp_path, 'vqa')},{rng_kind.small_spec(tmp_path, 'retrieval')}"
    run = tmp_path / "run"
    assert train_main(["--tasks", tasks, "--steps", "2", "--batch-size", "8", "--workers", "0", "--warmup", "1",
                       "--save-every", "2", "--eval-batch-size", "32", "--skip-zero-shot", "--out", str(run)]) == 0
    shutil.rmtree(run / "adapter")          # killed before the adapter was complete
    (run / ".checkpoint.pt.k6bil03s.tmp").write_bytes(b"\0" * 1000)
    (run / ".adapter.k4vgrvt2.tmp").mkdir()
    (run / ".adapter.k4vgrvt2.tmp" / "heads.safetensors").write_bytes(b"x")
    (run / ".notes.tmp").write_text("mine")   # not a name the run writes: kept
    capsys.readouterr()
    assert train_main(["--resume", str(run), "--workers", "0"]) == 0   # (the CLI prints the package's warnings)
    assert re.search(r"\[mtl-lora-vl\] warning: .*removed 2 unfinished file\(s\) a killed run left",
                     capsys.readouterr().err)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock", ".notes.tmp"]   # (RUN_LOCK)
