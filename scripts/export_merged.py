#!/usr/bin/env python
"""Write a base model with one task of an MTL-LoRA adapter merged into its weights (same as ``mtl-lora-vl
export``, which an installed package has without a checkout; see its ``--help`` for the formats).

    python scripts/export_merged.py --adapter RUN_DIR/adapter --task vqa --out vqa_merged.safetensors
    python scripts/export_merged.py --adapter RUN_DIR/adapter --task vqa --out vqa_merged/
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from mtl_lora_vl.cli import export_command, export_main  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    """Export and return the written path; exits with status 2 and one error line on failure."""
    return export_command(argv, prog="export_merged.py")[0]


if __name__ == "__main__":
    sys.exit(export_main(prog="export_merged.py"))
