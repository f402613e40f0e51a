"""Routing through generation: one task id per input row, k language-model rows per input row.

Hugging Face ``generate`` runs the vision encoder on the B input rows, then repeats every tensor
(``repeat_interleave``) by k = ``max(num_beams, num_return_sequences)``, so the language model sees B·k rows at
every decoding step (rows i·k .. i·k + k - 1 belong to input i, and beam reordering of the KV cache stays
inside those groups). Scoring candidates after a prompt (``sequence_scores``) does the same with k = C.

The adapted layers stay strict: a batch whose size differs from the routed ids is an error, except inside
:func:`expanded_rows` of *that* model, where a batch of exactly k times the routed rows is routed with the
ids repeated k times (``Route.expand(k)``). ``attach`` gives a model with a Hugging Face ``generate`` an
instance-level ``generate`` that opens that scope for the k of the call, so
``with mtl_lora_vl.route(model, ids): model.generate(...)`` just works; nothing else (training,
a plain forward) ever accepts a mismatched batch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

__all__ = ["RoutedGenerate", "expanded_rows", "generation_rows", "install_routed_generate",
           "uninstall_routed_generate"]


@contextmanager
def expanded_rows(model: nn.Module, k: int) -> Iterator[None]:
    """Inside this scope the adapted layers of ``model`` also accept k rows per routed id (row i·k + j routed
    like id i). A no-op for a model without adapters or for k = 1; scopes nest and restore on exit."""
    router = next((m._mtl_lora.router for m in model.modules() if getattr(m, "_mtl_lora", None) is not None), None)
    if router is None or k == 1:
        yield
        return
    if k < 1:
        raise ValueError(f"expanded_rows: k must be >= 1, got {k}")
    saved = router.expansion
    router.expansion = int(k)
    try:
        yield
    finally:
        router.expansion = saved


def generation_rows(model: nn.Module, kwargs: dict[str, Any]) -> int:
    """Language-model rows per input row of a Hugging Face ``generate(**kwargs)`` call, as ``generate`` expands
    them: ``max(num_beams, num_return_sequences)``, from the call, its ``generation_config`` or the model's."""
    cfg = kwargs.get("generation_config") or getattr(model, "generation_config", None)

    def get(name: str) -> int:
        value = kwargs.get(name, getattr(cfg, name, None))
        return max(1, int(value or 1))

    return max(get("num_beams"), get("num_return_sequences"))


class RoutedGenerate:
    """The ``generate`` of an adapted model: the class's own, inside :func:`expanded_rows` for the call's k.

    Stored as an instance attribute (the class, its name and ``save_pretrained``'s ``architectures`` are
    untouched); deep copies and pickles re-create it for the copy, so a copy routes through its own router.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.__wrapped__ = type(model).generate
        self.__doc__ = type(model).generate.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        model = self.model
        with expanded_rows(model, generation_rows(model, kwargs)):
            return type(model).generate(model, *args, **kwargs)

    def __reduce__(self) -> tuple:
        return RoutedGenerate, (self.model,)

    def __deepcopy__(self, memo: dict) -> RoutedGenerate:
        return RoutedGenerate(copy.deepcopy(self.model, memo))


def install_routed_generate(model: nn.Module) -> None:
    """Give a model with a Hugging Face ``generate`` (one with a ``generation_config``) a
    :class:`RoutedGenerate` as its ``generate``."""
    if callable(getattr(type(model), "generate", None)) and hasattr(model, "generation_config"):
        model.generate = RoutedGenerate(model)


def uninstall_routed_generate(model: nn.Module) -> None:
    """Take the :class:`RoutedGenerate` off a model whose adapters are removed (its class's ``generate`` again)."""
    if isinstance(vars(model).get("generate"), RoutedGenerate):
        del model.generate
