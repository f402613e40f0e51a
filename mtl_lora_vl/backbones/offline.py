"""A scope in which the Hugging Face hub refuses every download, restored exactly on exit.

Hugging Face loads in this package pass ``local_files_only=True`` and need no guard. The guard is for
third-party construction code that may reach the hub on its own (open_clip building a model whose
config names a hub tokenizer or text tower): inside :func:`offline`, ``huggingface_hub`` raises
instead of connecting.

It sets one attribute, ``huggingface_hub.constants.HF_HUB_OFFLINE`` (which ``huggingface_hub`` and
``transformers`` read at call time), and puts back the value it found; no environment variable is
touched. ``huggingface_hub`` is imported *before* anything is changed, so its import-time defaults come
from the real environment. The switch is process-wide while the scope is open (other threads loading
from the hub at the same moment are refused too); nested scopes restore correctly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["offline"]


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Refuse Hugging Face hub downloads inside the scope; restore the previous setting afterwards."""
    try:
        import huggingface_hub.constants as constants
    except ImportError:  # no hub client installed: nothing can download through it
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
