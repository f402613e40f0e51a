"""Saying when a language model's rows pass its context (its positions past it were never trained: what is generated or
scored there goes silently wrong): ``generate``'s prompts plus the new tokens, ``sequence_scores``' prompts plus the
longest candidate; and a CoCa caption decoder's ``max_len`` past its context (its captions stop there). Said on every
call, but once per task inside :func:`once_per_task`, which a task's evaluation opens: there every batch (and every
group of candidates, every pass) would say it again. That one line is said when the scope closes, of the widest call
(the first call past the context can be far narrower than the longest prompt). Under torchrun each rank says its own
calls' (``rank_warning``): the rows past the context may all be another rank's shard."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..log import rank_warning

__all__ = ["once_per_task", "warn_caption_cut", "warn_past_context", "warn_scored_past_context"]

logger = logging.getLogger(__name__)

#: Key in a backbone's ``__dict__``: the open :func:`once_per_task` scope (a :class:`_Scope`); in a task's: the widths
#: said for it (``{what: width}``).
_SAID = "_context_said"


@dataclass
class _Scope:
    """An open :func:`once_per_task` scope: its task's name (None: a task without one), the widths already said for
    that task, and the widest call of each warning seen in it, ``{what: (width, message, args)}``, said when it closes,
    naming the task (two tasks' lines, said at the end of a training run, read alike without it)."""

    task: str | None
    said: dict[str, int]
    widest: dict[str, tuple[int, str, tuple[Any, ...]]] = field(default_factory=dict)

    def close(self) -> None:
        """Say each warning's widest call, unless as wide a one was said for the task before."""
        for what, (width, message, args) in self.widest.items():
            if width > self.said.get(what, 0):
                self.said[what] = width
                if self.task is not None:
                    message, args = "task %r: " + message, (self.task, *args)
                rank_warning(logger, message + " (said once for this task, of its widest call)", *args)


@contextmanager
def once_per_task(backbone: Any, task: Any) -> Iterator[None]:
    """Within: each of ``backbone``'s context warnings said once for ``task`` (a task kind), when the scope closes, of
    the widest call, naming the task; what was said is kept on the task, so its next evaluation (adapted after
    zero-shot, each validation) says nothing again unless a call is wider."""
    state, kept = getattr(backbone, "__dict__", None), getattr(task, "__dict__", None)
    if state is None or kept is None:
        yield
        return
    before = state.get(_SAID)
    name = getattr(task, "name", None)
    scope = state[_SAID] = _Scope(name if isinstance(name, str) else None, kept.setdefault(_SAID, {}))
    try:
        yield
    finally:
        if before is None:
            state.pop(_SAID, None)
        else:
            state[_SAID] = before
        scope.close()


def _say(backbone: Any, what: str, width: int, message: str, *args: Any) -> None:
    """Warn now, or (inside :func:`once_per_task`) keep the call if it is the widest of ``what`` so far."""
    scope = getattr(backbone, "__dict__", {}).get(_SAID)
    if not isinstance(scope, _Scope):
        rank_warning(logger, message, *args)
    elif what not in scope.widest or width > scope.widest[what][0]:
        scope.widest[what] = (width, message, args)


def warn_past_context(backbone: Any, width: int, new_tokens: int, what: str) -> None:
    """Warn when prompts ``width`` tokens wide plus ``new_tokens`` pass ``backbone.lm_context``."""
    context = backbone.lm_context
    if context and width + new_tokens > context:
        _say(backbone, what, width + new_tokens, "%s: prompts of up to %d tokens plus %d new ones pass the language "
             "model's context of %d tokens; shorten the prompts or lower max_len", what, width, new_tokens, context)


def warn_caption_cut(backbone: Any, max_len: int, context: int, seq_len: bool = False) -> None:
    """Warn when a caption decoder's ``generate`` is asked for ``max_len`` new tokens past its ``context`` (its start
    token and ``context - 1`` new ones): the captions stop there, not at ``max_len`` (1000 gave 19 tokens, unsaid).
    ``seq_len``: the call gave open_clip's ``seq_len``, ``max_len + 1`` (the start token counted), named as given."""
    if max_len > context - 1:
        name, given, most = ("seq_len", max_len + 1, context) if seq_len else ("max_len", max_len, context - 1)
        _say(backbone, "generate", max_len, "generate: %s %d passes the caption decoder's context of %d tokens (its "
             "start token and %d new ones): captions stop at %d tokens; lower %s to %d or less", name, given,
             context, context - 1, context - 1, name, most)


def warn_scored_past_context(backbone: Any, width: int, cands: list[list[list[int]]]) -> None:
    """Warn when prompts ``width`` tokens wide and the longest of the candidate id lists ``cands`` (each with its end
    token, as a training row counts it) pass ``backbone.lm_context``."""
    context = backbone.lm_context
    longest = max(len(c) for row in cands for c in row)
    if context and width + longest > context:
        _say(backbone, "sequence_scores", width + longest, "sequence_scores: prompts of up to %d tokens and "
             "candidates of up to %d tokens (their end token included) pass the language model's context of %d "
             "tokens; shorten the prompt or the candidates (class names, generative.target)", width, longest, context)
