"""What ``mtl-lora-vl bench`` (``scripts/bench_methods.py``) does once :mod:`.cli` has read its options: torch's
threads set for the grid, the grid run (or resumed), and one ``[mtl-lora-vl] error:`` line per expected failure.
It imports torch and the trainer, so :mod:`.cli` imports it only when the command runs.

Stop signals follow the trainer's rule (``training/stopping.py``): inside a run the trainer stops at its step
boundary; anywhere else in the grid (between runs, writing ``settings.json``, a run's result or the report) a SIGTERM
stops it as Ctrl-C does -- the file being written keeps its old content and its temporary is removed -- and a SIGTERM
while a Ctrl-C's stop is on its way changes nothing. One ``[bench]`` line names the first signal, the command exits
128 + its number (130 Ctrl-C, 143 SIGTERM), and rerunning the same command resumes the grid. A SIGTERM while that
line, an error's or the failed runs' is printed is ignored (as ``run_command`` ignores it: the outcome stands)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

from ..log import cli_logging, debug_tracebacks
from ..training.stopping import RunStopped, TerminateUntilDone, terminate_until_done
from .bench import BenchDirError, run_benchmark
from .cli import settings_from_args

__all__ = ["run"]


def run(args: argparse.Namespace, level: str, logged: bool) -> int:
    """Run (or resume) the grid ``args`` describe at ``--threads``; the exit status. ``logged``: log to stderr at
    ``level`` as the other commands do (else the caller's logging stands)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with cli_logging(level) if logged else contextlib.nullcontext():
            return _run(args, traceback=level == "debug")
    finally:
        torch.set_num_threads(threads)   # a caller in the same process keeps its own


def _run(args: argparse.Namespace, traceback: bool = False) -> int:
    with terminate_until_done() as sigterm:   # the outcome's line and status below stand: a SIGTERM then is ignored
        return _report(args, traceback, sigterm)   # (the default handler, put back first, killed it: -15, no line)


def _report(args: argparse.Namespace, traceback: bool, sigterm: TerminateUntilDone) -> int:
    try:
        with sigterm.working():   # SIGTERM outside the trainer's loop: stopped as Ctrl-C is (was killed outright,
            settings = settings_from_args(args)   # the temporary of the result or report being written left)
            results = run_benchmark(settings, os.path.expanduser(args.out), overwrite=args.overwrite,
                                    retry_failed=args.retry_failed, pretrained_as="--pretrained")
    # Ctrl-C; SIGTERM (Terminated); a run the trainer stopped (GridStopped), or its RunStopped where a SIGTERM came
    # while the grid stopped (terminate_raises raises the first stop again: its status stands, not SIGTERM's)
    except (KeyboardInterrupt, RunStopped) as e:
        status = getattr(e, "exit_code", 130)
        print(f"[bench] {'SIGTERM' if status == 143 else 'Ctrl-C'}: stopped (exit status {status}); rerun the same "
              f"command to continue the grid ({args.out})", file=sys.stderr)
        return status
    # (a bad --device: RuntimeError; a run out of memory: torch.OutOfMemoryError, a RuntimeError, or MemoryError)
    except (BenchDirError, ValueError, RuntimeError, OSError, ImportError, MemoryError) as e:
        if debug_tracebacks():
            raise
        if traceback:   # -v: the error's traceback, as the other commands print it
            import traceback as tb

            tb.print_exc()
        notes = "".join(f" ({n})" for n in getattr(e, "__notes__", ()))
        print(f"[mtl-lora-vl] error: {e}{notes}", file=sys.stderr)   # as the other commands print it
        return 2
    if results["failed"]:   # the report is written; a script must still see that runs are missing
        print(f"[bench] {len(results['failed'])} run(s) failed (see the report); rerun with --retry-failed to run "
              "them again", file=sys.stderr)
        return 1
    return 0
