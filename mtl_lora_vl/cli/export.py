"""``mtl-lora-vl export``: tasks of a trained adapter as merged base-model weights or as standard LoRAs.

    mtl-lora-vl export --adapter RUN_DIR/adapter --task vqa --out vqa_merged/
    mtl-lora-vl export --adapter RUN_DIR/adapter --task vqa --out vqa_merged.safetensors
    mtl-lora-vl export --adapter RUN_DIR/adapter --task vqa,retrieval --format peft --out loras/

``--format merged`` (the default) writes the base model with the task merged into its weights, loadable
by the base library alone with zero adapter overhead:

* open_clip, ``--out FILE.safetensors``: ``open_clip.create_model(NAME, pretrained=FILE)``;
* open_clip, ``--out DIR``: an open_clip local directory (weights plus the base directory's
  ``open_clip_config.json`` and tokenizer when the base came from one, e.g. ``builtin``), loaded by
  ``open_clip.create_model("local-dir:DIR")`` or ``--backbone open_clip:DIR``;
* Hugging Face (``hf:``): a ``save_pretrained`` directory with the base directory's tokenizer and
  preprocessor files beside it.

``--format peft`` / ``plain`` / ``auto`` write the task as one standard LoRA (``export_lora``). Several
comma-separated tasks go to ``OUT/<task>`` each. The base model is rebuilt from the adapter's
``mtl_lora_config.json`` (``--backbone`` / ``--pretrained`` override it when it lives elsewhere).

This module reads the options; the export itself (:mod:`.export_tasks`: torch, the backbones) is imported when the
command runs, so ``export --help`` and a mistyped flag answer without it.
"""

from __future__ import annotations

from pathlib import Path

from ..lazy_names import imported
from ..options import ExportOptions
from .commands import exit_code, program_name, run_command
from .parsing import parse_options

__all__ = ["EXPORT", "export_command", "export_main"]

#: The function that does the export (:mod:`.export_tasks`: torch, the backbones), imported when the command runs,
#: not to parse its options.
EXPORT = "mtl_lora_vl.cli.export_tasks:export"

EXPORT_HELP = ("Write tasks of a trained MTL-LoRA adapter as a base model with the task merged into its weights "
               "(--format merged), or as a standard PEFT / plain LoRA (--format peft|plain|auto).")


def export_command(argv: list[str] | None = None, prog: str | None = None) -> list[Path]:
    """Parse, export, and return the written paths; a bad option or a failed export exits with status 2
    and one ``PROG: error:`` line (the contract of ``scripts/export_merged.py``'s ``main``)."""
    prog = prog or program_name()
    opts, level = parse_options(ExportOptions, argv, prog, EXPORT_HELP)
    export = imported(EXPORT)   # (before run_command: a failed import keeps its traceback)
    written: list[list[Path]] = []
    code = run_command(level, lambda: written.append(export(opts)))
    if code:
        raise SystemExit(code)
    return written[0]


def export_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``mtl-lora-vl export`` and ``scripts/export_merged.py``."""
    try:
        export_command(argv, prog)
    except SystemExit as e:
        return exit_code(e)
    return 0

