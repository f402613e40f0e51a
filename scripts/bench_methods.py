#!/usr/bin/env python
"""Method benchmark: every adapter method, a single-task reference and MTL-LoRA ablations, tuned fairly,
over seeds. See ``python scripts/bench_methods.py --help``; the code is in ``mtl_lora_vl.benchmark``."""

import sys

from mtl_lora_vl.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
