#!/usr/bin/env python
"""Score a trained adapter against the zero-shot base model, or a base model zero-shot; see ``--help`` (same as
``mtl-lora-vl eval``).

    python scripts/evaluate_vl.py --adapter RUN_DIR/adapter --tasks vqa,retrieval
    python scripts/evaluate_vl.py --backbone builtin-llava --tasks vqa,captioning --out zs-llava   # no adapter
"""

import os
import sys
from pathlib import Path

# On a busy or shared CPU, OpenMP threads that spin while they wait for work starve each other: a training step
# of the built-in LLaVA took 10x longer with other jobs on the cores. Sleeping threads cost little; set before
# torch loads its OpenMP runtime (OMP_WAIT_POLICY=ACTIVE in the environment restores spinning).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from mtl_lora_vl.cli import eval_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(eval_main(prog="evaluate_vl.py"))
