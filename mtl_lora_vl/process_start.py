"""Who started this process, read when the package is first imported, before its imports of torch and the model
libraries (seconds): under torchrun, the agent. :func:`~mtl_lora_vl.distributed.end_with_the_agent` compares it
with the parent it finds later, so that a rank whose agent died during those imports stops instead of waiting 30
minutes in ``init_process_group`` for the dead agent's store."""

from __future__ import annotations

import os

#: (this process, its parent) at the package's first import.
PROCESS, PARENT = os.getpid(), os.getppid()


def parent_died() -> bool:
    """Whether the process that started this one has died since the package was first imported (reparented: its
    parent is another process now). False in a process forked since (its parent is the importer, not its own)."""
    return os.getpid() == PROCESS and os.getppid() != PARENT
