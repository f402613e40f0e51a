"""``python -m mtl_lora_vl train | eval | export | bench ...``: the ``mtl-lora-vl`` command."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m mtl_lora_vl"))
