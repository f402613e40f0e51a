"""SIGINT and SIGTERM as a terminal starts a process, for the whole test session, and put back after: the two
pytest hooks conftest takes from here. Kept apart from conftest (which imports torch) so that a test can run
``pytest.main`` with just these hooks as a plugin (``-p stop_signals``) in a child process that imports no torch."""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytest

#: The SIGINT / SIGTERM handlers pytest started with, which ``pytest_unconfigure`` puts back.
_HANDLERS_BEFORE = pytest.StashKey[dict[int, Any]]()


def pytest_configure(config):
    """SIGINT and SIGTERM as a terminal starts a process (KeyboardInterrupt; killed) for the whole session, in this
    process and so in the runs the tests start: tests send them (to runs, to themselves), and the package leaves an
    ignored one ignored. A non-interactive shell starts a background job (``pytest ... &``, ``nohup ... &``, a CI
    step's) with SIGINT ignored, and children inherit an ignored signal; Python then sets no KeyboardInterrupt
    handler in them either; ``trap '' INT TERM`` ignores both, and a program that runs ``pytest.main`` may have set
    handlers of its own. ``pytest_unconfigure`` puts back what was there."""
    if threading.current_thread() is not threading.main_thread():   # (handlers are set from the main thread only)
        return
    config.stash[_HANDLERS_BEFORE] = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                                      signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL)}


def pytest_unconfigure(config):
    """The SIGINT / SIGTERM handlers ``pytest_configure`` found, put back: a program that ran ``pytest.main`` with a
    signal ignored (or a handler of its own) has it so again."""
    for signum, handler in config.stash.get(_HANDLERS_BEFORE, {}).items():
        if handler is not None:   # (None: one not set from Python, which cannot be put back)
            signal.signal(signum, handler)
