"""Saying when a language model's rows pass its context (its positions past it were never trained: what is generated
or scored there goes silently wrong): ``generate``'s prompts plus the new tokens, ``sequence_scores``' prompts plus the
longest candidate. Said on every call, but once per task inside :func:`once_per_task`, which a task's evaluation opens:
there every batch (and every group of candidates, every pass) would say it again."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["once_per_task", "warn_past_context", "warn_scored_past_context"]

logger = logging.getLogger(__name__)

#: Key in a backbone's and a task's ``__dict__``: what the open :func:`once_per_task` scope has said for its task.
_SAID = "_context_said"


@contextmanager
def once_per_task(backbone: Any, task: Any) -> Iterator[None]:
    """Within: each of ``backbone``'s context warnings said at most once for ``task`` (a task kind); what was said is
    kept on the task, so its next evaluation (adapted after zero-shot, each validation) says nothing again."""
    state, said = getattr(backbone, "__dict__", None), getattr(task, "__dict__", None)
    if state is None or said is None:
        yield
        return
    before = state.get(_SAID)
    state[_SAID] = said.setdefault(_SAID, set())
    try:
        yield
    finally:
        if before is None:
            state.pop(_SAID, None)
        else:
            state[_SAID] = before


def _say(backbone: Any, what: str, message: str, *args: Any) -> None:
    said = getattr(backbone, "__dict__", {}).get(_SAID)
    if said is not None:
        if what in said:
            return
        said.add(what)
        message += " (said once for this task)"
    logger.warning(message, *args)


def warn_past_context(backbone: Any, width: int, new_tokens: int, what: str) -> None:
    """Warn when prompts ``width`` tokens wide plus ``new_tokens`` pass ``backbone.lm_context``."""
    context = backbone.lm_context
    if context and width + new_tokens > context:
        _say(backbone, what, "%s: prompts of up to %d tokens plus %d new ones pass the language model's context of %d "
             "tokens; shorten the prompts or lower max_len", what, width, new_tokens, context)


def warn_scored_past_context(backbone: Any, width: int, cands: list[list[list[int]]]) -> None:
    """Warn when prompts ``width`` tokens wide and the longest of the candidate id lists ``cands`` (each with its end
    token, as a training row counts it) pass ``backbone.lm_context``."""
    context = backbone.lm_context
    longest = max(len(c) for row in cands for c in row)
    if context and width + longest > context:
        _say(backbone, "sequence_scores", "sequence_scores: prompts of up to %d tokens and candidates of up to %d "
             "tokens (their end token included) pass the language model's context of %d tokens; shorten the prompt "
             "or the candidates (class names, generative.target)", width, longest, context)
