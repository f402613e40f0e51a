"""In a process group the evaluation image loader's workers are not forked from the process that evaluates (a
training process holds threads: the training loader's feeder and pin-memory threads, gloo's, torch's), so a lock
another thread held at that moment is not held for good in them (a DDP run's validation once hung in a child so);
they read the same batches as ``--workers 0``, a broken image is still replaced, counted and warned about in the
command line's format, and a strict one still stops the pass with its own message. Stand-in backbone, CPU."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import forkserver
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_lora_vl.data import worker_start, world
from mtl_lora_vl.data.images import ImageError
from mtl_lora_vl.data.loader import iter_image_batches
from mtl_lora_vl.data.records import Example
from mtl_lora_vl.data.worker_start import WorkerStart
from mtl_lora_vl.log import PACKAGE_LOGGER, cli_logging, rank_warning

#: Held by another thread of the test's process while the loader starts its workers.
_LOCK = threading.Lock()


class _LockProbe:
    """An image source that renders white when the worker can take :data:`_LOCK`, black when it is held there."""

    def render(self, size=None):
        free = _LOCK.acquire(blocking=False)
        if free:
            _LOCK.release()
        return Image.new("RGB", (size or 8, size or 8), (255, 255, 255) if free else (0, 0, 0))


class _Backbone:
    image_size = 8

    def preprocess_uint8(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return images.to(dtype)


@pytest.fixture(autouse=True)
def _as_in_a_process_group(monkeypatch):
    """These tests exercise the fork-server start, which the loader takes in a process group (torchrun)."""
    from mtl_lora_vl.data import worker_start

    monkeypatch.setattr(worker_start, "in_process_group", lambda: True)


def test_a_lock_another_thread_holds_is_not_held_in_the_workers():
    """Forked, the workers got the lock held (every image black): what stops a child for good when the lock is
    one it needs (a malloc arena's, a logging handler's, a queue's)."""
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with _LOCK:
            held.set()
            done.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        held.wait()
        images = torch.cat(list(iter_image_batches(_Backbone(), [Example(_LockProbe(), f"p{i}") for i in range(4)],
                                                   batch_size=2, device="cpu", num_workers=2)))
    finally:
        done.set()
        thread.join()
    assert images.shape == (4, 3, 8, 8) and bool((images == 255).all()), images.amax(dim=(1, 2, 3))


def _png(path: Path, value: int) -> str:
    Image.fromarray(np.full((12, 10, 3), value, np.uint8)).save(path)
    return str(path)


def test_workers_read_the_batches_of_no_workers_and_tell_a_broken_image(tmp_path, capfd):
    examples = list(world.build_split("vqa", "val", n=2, seed=0).examples)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    examples[3:3] = [Example(str(tmp_path / "bad.png"), "bad"), Example(_png(tmp_path / "g.png", 90), "grey")]
    got = {}
    for workers in (0, 2):
        with cli_logging(logging.INFO):
            got[workers] = torch.cat(list(iter_image_batches(_Backbone(), examples, batch_size=4, device="cpu",
                                                             task="val", num_workers=workers)))
        # counted in the main process from the workers' shared record (the worker's own warning prints on the fork
        # server's stderr: test_a_worker_warns_in_the_command_lines_format)
        err = capfd.readouterr().err
        assert "task 'val': 1 row(s) used a substitute image because 1 image(s)" in err and "bad.png" in err, err
    assert got[2].shape == (len(examples), 3, 8, 8) and torch.equal(got[2], got[0])

    with pytest.raises(ImageError) as e:
        list(iter_image_batches(_Backbone(), examples, batch_size=4, device="cpu", task="val", strict=True,
                                num_workers=2))
    assert str(e.value).startswith("task 'val': example 'bad'") and "strict = true" in str(e.value)


def _fresh_worker(start: WorkerStart) -> None:
    """A worker's first steps in a process that has no logging of its own (as one the fork server starts)."""
    package = logging.getLogger(PACKAGE_LOGGER)
    for handler in list(package.handlers):
        package.removeHandler(handler)
    package.setLevel(logging.NOTSET)
    package.propagate = True
    start(0)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    rank_warning(logging.getLogger("mtl_lora_vl.data.fallback"), "task %r: a bad image", "val")
    logging.getLogger("mtl_lora_vl.data.fallback").info("not at --log-level warning")


def test_a_worker_warns_in_the_command_lines_format(capfd):
    """A worker that is not forked from the command line's process is given its logging: a bad image's warning (said
    in the worker) printed as Python's bare last-resort line, and a library's worker has no handler to print it."""
    with cli_logging(logging.WARNING):
        start = pickle.loads(pickle.dumps(WorkerStart()))
    child = mp.get_context("fork").Process(target=_fresh_worker, args=(start,))
    child.start()
    child.join()
    err = capfd.readouterr().err
    assert child.exitcode == 0 and err == "[mtl-lora-vl] warning: task 'val': a bad image\n", err
    assert pickle.loads(pickle.dumps(WorkerStart())).cli_level is None   # (no command line here: nothing given)


def test_a_process_outside_a_process_group_forks_its_workers_as_before(monkeypatch):
    """The fork server re-runs a script without a ``__main__`` guard in every worker and costs a process one more
    import of torch and the package (~10 s): outside a process group (a plain ``eval``, a notebook, a one-process
    training run) workers are forked as before; in one (torchrun, where a validation hung in a forked child) they
    start from the fork server."""
    from mtl_lora_vl.data import worker_start

    monkeypatch.setattr(worker_start, "in_process_group", lambda: False)
    alone = worker_start.evaluation_workers(2)
    assert "multiprocessing_context" not in alone and alone["worker_init_fn"] is worker_start.ignore_stop_signals
    assert worker_start.evaluation_workers(0) == {}
    monkeypatch.setattr(worker_start, "in_process_group", lambda: True)
    assert worker_start.evaluation_workers(2)["multiprocessing_context"].get_start_method() == "forkserver"
    monkeypatch.undo()
    assert worker_start.in_process_group() is False   # (no process group in this test process)


class _Unpicklable:
    """An image source a fork-server worker cannot be sent: it holds a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def render(self, size=None):
        return Image.new("RGB", (size or 8, size or 8))


def _alive_thread():
    """A thread alive while a pass starts its workers (as a training run's loader's): they start from the fork
    server. Returns the event that ends it and the thread."""
    done = threading.Event()
    thread = threading.Thread(target=done.wait)
    thread.start()
    return done, thread


def test_an_image_source_that_does_not_pickle_is_named_with_the_fix():
    """From the fork server, the workers are sent the examples pickled: a source that does not pickle raised
    Python's own "cannot pickle '_thread.lock' object" (a TypeError: a traceback from the command line), naming
    neither the task, the example nor what to do."""
    examples = [Example(_LockProbe(), "p0"), Example(_Unpicklable(), "locked"), Example(_LockProbe(), "p2")]
    done, thread = _alive_thread()
    try:
        with pytest.raises(ValueError) as e:
            list(iter_image_batches(_Backbone(), examples, batch_size=2, device="cpu", task="val", num_workers=2))
    finally:
        done.set()
        thread.join()
    text = str(e.value)
    assert text.startswith("task 'val': example 'locked': its image source (_Unpicklable) cannot be pickled"), text
    assert "_thread.lock" in text and "--workers 0" in text, text
    assert isinstance(e.value.__cause__, TypeError)


def test_a_workers_warning_prints_on_the_stderr_of_the_pass(tmp_path, capfd):
    """The fork server's workers printed on the stderr the process had when the server started (once a process):
    under pytest an earlier test's capture, in a program that redirects its stderr the old one. They now print on
    the stderr the process has when the pass starts them, as forked ones did."""
    (tmp_path / "bad.png").write_bytes(b"not an image")
    examples = [Example(_png(tmp_path / f"g{i}.png", 60 * i), f"g{i}") for i in range(3)]
    examples.insert(1, Example(str(tmp_path / "bad.png"), "bad"))
    done, thread = _alive_thread()
    try:
        with capfd.disabled():   # the server started where this test's capture is not
            assert "multiprocessing_context" in worker_start.evaluation_workers(2)   # (sets its preload)
            forkserver.ensure_running()
        with cli_logging(logging.WARNING):
            list(iter_image_batches(_Backbone(), examples, batch_size=2, device="cpu", task="val", num_workers=2))
    finally:
        done.set()
        thread.join()
    err = capfd.readouterr().err
    assert "[mtl-lora-vl] warning: task 'val': example 'bad': " in err and "its rows are replaced" in err, err


#: A rank (a gloo group of one) whose evaluation pass stops after its first batch, its two workers started.
_RANK = """
import sys, time
import torch.distributed as dist
from mtl_lora_vl.data import world
from mtl_lora_vl.data.loader import iter_image_batches

class Backbone:
    image_size = 8

    def preprocess_uint8(self, images, dtype):
        return images.to(dtype)

dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
batches = iter_image_batches(Backbone(), world.build_split("vqa", "val", n=4, seed=0).examples, batch_size=2,
                             device="cpu", num_workers=2)
next(batches)
print("first batch", flush=True)
time.sleep(600)
"""


def test_a_killed_ranks_workers_and_fork_server_end_with_it(tmp_path):
    """A rank killed mid-pass (SIGKILL, a crash) left its evaluation workers and its fork server running for good:
    PyTorch's worker watchdog watches the worker's parent, the fork server, which ends only when no process holds
    its "alive" pipe, which its workers hold (a rank SIGKILLed so left 4 processes running 30 s on: the 2 workers,
    the server, the resource tracker). The workers now end with the rank that started them, and the rest with them."""
    import psutil

    err = tmp_path / "stderr"   # (the rank's, its processes': the resource tracker warns of the semaphores it frees)
    with err.open("wb") as stderr:
        rank = subprocess.Popen([sys.executable, "-c", _RANK, str(tmp_path / "store")], stdout=subprocess.PIPE,
                                stderr=stderr, start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    started = []
    try:
        ready, _, _ = select.select([rank.stdout], [], [], 240)
        assert ready and rank.stdout.readline() == b"first batch\n", \
            f"the rank ended or hung (exit {rank.poll()}): {err.read_text()[-3000:]}"
        started = psutil.Process(rank.pid).children(recursive=True)   # the workers, the fork server, the tracker
        assert len(started) >= 3, started
        os.kill(rank.pid, signal.SIGKILL)
        rank.wait()
        deadline, left = time.monotonic() + 15, started
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = [p for p in left if _running(p)]
        assert not left, f"{len(left)} of the killed rank's {len(started)} processes still run 15 s on: {left}"
    finally:   # what is left, whatever happened
        if rank.poll() is None:   # (not reaped: its pid is still its process group's, which its processes are in)
            os.killpg(rank.pid, signal.SIGKILL)
        for p in started:
            with contextlib.suppress(psutil.Error):
                p.kill()
        rank.stdout.close()
        rank.wait()


def _running(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
