"""The exit status of a training run stopped by signals inside the loop names the signal that asked for the stop (the
first): a SIGTERM after it changes neither the clean stop nor the status, and only a Ctrl-C after it escalates (an
abort, 130). Each case runs in a child process with the two signals as from a terminal, through the commands'
``run_command`` (what turns ``RunStopped`` into the status); the child imports no torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The loop's part: the signals come inside stop_at_step_boundary, then the loop raises RunStopped with what the
# request recorded (train.py, one process: max_over_ranks of one rank is its own signal).
_CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)   # as from a terminal, however pytest was started
signal.signal(signal.SIGTERM, signal.SIG_DFL)
from pathlib import Path
from mtl_lora_vl.cli.commands import run_command
from mtl_lora_vl.training.stopping import RunStopped, stop_at_step_boundary

def loop():
    with stop_at_step_boundary() as stop:
        for name in sys.argv[1:]:
            signal.raise_signal(getattr(signal, name))
    raise RunStopped(Path("run"), 3, stop.signum)

status = run_command("warning", loop)
print("torch" in sys.modules)
sys.exit(status)
"""


@pytest.mark.parametrize("signals, status, line", [
    (["SIGINT", "SIGTERM"], 130, "SIGINT"),    # was 143: the SIGTERM after the Ctrl-C was recorded over it
    (["SIGINT"], 130, "SIGINT"),
    (["SIGTERM", "SIGTERM"], 143, "SIGTERM"),
    (["SIGTERM", "SIGINT"], 130, "SIGTERM"),   # the Ctrl-C after it escalates: an abort, KeyboardInterrupt's 130
], ids=["INT-TERM", "INT", "TERM-TERM", "TERM-INT"])
def test_the_exit_status_names_the_signal_that_asked_for_the_stop(tmp_path, signals, status, line):
    """Helper 515: a Ctrl-C then a SIGTERM (a scheduler's, after the user's Ctrl-C) stopped cleanly at the step but
    exited 143, and RunStopped said "stopped by SIGTERM", where the stop line had said SIGINT and the Ctrl-C had asked
    for the stop (a wrapper that requeues on 143 requeued a run its user stopped). The first signal is now kept."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _CHILD, *signals], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == status, out.stdout + out.stderr
    stops = [x.split(": stopping")[0].split()[-1] for x in out.stderr.splitlines() if "stopping after this step" in x]
    assert stops == [line], out.stderr
    assert out.stdout.split() == ["False"], out.stdout + out.stderr   # (no torch: quick)
