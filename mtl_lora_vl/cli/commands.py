"""The train and eval commands, and how every command runs: logging, then one clear line per expected failure.

Each ``*_main(argv, prog)`` returns the exit status: 0 done, 2 a bad option or an expected failure (one
line on stderr; ``-v`` or ``MTL_LORA_VL_DEBUG=1`` shows the traceback), 130 Ctrl-C, 143 SIGTERM; a training run stopped
by Ctrl-C or SIGTERM after its checkpoint exits 130 or 143 (``--resume`` continues it). ``prog`` is the name
``--help`` shows (``mtl-lora-vl train``, ``train_vl.py``, ``mtl-lora-vl-train``, ...); by default the
name the program was started as.

Parsing a command line (and ``--help``, and refusing a bad flag) imports neither torch nor the model libraries:
the function that does a command's work (:data:`TRAIN`, :data:`EVALUATE_ADAPTER`) is imported once its options
are read.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from ..lazy_names import imported
from ..log import cli_logging, debug_tracebacks, rank_prefix
from ..options import EvalOptions, TrainOptions
from ..training.stopping import RunStopped, Terminated, terminate_until_done
from .parsing import build_parser, parse_options, parse_options_given

__all__ = ["build_train_parser", "eval_main", "exit_code", "parse_eval_args", "parse_train_args", "program_name",
           "run_command", "train_main"]

logger = logging.getLogger("mtl_lora_vl.cli")

#: The functions that do the train and eval commands' work, imported when the command runs (torch, transformers,
#: open_clip: seconds), not to parse its options.
TRAIN = "mtl_lora_vl.training.train:train"
EVALUATE_ADAPTER = "mtl_lora_vl.evaluation.evaluate:evaluate_adapter"

TRAIN_HELP = ("Train MTL-LoRA adapters on both towers of a vision-language model, jointly on several tasks, "
              "then compare zero-shot and adapted scores. With no options it trains on the built-in backbone "
              "and world (offline, CPU).")
EVAL_HELP = ("Score a trained adapter twice per task -- the unadapted base model by the task's zero-shot rule, "
             "and the adapted model -- and write eval.json, report.md and plots/. Without --adapter, score a base "
             "model (--backbone: a merged export, another checkpoint, a built-in) zero-shot on --tasks, without "
             "training.")

# The failures a user can fix from the message alone; anything else is a bug and keeps its traceback.
EXPECTED = (ValueError, RuntimeError, OSError, KeyError, ArithmeticError, ImportError)  # ImportError: an optional
# package a data format or backbone needs, named with its pip command


def program_name() -> str:
    """The name this process was started as, for ``--help`` (``python -m mtl_lora_vl`` for the module)."""
    path = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("mtl-lora-vl")
    return f"python -m {path.parent.name}" if path.name == "__main__.py" else path.name


def run_command(level: str, fn: Callable[..., Any], *args: Any) -> int:
    """Run ``fn(*args)`` with the command line's logging; an expected failure is one ``error:`` line. A SIGTERM
    stops it as Ctrl-C does (its clean-up runs: no temporary left), with one line, and the command exits 143; once
    ``fn`` is done, a SIGTERM is ignored while its outcome is reported (the default handler is put back on return; a
    caller's own Python handler is put back and given the SIGTERM ignored: :func:`terminate_until_done`)."""
    with terminate_until_done() as sigterm, cli_logging(level) as log:
        try:   # SIGTERM: what the command was writing is cleaned up (eval, export: a killed one left its temporary,
            with sigterm.working():   # a merged export's as large as the model), exit 143; once it ends, what ended
                fn(*args)             # it (an error, a stop, done) is reported below, a SIGTERM meanwhile ignored
        except Terminated as e:   # SIGTERM outside the loop's steps: said, as the loop's stop line says its signal
            logger.warning("%sSIGTERM: stopped at once (exit status %d)", rank_prefix(), e.exit_code)
            return e.exit_code   # (a scheduler's log said nothing of what ended the run)
        except KeyboardInterrupt:
            return 130
        except RunStopped as e:  # the loop logged it; not 0, so `train && evaluate` does not go on
            return e.exit_code
        except EXPECTED as e:
            if debug_tracebacks():
                raise
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            logger.error("%s", msg, exc_info=log.isEnabledFor(logging.DEBUG))
            return 2
    return 0


def exit_code(e: SystemExit) -> int:
    """The exit status a command returns for argparse's ``SystemExit``: its int code, 0 for None, else 2."""
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


# ------------------------------------------------------------------------------------------------ train


def build_train_parser(prog: str | None = None) -> ArgumentParser:
    """The train command's parser (for ``--help`` text and tests; ``train_main`` builds its own)."""
    return build_parser(TrainOptions, prog or program_name(), TRAIN_HELP)


def parse_train_args(argv: list[str] | None = None, prog: str | None = None) -> TrainOptions:
    """TrainOptions from a command line (and its ``--config`` file); exits 2 on a bad value."""
    return parse_options(TrainOptions, argv, prog or program_name(), TRAIN_HELP)[0]


def train_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``mtl-lora-vl train``, ``mtl-lora-vl-train`` and ``scripts/train_vl.py``."""
    try:
        opts, level, given = parse_options_given(TrainOptions, argv, prog or program_name(), TRAIN_HELP)
    except SystemExit as e:
        return exit_code(e)
    return run_command(level, imported(TRAIN), opts, given)


# ------------------------------------------------------------------------------------------------- eval


def parse_eval_args(argv: list[str] | None = None, prog: str | None = None) -> EvalOptions:
    """EvalOptions from a command line (and its ``--config`` file); exits 2 on a bad value."""
    return parse_options(EvalOptions, argv, prog or program_name(), EVAL_HELP)[0]


def evaluate(opts: EvalOptions, evaluate_adapter: Callable[..., str]) -> str:
    """Run the evaluation (``evaluate_adapter``: :data:`EVALUATE_ADAPTER`); the finished table goes to stdout (the
    result, not a log line)."""
    kwargs = {k: v for k, v in asdict(opts).items() if k != "config"}
    table = evaluate_adapter(**kwargs)
    if table:  # empty on ranks other than 0 under torchrun
        print(table)
    return table


def eval_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``mtl-lora-vl eval``, ``mtl-lora-vl-eval`` and ``scripts/evaluate_vl.py``."""
    try:
        opts, level = parse_options(EvalOptions, argv, prog or program_name(), EVAL_HELP)
    except SystemExit as e:
        return exit_code(e)
    return run_command(level, evaluate, opts, imported(EVALUATE_ADAPTER))
