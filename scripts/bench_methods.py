#!/usr/bin/env python
"""Method benchmark: every adapter method, a single-task reference and MTL-LoRA ablations, tuned fairly,
over seeds. See ``python scripts/bench_methods.py --help``; the code is in ``mtl_lora_vl.benchmark``."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:   # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from mtl_lora_vl.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
