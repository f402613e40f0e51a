"""What ``mtl-lora-vl bench`` (``scripts/bench_methods.py``) does once :mod:`.cli` has read its options: torch's
threads set for the grid, the grid run (or resumed), and one ``[mtl-lora-vl] error:`` line per expected failure.
It imports torch and the trainer, so :mod:`.cli` imports it only when the command runs."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

from ..log import cli_logging, debug_tracebacks
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
    try:
        settings = settings_from_args(args)
        results = run_benchmark(settings, os.path.expanduser(args.out), overwrite=args.overwrite,
                                retry_failed=args.retry_failed, pretrained_as="--pretrained")
    except KeyboardInterrupt as e:
        print(f"[bench] stopped; rerun the same command to continue ({args.out})", file=sys.stderr)
        return getattr(e, "exit_code", 130)   # 143 when SIGTERM stopped a run
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
