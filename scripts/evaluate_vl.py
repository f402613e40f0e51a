#!/usr/bin/env python
"""Score a trained adapter against the zero-shot base model; see ``--help`` (same as ``mtl-lora-vl eval``).

    python scripts/evaluate_vl.py --adapter RUN_DIR/adapter --tasks vqa,retrieval
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from mtl_lora_vl.cli import eval_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(eval_main(prog="evaluate_vl.py"))
