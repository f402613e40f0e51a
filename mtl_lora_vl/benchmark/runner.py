"""Runs one benchmark run through the trainer, resumably and quietly.

Each run lives in ``OUT/runs/<key>/``: the trainer's run directory ``train/``, its output in
``train.log``, and ``result.json`` -- written last, atomically, so it doubles as the done marker. A run
with ``result.json`` is never redone; a folder without it (a killed run) is wiped and redone. A run whose trainer
raised (out of memory, say) writes ``failed.json`` instead (its error line and log): the grid goes on, and a later
start keeps it as failed unless asked to retry failed runs.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch

from .._version import __version__
from ..io.atomic import atomic_file
from ..options import TrainOptions
from ..training.stopping import RunStopped
from .grid import BenchSettings, RunSpec

Trainer = Callable[[TrainOptions], Path]
#: A run's record of its failure (beside ``train.log``); ``result.json`` marks a run that finished.
FAILED = "failed.json"


class GridStopped(KeyboardInterrupt):
    """The trainer was interrupted (Ctrl-C or SIGTERM) and saved a checkpoint instead of results; ``exit_code``
    is the trainer's (130 Ctrl-C, 143 SIGTERM)."""

    def __init__(self, message: str, exit_code: int):   # (no default: a stop without a signal is not Ctrl-C's)
        super().__init__(message)
        self.exit_code = exit_code


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file renamed into place (a reader, or a start after a kill, never sees
    half a file)."""
    with atomic_file(path, overwrite=True, what="bench") as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file renamed into place (a reader never sees half a file)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _fmt_time(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def code_version(root: Path | None = None) -> str:
    """The package version, plus the git commit (``+g<sha>``, 12 hex digits; ``.dirty<hash>`` with uncommitted
    changes to tracked files, the hash that of the changed files' names and contents, so two different edits of one
    commit read as two versions) when it runs from a checkout: every run records it, so a grid resumed on other code
    says so.
    ``root``: the checkout (by default the one this package runs from)."""
    root = Path(__file__).resolve().parents[2] if root is None else root
    if not (root / ".git").exists():
        return __version__
    git = ["git", "-C", str(root)]
    try:
        # 12 hex digits of the full sha: `--short` grows with the clone's object count and takes core.abbrev, so one
        # commit read as two versions in two clones
        sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()[:12]
        changed = subprocess.run([*git, "diff", "HEAD", "--name-only", "--no-renames", "--no-relative", "-z"],
                                 capture_output=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{_dirty(root, changed)}" if sha else __version__


def _dirty(root: Path, changed: bytes) -> str:
    """``.dirty<hash>`` of the changed files (``git diff --name-only -z``) as they are now, "" with none: hashed
    from their contents, not from ``git diff``'s text, which the user's git config shapes (prefixes, context)."""
    names = sorted(n for n in changed.split(b"\0") if n)
    if not names:
        return ""
    digest = hashlib.sha256()
    for name in names:
        path = root / os.fsdecode(name)
        digest.update(name + b"\0")
        if path.is_file():   # else deleted (or a submodule: its name alone)
            with open(path, "rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
    return f".dirty{digest.hexdigest()[:8]}"


class Runner:
    """Executes runs in ``root/runs``; prints one progress line per run with an ETA."""

    def __init__(self, root: Path, settings: BenchSettings, task_args: dict[str, str], trainer: Trainer,
                 total: int, stream: TextIO | None = None, retry_failed: bool = False):
        self.root, self.settings, self.task_args = root, settings, task_args
        self.retry_failed = retry_failed
        self.trainer, self.total = trainer, total
        self.stream = stream if stream is not None else sys.stdout
        self.index = 0          # runs handled so far (done earlier or now)
        self.ran_seconds = 0.0  # wall time of the runs executed in this session
        self.ran = 0
        self.failed = 0         # runs that failed in this session
        self.code = code_version()

    def options(self, spec: RunSpec, out: Path) -> TrainOptions:
        """The trainer options of one run: the grid's budget plus the configuration's adapter options."""
        s, cfg = self.settings, spec.config
        zero_shot = cfg.group == "zero_shot"
        steps = 1 if zero_shot else s.steps
        return TrainOptions(
            tasks=",".join(self.task_args[t] for t in cfg.tasks), backbone=s.backbone, pretrained=s.pretrained,
            data_root=s.data_root, **cfg.options, steps=steps, batch_size=cfg.batch_size or s.batch_size,
            warmup=min(s.warmup, steps), lr=spec.lr, seed=spec.seed, eval_val=spec.tune,
            skip_zero_shot=not zero_shot, eval_batch_size=s.eval_batch_size, device=s.device, precision=s.precision,
            workers=s.workers, out=str(out), overwrite=True, save_every=steps, log_every=min(10, steps))

    def run(self, spec: RunSpec, *, record_failure: bool = True) -> dict[str, Any]:
        """The run's result record: read from ``result.json`` when it is done (from ``failed.json`` when it failed,
        unless ``retry_failed``), else trained now. A trainer's exception is recorded as the run's failure
        (``"failed"``: its error line; ``"log"``) and returned, or raised with ``record_failure=False``."""
        folder = self.root / "runs" / spec.key
        done, failed = folder / "result.json", folder / FAILED
        self.index += 1
        if done.is_file():
            record = read_record(done, spec)
            self._line(spec, record, "done earlier")
            return record
        if failed.is_file() and not self.retry_failed:
            record = read_record(failed, spec)
            self._line(spec, record, "failed earlier; --retry-failed runs it again")
            return record
        if folder.exists():
            shutil.rmtree(folder)  # a killed run: start it again
        folder.mkdir(parents=True)
        opts = self.options(spec, folder / "train")
        t0, c0 = time.perf_counter(), time.process_time()
        diverged = error = None
        with (folder / "train.log").open("w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                run_dir = Path(self.trainer(opts))
            except RunStopped as e:
                raise GridStopped(f"{spec.key}: {e}", e.exit_code) from None
            except FloatingPointError as e:  # --max-bad-steps non-finite steps in a row: this rate diverges
                diverged = str(e)
            except Exception as e:   # its traceback into the run's log; the message names the run
                traceback.print_exc()
                e.add_note(f"in bench run {spec.key} (traceback in {folder / 'train.log'})")
                if not record_failure:
                    raise
                error = error_line(e)   # not `e`: its traceback's frames (the run's model) would outlive the run
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        gc.collect()   # the run's model holds reference cycles: free it (its GPU memory) before the next run loads one
        if error is not None:   # (Ctrl-C and SIGTERM are not failures: they raised above)
            return self._record_failure(spec, folder, error, wall, cpu)
        if diverged is not None:  # a result too (runs are deterministic: rerunning would diverge again)
            record = {**run_identity(spec, folder.relative_to(self.root)), "diverged": diverged, "tasks": None,
                      "val": None, "wall_s": wall}
        else:
            if not (run_dir / "eval.json").is_file():
                raise RuntimeError(f"bench run {spec.key}: the trainer returned without its evaluation (no "   # no
                                   f"{run_dir / 'eval.json'}; see {folder / 'train.log'}); rerun the same command to "
                                   "train that run again")   # signal stopped it: not a Ctrl-C's stop, 130 (was)
            record = make_record(spec, run_dir, wall, folder.relative_to(self.root))
        record["cpu_s"] = cpu  # process CPU time: the run's cost on a shared machine
        record["code"] = self.code
        record["threads"] = torch.get_num_threads()   # float sums differ in the last bits across thread counts
        write_json_atomic(done, record)
        self.ran += 1
        self.ran_seconds += wall
        self._line(spec, record, f"{wall:.0f} s")
        return record

    def _record_failure(self, spec: RunSpec, folder: Path, error: str, wall: float, cpu: float) -> dict[str, Any]:
        """Write and return the record of a run whose trainer raised (``error``: its :func:`error_line`)."""
        rel = folder.relative_to(self.root)
        record = {**run_identity(spec, rel), "failed": error, "log": str(rel / "train.log"),
                  "tasks": None, "val": None, "wall_s": wall, "cpu_s": cpu, "code": self.code,
                  "threads": torch.get_num_threads()}
        write_json_atomic(folder / FAILED, record)
        self.failed += 1   # (not in the ETA: a run failing at its start says little of the others' time)
        self._line(spec, record, f"{wall:.0f} s")
        return record

    def _line(self, spec: RunSpec, record: dict[str, Any], took: str) -> None:
        left = self.total - self.index
        eta = f"ETA {_fmt_time(left * self.ran_seconds / self.ran)}" if self.ran else "ETA –"
        if record.get("failed"):
            what = f"FAILED: {record['failed']} (log: {self.root / record['log']})"
        elif record.get("diverged"):
            what = "diverged"
        else:
            scores = record["zero_shot"] if spec.config.group == "zero_shot" else record["tasks"]
            val = f", val {sum(record['val'].values()) / len(record['val']):.3f}" if record.get("val") else ""
            what = f"test avg {sum(scores.values()) / len(scores):.3f}{val}"
        width = len(str(self.total))
        print(f"[bench {self.index:{width}d}/{self.total}] {spec.config.label}, lr {spec.lr:g}, seed {spec.seed}: "
              f"{what} ({took}); {eta}", file=self.stream, flush=True)


def error_line(error: BaseException) -> str:
    """``Type: first line of the message`` (a CUDA out-of-memory message runs to several lines)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def read_record(path: Path, spec: RunSpec) -> dict[str, Any]:
    """The run's record in ``path`` (its ``result.json``, or ``failed.json``), refused with the file named and the
    way out when it is damaged or another run's: read as it was, it stopped the grid with a bare JSON error or a
    KeyError."""
    try:
        record = json.loads(path.read_text())
        problem = None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        record, problem = None, f"not JSON ({e})"
    if problem is None:
        problem = _record_problem(record, spec)
    if problem is not None:
        what = "failed" if path.name == FAILED else "finished"
        raise ValueError(f"{path}: the record of {what} run {spec.key} is damaged ({problem}); delete the folder "
                         f"{path.parent} and rerun the same command to train that run again (the grid's other runs "
                         "are kept)")
    return record


def _record_problem(record: Any, spec: RunSpec) -> str | None:
    """What makes ``record`` unusable as ``spec``'s result (None: nothing)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if record.get("key") != spec.key:
        return f"it names run {record.get('key')!r}"
    if record.get("diverged"):
        return None
    if "failed" in record:
        return None if isinstance(record["failed"], str) else "its error is not a message"
    wanted = ["tasks", *(["val"] if spec.tune else []), *(["zero_shot"] if spec.config.group == "zero_shot" else [])]
    bad = [k for k in wanted if not isinstance(record.get(k), dict) or not all(
        isinstance(v, (int, float)) for v in record[k].values())]
    return f"no scores under {bad}" if bad else None


def make_record(spec: RunSpec, run_dir: Path, wall: float, folder: Path) -> dict[str, Any]:
    """Headline scores (test, and val for tuning runs), step time and identity of one finished run."""
    ev = json.loads((run_dir / "eval.json").read_text())
    tasks = ev["tasks"]
    metrics = {t: r["metric"] for t, r in tasks.items()}
    rates = [row["samples_per_s"] for row in _read_jsonl(run_dir / "metrics.jsonl") if "samples_per_s" in row]
    rates = rates[1:] or rates  # the first window includes warm-up
    opts = json.loads((run_dir / "config.json").read_text())
    return {
        **run_identity(spec, folder), "metrics": metrics,
        "tasks": {t: r["adapted"] for t, r in tasks.items()},
        "zero_shot": {t: r["zero_shot"] for t, r in tasks.items() if r.get("zero_shot") is not None},
        "val": {t: ev["val"][t][metrics[t]] for t in tasks} if "val" in ev else None,
        "eval_n": {t: r["n"] for t, r in tasks.items()},
        "step_s": opts["batch_size"] / statistics.median(rates) if rates else None,
        "wall_s": wall, "steps": opts["steps"], "batch_size": opts["batch_size"],
    }


def run_identity(spec: RunSpec, folder: Path) -> dict[str, Any]:
    """What names a run in its record, finished or diverged: configuration, seed, learning rate, folder."""
    return {"key": spec.key, "config": spec.config.cid, "group": spec.config.group, "label": spec.config.label,
            "seed": spec.seed, "lr": spec.lr, "tune": spec.tune, "folder": str(folder)}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
