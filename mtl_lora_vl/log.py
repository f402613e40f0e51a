"""Logging and progress bars: the package logger, the command line's handler, and tqdm bars that obey both.

Every module logs to ``logging.getLogger(__name__)``, a child of the package logger ``mtl_lora_vl``. The
library never configures handlers (no ``basicConfig``): an application decides where records go. The
command line does, through :func:`cli_logging`: one handler on the package logger that writes
``[mtl-lora-vl] message`` lines to stderr through ``tqdm.write`` (so they do not break a progress bar),
at the level of ``-v`` / ``-q`` / ``--log-level``, removed again when the command returns (meanwhile the
package logger does not propagate, so a root handler does not print each line twice). There, the package's
own Python warnings (:func:`warn_user`) print as ``[mtl-lora-vl] warning: ...`` lines too, not as
``train_vl.py:21: UserWarning: ...`` with the script's ``sys.exit`` line under them; so ``--log-level error``
hides them with the logged warnings, while a third party's Python warnings still print.

:func:`progress` makes the tqdm bar of a pass that takes a while (evaluation, image checks, exports). It
is shown only on an interactive terminal (or a notebook) and is off when the package logger is set
quieter than INFO (``-q``). The training bar (``training.metrics_log.progress_bar``) instead writes one
``[mtl-lora-vl] train: ...`` line every 15 s to a log file (:func:`line_bar`), and is off at ``-q`` too.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["LEVELS", "PACKAGE_LOGGER", "cli_logging", "interactive", "line_bar", "main_rank_logging", "progress",
           "quiet", "rank_prefix", "rank_warning", "say", "warn_user"]

PACKAGE_LOGGER = "mtl_lora_vl"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Formatter(logging.Formatter):
    """``[mtl-lora-vl] message``; warnings and errors say so; DEBUG names the module."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        elif record.levelno < logging.INFO:
            text = f"{record.name}: {text}"
        return f"[mtl-lora-vl] {text}"


class _TqdmHandler(logging.Handler):
    """Writes each record through ``tqdm.write`` to the current ``sys.stderr`` (read at emit time)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def cli_logging(level: int | str = logging.INFO) -> Iterator[logging.Logger]:
    """While open, the package logger writes records of ``level`` and above to stderr; restored on exit.

    Only the command line calls this; a library user configures ``logging`` as they like. While open, the
    package logger does not propagate to the root logger, so a root handler that a third-party library
    installs (``logging.basicConfig``, e.g. through a module-level ``logging.info`` call) does not print
    each line a second time. Nested (a command run inside another's logging), the inner one's handler stands in
    for the outer one's until it closes: each line prints once, at the inner level.
    """
    if isinstance(level, str):
        level = LEVELS[level.lower()]
    logger = logging.getLogger(PACKAGE_LOGGER)
    handler = _TqdmHandler(level)
    handler.setFormatter(_Formatter())
    saved, saved_propagate, saved_show = logger.level, logger.propagate, warnings.showwarning
    # a catch_warnings(record=True) (pytest.warns) open around the command: it records the package's warnings too
    record = saved_show is getattr(warnings, "_showwarning_orig", None) and _recording()
    active = [True]   # closed: passes all on (a hook another one saved, e.g. captureWarnings, may be put back later)

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if active[0] and getattr(message, _OURS, False):   # warn_user's: a package message, printed as one
            logger.warning("%s", message)
            if not record:
                return
        saved_show(message, category, filename, lineno, file, line)   # a third party's: Python's format

    outer = [h for h in logger.handlers if isinstance(h, _TqdmHandler)]
    for h in outer:
        logger.removeHandler(h)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    warnings.showwarning = show
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        for h in outer:
            logger.addHandler(h)
        logger.setLevel(saved)
        logger.propagate = saved_propagate
        active[0] = False
        if warnings.showwarning is show:
            warnings.showwarning = saved_show


@contextlib.contextmanager
def main_rank_logging(is_main: bool) -> Iterator[None]:
    """While open in a process that is not the main one (rank > 0 under torchrun), the package's loggers drop
    records below ERROR and Python warnings are ignored. For set-up, where every rank reads the same specs,
    data and model: their warnings and counts would print once per rank (rank 0 prints them). Errors still
    print, and so do the warnings a rank says of its own work (:func:`rank_warning`); restored on exit."""
    if is_main:
        yield
        return
    logger = logging.getLogger(PACKAGE_LOGGER)
    saved, saved_muted = logger.level, _muted_from[0]
    if saved_muted is None:   # (nested: the level before the outermost one)
        _muted_from[0] = logger.getEffectiveLevel()
    logger.setLevel(max(logging.ERROR, logger.getEffectiveLevel()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(saved)
        _muted_from[0] = saved_muted


#: The package logger's level before :func:`main_rank_logging` muted this rank (None: not muted); a loader worker
#: forked meanwhile inherits it.
_muted_from: list[int | None] = [None]


def rank_warning(log: logging.Logger, msg: str, *args: Any) -> None:
    """``log.warning(msg, *args)`` of a warning this rank says of its own work (an image of its evaluation shard, its
    count of substitutes), started with :func:`rank_prefix`; it prints on every rank, also while
    :func:`main_rank_logging` mutes the other ranks' words (then at the level the rank had before)."""
    text = rank_prefix() + msg
    if log.isEnabledFor(logging.WARNING):
        log.warning(text, *args, stacklevel=2)
    elif _muted_from[0] is not None and _warns_unmuted(log):
        fn, lno, func, _ = log.findCaller(stacklevel=2)
        log.handle(log.makeRecord(log.name, logging.WARNING, fn, lno, text, args, None, func))


def _warns_unmuted(log: logging.Logger) -> bool:
    """Whether ``log`` would print a warning were the package logger at its level before the muting: a level set
    between them (``mtl_lora_vl.data`` at ERROR) and ``logging.disable`` still silence it."""
    if log.disabled or log.manager.disable >= logging.WARNING:
        return False
    package = logging.getLogger(PACKAGE_LOGGER)
    node: logging.Logger | None = log
    while node is not None and node is not package:
        if node.level:
            return node.level <= logging.WARNING
        node = node.parent
    return node is package and _muted_from[0] <= logging.WARNING


def rank_prefix() -> str:
    """``"rank N: "`` in a process of a multi-process run (torchrun's ``RANK`` and ``WORLD_SIZE``), else ``""``: the
    start of a warning that each rank says of its own (a signal it got, a file it read), so that N lines tell whose."""
    if int(os.environ.get("WORLD_SIZE", "1") or "1") > 1:
        return f"rank {os.environ.get('RANK', '0')}: "
    return ""


_PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__)) + os.sep
_OURS = "_mtl_lora_vl"   # the attribute that marks a warning as warn_user's


def _recording() -> bool:
    """Whether a ``warnings.catch_warnings(record=True)`` is open: it collects warnings in a list's ``append``."""
    return isinstance(getattr(getattr(warnings, "_showwarnmsg_impl", None), "__self__", None), list)


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside this package -- the user's line, however deep
    in the package the warning is raised (what Python 3.12's ``skip_file_prefixes`` does). Under
    :func:`cli_logging` it prints as a ``[mtl-lora-vl] warning:`` line; filters (``-W``) apply as to any warning."""
    frame, level = inspect.currentframe(), 1
    frame = frame.f_back if frame is not None else None
    while frame is not None and os.path.realpath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warning = category(message)
    setattr(warning, _OURS, True)
    warnings.warn(warning, stacklevel=level + 1)


def say(text: str) -> None:
    """A command's result line on stdout (``print``) that clears an open progress bar first and redraws it after:
    a plain ``print`` during a bar continued the bar's line (``export:   0%|  | 0/2 [...]wrote OUT/vqa ...``)."""
    tqdm.write(text, file=sys.stdout)


def debug_tracebacks() -> bool:
    """``MTL_LORA_VL_DEBUG=1``: commands re-raise an expected failure (its traceback) instead of one line."""
    return os.environ.get("MTL_LORA_VL_DEBUG", "") not in ("", "0")


def quiet() -> bool:
    """Whether the package logger was set quieter than INFO (``-q``): progress bars stay off."""
    level = logging.getLogger(PACKAGE_LOGGER).level
    return level > logging.INFO


def interactive() -> bool:
    """An interactive terminal on stderr, or a Jupyter kernel (where tqdm.auto draws a widget)."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def progress(iterable: Iterable[Any] | None = None, *, desc: str, total: int | None = None, unit: str = "it",
             **kwargs: Any) -> tqdm:
    """A tqdm bar for a pass that takes a while; disabled off a terminal, at ``-q`` and on every torchrun rank
    but rank 0 (they share one terminal: N bars overwrote each other); cleared when done."""
    kwargs.setdefault("leave", False)
    other_rank = os.environ.get("RANK", "0") != "0"
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=quiet() or not interactive() or other_rank,
                dynamic_ncols=True, **kwargs)


class _Lines:
    """The file a :func:`line_bar` writes to: each state tqdm draws (``\\r`` + text + padding) becomes one
    ``[mtl-lora-vl] text`` line on the current ``sys.stderr``, so a piped log gets lines, not carriage returns."""

    def __init__(self) -> None:
        self.last = ""

    def write(self, text: str) -> None:
        for part in text.split("\r"):
            part = part.strip()
            if part and part != self.last:   # tqdm redraws the last state when it closes
                sys.stderr.write(f"[mtl-lora-vl] {part}\n")
                self.last = part

    def flush(self) -> None:
        sys.stderr.flush()


class _LineTqdm(tqdm):
    """tqdm that draws no bar and refreshes only every ``mininterval``: ``set_postfix`` does not draw at once.
    Made with ``miniters=1``: tqdm's monitor thread redraws only a bar whose ``miniters`` grew above 1, and it drew
    a line in a pause (validation) after 10 s, from its thread, with another at the next step."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def line_bar(*, desc: str, total: int, initial: int = 0, unit: str = "it", disable: bool = False,
             interval: float = 15.0) -> tqdm:
    """A progress "bar" for a log file or CI log (stderr not a terminal): a line at most every ``interval``
    seconds, e.g. ``[mtl-lora-vl] train: 50% 10/20 [00:07<00:07, 1.36step/s, loss=2.320]``."""
    return _LineTqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, file=_Lines(),
                     mininterval=interval, miniters=1, ncols=0, leave=True,
                     bar_format="{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                                "{rate_fmt}{postfix}]")
