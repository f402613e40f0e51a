#!/usr/bin/env python
"""Train MTL-LoRA jointly on several image-text tasks; see ``--help`` (same as ``mtl-lora-vl train``).

    python scripts/train_vl.py --tasks vqa,retrieval
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from mtl_lora_vl.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main(prog="train_vl.py"))
