"""The command line: ``mtl-lora-vl train | eval | export | bench`` (also ``python -m mtl_lora_vl``), and the
single-command entry points ``mtl-lora-vl-train`` / ``mtl-lora-vl-eval`` and ``scripts/*.py``.

- :mod:`.parsing`: a parser generated from an options dataclass (jsonargparse; why, in its docstring),
  with ``--config FILE`` held to the same checks as flags;
- :mod:`.commands`: train and eval, and how every command runs (logging, one-line errors, exit status);
- :mod:`.export`: export's options (merged weights, PEFT / plain LoRA), and :mod:`.export_tasks`, what it does once
  they are read;
- :mod:`.flag_hints`: the did-you-mean of a mistyped flag, every command's;
- :mod:`.main`: the ``mtl-lora-vl`` command and its subcommand table.

The option dataclasses themselves live in :mod:`mtl_lora_vl.options`.

Each command imports its torch side (the trainer, the evaluator, :mod:`.export_tasks`) only when it runs, and
``export_command`` / ``export_main`` here are imported when first read (:mod:`..lazy_names`): ``mtl-lora-vl --help``
or ``train --help`` does not wait for torch.
"""

from typing import TYPE_CHECKING

from ..lazy_names import lazy_names
from .commands import (
    build_train_parser,
    eval_main,
    parse_eval_args,
    parse_train_args,
    train_main,
)
from .main import COMMANDS, main

if TYPE_CHECKING:
    from .export import export_command, export_main

__getattr__, __dir__ = lazy_names(globals(), dict.fromkeys(["export_command", "export_main"], "mtl_lora_vl.cli.export"))

__all__ = [
    "COMMANDS",
    "build_train_parser",
    "eval_main",
    "export_command",
    "export_main",
    "main",
    "parse_eval_args",
    "parse_train_args",
    "train_main",
]
