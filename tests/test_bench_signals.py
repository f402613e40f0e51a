"""``bench`` and stop signals, as ``train``, ``eval`` and ``export`` take them (``training/stopping.py``'s table): the
first signal names the exit status (130 Ctrl-C, 143 SIGTERM), one ``[bench]`` line says it, nothing is left
half-written (no temporary beside a result, ``settings.json`` or the report), and a rerun resumes the grid.

Each case is a child process that runs the command's code on a tiny grid (two runs: the zero-shot one and one
MTL-LoRA run) and sends itself the signal at a monkeypatched point; the parent then resumes the grid in-process."""

from __future__ import annotations

import argparse
import functools
import io
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from test_bench_methods import _small_spec, needs_builtin

import mtl_lora_vl
from mtl_lora_vl.benchmark import BenchSettings, run_benchmark
from mtl_lora_vl.benchmark import command as bench_command
from mtl_lora_vl.options import TrainOptions

# The child: the command's own code path (``command.run``: its logging, threads and exit status) on the settings the
# parent gives, with the signal sent at one point:
#   write:NAME:N   -- inside the N-th atomic write of a file named NAME, its temporary half written;
#   step           -- in the first training step of the MTL-LoRA run (the trainer's loop);
#   step,stopped   -- Ctrl-C in that step, then SIGTERM as the runner turns the trainer's stop into the grid's.
_CHILD = """\
import argparse, contextlib, importlib, json, os, signal, sys
sys.path.insert(0, sys.argv[2])
from mtl_lora_vl.benchmark import BenchSettings, command, plots, runner
train_module = importlib.import_module("mtl_lora_vl.training.train")
# as started from a terminal, however pytest was (an ignored signal is inherited, and the package leaves it ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
cfg = json.loads(sys.argv[1])
settings = BenchSettings(**cfg["settings"])
command.settings_from_args = lambda args: settings
where, sig = cfg["where"], getattr(signal, cfg["signal"])
seen = []

def send(signum):
    os.kill(os.getpid(), signum)

if where.startswith("write:"):
    _, name, nth = where.split(":")
    for module in (runner, plots):
        real = module.atomic_file
        @contextlib.contextmanager
        def signalled(path, *a, real=real, **k):
            with real(path, *a, **k) as tmp:
                tmp.write_text("half")
                if os.path.basename(path) == name:
                    seen.append(path)
                    if len(seen) == int(nth):
                        send(sig)
                yield tmp
        module.atomic_file = signalled
else:
    real_step = train_module.forward_backward
    def step(*a, **k):
        seen.append(1)
        if len(seen) == 2:   # the zero-shot run trains one step: this is the MTL-LoRA run's first
            send(sig)
        return real_step(*a, **k)
    train_module.forward_backward = step
    if where == "step,stopped":
        class Stopped(runner.GridStopped):
            def __init__(self, *a, **k):
                send(signal.SIGTERM)
                super().__init__(*a, **k)
        runner.GridStopped = Stopped
args = argparse.Namespace(out=cfg["out"], overwrite=False, retry_failed=False, threads=1)
sys.exit(command.run(args, "info", logged=True))
"""


def _settings(tmp_path: Path) -> BenchSettings:
    return BenchSettings(tasks=[_small_spec(tmp_path / "specs", "vqa")], methods=["mtl_lora"], match_params=False,
                         single_task=False, ablations={}, seeds=1, lr_grid=[3e-3], steps=2, batch_size=4, warmup=1,
                         eval_batch_size=16, device="cpu")


def _stopped(tmp_path: Path, where: str, sig: str) -> tuple[subprocess.CompletedProcess, BenchSettings, Path]:
    settings, out = _settings(tmp_path), tmp_path / "bench"
    cfg = {"settings": asdict(settings), "out": str(out), "where": where, "signal": sig}
    repo = str(Path(mtl_lora_vl.__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg), repo], capture_output=True, text=True,
                          timeout=600)
    return proc, settings, out


def _bench_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("[bench]")]


def _resumes(settings: BenchSettings, out: Path, done_before: int) -> None:
    """The grid, rerun, keeps the runs finished before the stop and finishes the rest; no temporary is left."""
    log = io.StringIO()
    results = run_benchmark(settings, out, stream=log)
    assert len(results["runs"]) == 2 and not results["failed"]
    lines = [x for x in log.getvalue().splitlines() if x.startswith("[bench ")]
    assert sum("done earlier" in x for x in lines) == done_before, log.getvalue()
    assert (out / "report.md").is_file()
    assert not [p for p in out.rglob("*.tmp")]


@needs_builtin
@pytest.mark.parametrize(("where", "sig", "status", "done_before"), [
    ("write:result.json:1", "SIGTERM", 143, 0),   # between runs: the zero-shot run's result half written
    ("write:results.json:1", "SIGTERM", 143, 2),  # the report: every run done
    ("write:report.md:1", "SIGINT", 130, 2),
])
def test_a_signal_while_the_grid_writes_stops_it_whole_and_it_resumes(tmp_path, where, sig, status, done_before):
    """Review: between grid runs a SIGTERM killed ``bench`` outright -- no line, and the temporary of the file it was
    writing (``.result.json.XXXXXXXX.tmp``) left in the run's folder. Now it stops as Ctrl-C does: the temporary
    removed, one line naming the signal, exit 128 + its number; the rerun resumes."""
    proc, settings, out = _stopped(tmp_path, where, sig)
    assert proc.returncode == status, proc.stderr
    name = "SIGTERM" if sig == "SIGTERM" else "Ctrl-C"
    assert [line.startswith(f"[bench] {name}: stopped") for line in _bench_lines(proc)] == [True], proc.stderr
    assert f"rerun the same command to continue the grid ({out})" in proc.stderr
    assert not [p for p in out.rglob("*.tmp")]   # nothing half-written
    assert len(list(out.rglob("result.json"))) == done_before
    _resumes(settings, out, done_before)


@needs_builtin
@pytest.mark.parametrize(("where", "status"), [
    ("step", 143),            # the trainer's rule: stopped at the step boundary, SIGTERM's status
    ("step,stopped", 130),    # Ctrl-C first: a SIGTERM while the grid stops changes nothing (was killed: 143)
])
def test_a_signal_in_a_run_stops_the_grid_with_the_first_signal_s_status(tmp_path, where, status):
    sig = "SIGTERM" if status == 143 else "SIGINT"
    proc, settings, out = _stopped(tmp_path, where, sig)
    assert proc.returncode == status, proc.stderr
    name = "SIGTERM" if status == 143 else "Ctrl-C"
    assert [line.startswith(f"[bench] {name}: stopped") for line in _bench_lines(proc)] == [True], proc.stderr
    assert not [p for p in out.rglob("*.tmp")]
    assert len(list(out.rglob("result.json"))) == 1   # the zero-shot run; the stopped run is redone
    _resumes(settings, out, 1)


@needs_builtin
def test_a_run_without_its_evaluation_is_an_error_not_a_ctrl_c(tmp_path, monkeypatch, capsys):
    """A trainer that returned without eval.json stopped the grid as a Ctrl-C had ("[bench] stopped", exit 130)
    though no signal came: it is an error now, one ``error:`` line naming the run, exit 2."""
    def no_evaluation(opts: TrainOptions) -> Path:
        Path(opts.out).mkdir(parents=True)
        return Path(opts.out)

    settings, out = _settings(tmp_path), tmp_path / "bench"
    monkeypatch.setattr(bench_command, "settings_from_args", lambda args: settings)
    monkeypatch.setattr(bench_command, "run_benchmark", functools.partial(run_benchmark, trainer=no_evaluation))
    args = argparse.Namespace(out=str(out), overwrite=False, retry_failed=False, threads=1)
    assert bench_command.run(args, "warning", logged=False) == 2
    err = capsys.readouterr().err
    assert "error: bench run zero_shot/lr0.003-seed0: the trainer returned without its evaluation" in err, err
    assert "stopped" not in err


# The command's report with a SIGTERM arriving as it is printed (as the error's message or the stop's folder is read):
# ``command._run`` on a grid whose run_benchmark fails or is stopped at once (nothing trained), signals as from a
# terminal (SIGTERM's default would end pytest)
_REPORT_CHILD = """\
import argparse, signal, sys
sys.path.insert(0, sys.argv[2])
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
from mtl_lora_vl.benchmark import command

class Failed(ValueError):
    def __str__(self):
        signal.raise_signal(signal.SIGTERM)
        return "--lr-grid: give positive learning rates"

class Out(str):
    def __format__(self, spec):
        signal.raise_signal(signal.SIGTERM)
        return str.__format__(self, spec)

def run_benchmark(*args, **kwargs):
    raise Failed() if sys.argv[1] == "error" else KeyboardInterrupt

command.settings_from_args = lambda args: None
command.run_benchmark = run_benchmark
args = argparse.Namespace(out=Out("grid"), overwrite=False, retry_failed=False, threads=1)
status = command._run(args)
print(status, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
sys.exit(status)
"""


@pytest.mark.parametrize(("outcome", "status", "line"), [
    ("error", 2, "[mtl-lora-vl] error: --lr-grid: give positive learning rates"),
    ("stop", 130, "[bench] Ctrl-C: stopped (exit status 130); rerun the same command to continue the grid (grid)"),
])
def test_a_sigterm_as_the_outcome_is_printed_leaves_it(tmp_path, outcome, status, line):
    """Helper 543 (531's and 534's follow-up): ``bench``'s ``terminate_raises`` put SIGTERM's default handler back
    before its ``[bench]`` / ``error:`` line was printed: a SIGTERM there (a scheduler's as the grid failed or stopped)
    killed the command, -15, without its line, over a Ctrl-C's 130. As in ``run_command``, it is now ignored until the
    command returns: the line and the status stand, and the default handler is back afterwards."""
    repo = str(Path(mtl_lora_vl.__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", _REPORT_CHILD, outcome, repo], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == status, proc.stdout + proc.stderr
    assert proc.stdout.split() == [str(status), "True"], proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [line], proc.stderr
