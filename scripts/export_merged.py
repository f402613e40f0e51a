#!/usr/bin/env python
"""Write a base model with one task of an MTL-LoRA adapter merged into its weights.

    python scripts/export_merged.py --adapter RUN_DIR/adapter --task vqa --out vqa_merged.safetensors
    python scripts/export_merged.py --adapter RUN_DIR/adapter --task vqa --out vqa_merged/

The result loads in the base library alone, with zero adapter overhead:

* open_clip, ``--out FILE.safetensors``: ``open_clip.create_model(NAME, pretrained=FILE)`` (NAME: the
  architecture; for a custom config register it first with ``open_clip.add_model_config``);
* open_clip, ``--out DIR``: an open_clip local directory (``open_clip_model.safetensors`` plus the base
  directory's ``open_clip_config.json`` and tokenizer when the base came from one, e.g. ``builtin``):
  ``open_clip.create_model("local-dir:DIR")`` or ``--backbone open_clip:DIR``;
* Hugging Face (``hf:DIR``): a ``save_pretrained`` directory, ``CLIPModel.from_pretrained(DIR)``, with the
  base directory's tokenizer and preprocessor files copied beside it.

The base model is rebuilt from the adapter's ``mtl_lora_config.json`` (``--backbone`` / ``--pretrained``
override it when the base model lives elsewhere on this machine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def _source_dir(spec: str) -> Path | None:
    """The directory whose non-weight files (config, tokenizer) belong beside a merged export."""
    from mtl_lora_vl.backbones import parse_spec

    try:
        source = parse_spec(spec).source_dir
    except ValueError:  # no (or no loadable) backbone string: nothing to copy
        return None
    return source if source is not None and source.is_dir() else None


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="adapter directory written by save_adapter / train_vl.py")
    parser.add_argument("--task", required=True, help="the task to merge into the weights")
    parser.add_argument("--out", required=True, help="FILE.safetensors (open_clip) or an output directory")
    parser.add_argument("--backbone", default=None, help="override the base model recorded in the adapter")
    parser.add_argument("--pretrained", default=None, help="override the base checkpoint recorded in the adapter")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)

    from mtl_lora_vl.io import AdapterFileError, load_pretrained, save_merged

    try:
        loaded = load_pretrained(args.adapter, backbone=args.backbone, pretrained=args.pretrained, heads=False)
        if args.task not in loaded.config.tasks:
            raise AdapterFileError(f"--task {args.task!r}: the adapter has no such task; its tasks are "
                                   f"{loaded.config.tasks}")
        spec = args.backbone or (loaded.doc.get("base") or {}).get("backbone") or ""
        out = save_merged(loaded.backbone.model, args.task, args.out, source_dir=_source_dir(spec),
                          overwrite=args.overwrite)
    except (AdapterFileError, FileExistsError, FileNotFoundError, ValueError) as e:
        parser.exit(2, f"export_merged.py: error: {e}\n")
    print(f"wrote {out} (task {args.task!r} merged into {type(loaded.backbone.model).__name__})")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
