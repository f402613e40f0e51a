"""Each rank's answer to claiming a run directory, under ``torchrun --nproc_per_node 2`` (gloo).

``python tests/claim_ranks.py DIR`` writes ``DIR/rank<R>.json``: the directory each rank got for a default
name that every rank spelled differently (as two ranks starting in different seconds would), then for an
``--out`` directory that another run already holds, then for one under a file (rank 0's claim fails: every rank
must stop with its message rather than wait for rank 0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mtl_lora_vl.distributed import barrier, cleanup, init_distributed
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.rundir import RunDirError, claim_run_dir

if __name__ == "__main__":
    root = Path(sys.argv[1])
    info = init_distributed("cpu")
    got: dict = {"default": str(claim_run_dir(root / f"default-rank{info.rank}", TrainOptions(), info))}
    try:
        claim_run_dir(root / "taken", TrainOptions(out=str(root / "taken")), info)
        got["taken"] = "claimed"
    except RunDirError as e:
        got["taken"] = str(e)
    try:   # a file where a parent folder should be: rank 0's OSError, on every rank
        claim_run_dir(root / "afile" / "run", TrainOptions(out=str(root / "afile" / "run")), info)
        got["under_a_file"] = "claimed"
    except RunDirError as e:
        got["under_a_file"] = str(e)
    (root / f"rank{info.rank}.json").write_text(json.dumps(got))
    barrier(info)  # no rank tears gloo down while another still talks to it
    cleanup(info)
