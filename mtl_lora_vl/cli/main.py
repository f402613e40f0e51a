"""``mtl-lora-vl COMMAND ...`` (also ``python -m mtl_lora_vl``): one command with train, eval, export, bench.

Each subcommand is a ``"module:function"`` string resolved with importlib when it runs, so the command
line depends on no subcommand's module at import (``bench`` lives in ``mtl_lora_vl.benchmark``, which an
installation may lack: then ``bench`` says so). A function is called as ``fn(argv, prog=...)`` when it
takes ``prog`` (so ``--help`` names ``mtl-lora-vl train``), else as ``fn(argv)``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

from .._version import __version__
from ..log import cli_logging
from .commands import program_name
from .parsing import command_line

__all__ = ["COMMANDS", "main", "resolve"]

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("mtl_lora_vl.cli.commands:train_main",
              "train MTL-LoRA adapters jointly on several tasks, then compare zero-shot and adapted scores"),
    "eval": ("mtl_lora_vl.cli.commands:eval_main", "score a trained adapter against the zero-shot base model"),
    "export": ("mtl_lora_vl.cli.export:export_main",
               "write a task merged into the base weights, or as a standard PEFT / plain LoRA"),
    "bench": ("mtl_lora_vl.benchmark:main", "benchmark the adapter methods against each other"),
}


class CommandUnavailable(RuntimeError):
    """A subcommand whose module is not part of this installation."""


def resolve(target: str) -> Callable[..., Any]:
    """The function a ``"module:function"`` string names; CommandUnavailable when the module is absent."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not module_name.startswith(e.name):
            raise  # a dependency of the module is missing: that is a real error, keep its message
        raise CommandUnavailable(f"{module_name} is not part of this installation of mtl-lora-vl "
                                 f"(version {__version__})") from e
    return getattr(module, attr)


def _parser(prog: str) -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<8}{text}" for name, (_, text) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="MTL-LoRA adapters for vision-language models, trained on many tasks at once.",
        epilog=f"commands:\n{listing}\n\n`{prog} COMMAND --help` lists the options of a command.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the command's options")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``mtl-lora-vl`` and ``python -m mtl_lora_vl``; returns the exit status."""
    prog = prog or program_name()
    parser = _parser(prog)
    argv = command_line(argv)
    if not argv:   # argparse's "required: COMMAND, args" named an internal argument
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{prog}: error: give a command, one of: {', '.join(COMMANDS)} "
                         f"(`{prog} --help` says what each does)\n")
        return 2
    command = next((a for a in argv if a in COMMANDS), None)
    if command and argv[0] != command and argv[0] not in ("-h", "--help", "--version"):
        before = argv[:argv.index(command)]   # `mtl-lora-vl -v train` read -v as the program's, which has none
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{prog}: error: {' '.join(before)}: options go after the command: {prog} {command} "
                         f"{' '.join(before)} ...\n")
        return 2
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        fn = resolve(COMMANDS[ns.command][0])
    except CommandUnavailable as e:
        sys.stderr.write(f"{prog} {ns.command}: error: {e}\n")
        return 2
    sub = f"{prog} {ns.command}"
    try:
        if "prog" in inspect.signature(fn).parameters:
            result = fn(ns.args, prog=sub)
        else:  # a command with its own logging setup-less main(argv): give it the default handler
            with cli_logging("info"):
                result = fn(ns.args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return result if isinstance(result, int) else 0
