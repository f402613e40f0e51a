"""Routing through generation: one task id per input row, k language-model rows per input row.

Hugging Face ``generate`` runs the vision encoder on the B input rows, then repeats every tensor
(``repeat_interleave``) by k = ``max(num_beams, num_return_sequences)``, so the language model sees B·k rows at
every decoding step (rows i·k .. i·k + k - 1 belong to input i, and beam reordering of the KV cache stays
inside those groups). Scoring candidates after a prompt (``sequence_scores``) does the same with k = C.

The adapted layers stay strict: a batch whose size differs from the routed ids is an error, except inside
:func:`expanded_rows` of *that* model, which re-opens the model's route as ``route.allowing(k)``: a batch of
exactly k times the routed rows is then routed with the ids repeated k times (``Route.expand(k)``), and
activation recomputation replays that route like any other. ``attach`` gives a model with a Hugging Face ``generate`` an
instance-level ``generate`` that opens that scope for the k of the call, so
``with mtl_lora_vl.route(model, ids): model.generate(...)`` just works; nothing else (training,
a plain forward) ever accepts a mismatched batch.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from .routing import RoutingError, find_router
from .scopes import widened

__all__ = ["RoutedGenerate", "expanded_rows", "generation_rows", "install_routed_generate",
           "uninstall_routed_generate"]


@contextmanager
def expanded_rows(model: nn.Module, k: int) -> Iterator[None]:
    """Inside this scope the adapted layers of ``model`` also accept exactly k rows per routed id (row
    i·k + j routed like id i): the current route of the model, re-opened as ``route.allowing(k)``, so
    activation recomputation replays it too. A no-op for a model without adapters, for k = 1 and for a
    route that fits any batch (one task by name or index, or none on a one-task adapter). ``model`` may be a
    wrapper of the adapted model (found as :func:`~.routing.find_adapted` finds it)."""
    if k < 1:
        raise ValueError(f"expanded_rows: k must be >= 1, got {k}")
    adapted = any(m.__dict__.get("_mtl_lora") is not None for m in model.modules())
    router = find_router(model) if adapted else None   # a wrapper of several adapted models is refused there
    current = None if router is None else router.current
    if current is None or k == 1 or current.batch_size is None:
        yield
        return
    with widened(router, current.allowing(k)):
        yield


def generation_rows(model: nn.Module, kwargs: dict[str, Any]) -> int:
    """Language-model rows per input row of a Hugging Face ``generate(**kwargs)`` call, as ``generate`` expands
    them: ``max(num_beams, num_return_sequences)``, each the first that is set of the call's keyword, its
    ``generation_config``'s value and the model's (a ``GenerationConfig`` may leave them None, and
    ``generate`` then takes the model's)."""
    configs = (kwargs.get("generation_config"), getattr(model, "generation_config", None))

    def get(name: str) -> int:
        value = kwargs.get(name)
        for cfg in configs:
            value = getattr(cfg, name, None) if value is None else value
        return max(1, int(value or 1))

    return max(get("num_beams"), get("num_return_sequences"))


def _positional(generate: Any, args: tuple) -> dict[str, Any]:
    """``args`` of a ``generate(self, ...)`` call by parameter name (Hugging Face's second is
    ``generation_config``: ``generate(input_ids, config)`` sets the beams too)."""
    try:
        params = list(inspect.signature(generate).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return dict(zip([p.name for p in params if p.kind in kinds], args))


def _check_input_rows(model: nn.Module, given: dict[str, Any]) -> None:
    """RoutingError unless the call's input rows are as many as the routed ids: inside the call a tower that sees k
    rows per routed id is routed as beams would be, so a route of B / k ids for B rows (and an image per row)
    passed the layers of a model adapted in its vision tower only, each image taking another row's task."""
    info = model.__dict__.get("_mtl_lora")
    current = None if info is None else info.router.current
    if current is None or current.batch_size is None or not info.router.active:
        return
    rows = next((given[k].shape[0] for k in ("input_ids", "inputs_embeds") if isinstance(given.get(k), Tensor)), None)
    if rows is not None and rows != current.batch_size:
        raise RoutingError(
            f"generate: routed {current.batch_size} task ids but the batch has {rows} input rows; route one id per "
            "input row (generate repeats each row's id for its beams and returned sequences itself)")


#: generate's modes that keep k rows per input row through every step (greedy, sampling, beams; assisted decoding
#: of one row), which a per-row route follows; others (contrastive search, DoLa, group or constrained beams: Hub code
#: in transformers 5) and a ``custom_generate`` may run several candidates per row after the prefill.
_ROUTED_MODES = ("greedy_search", "sample", "beam_search", "beam_sample", "assisted_generation")


def _check_generation_mode(model: nn.Module, given: dict[str, Any]) -> None:
    """RoutingError before anything runs for a call under a per-row route whose decoding this routing cannot follow
    (it failed after the prefill, naming a layer: "routed 2 task ids but the batch here has 6 samples")."""
    info = model.__dict__.get("_mtl_lora")
    current = None if info is None else info.router.current
    if current is None or current.batch_size is None or not info.router.active:
        return
    mode = "custom_generate" if given.get("custom_generate") is not None else None
    config = given.get("generation_config") or getattr(model, "generation_config", None)
    if mode is None and hasattr(config, "get_generation_mode"):
        config = copy.deepcopy(config)
        config.update(**{k: v for k, v in given.items() if hasattr(config, k)})
        mode = getattr(config.get_generation_mode(given.get("assistant_model")), "value", None)
    if mode is not None and mode not in _ROUTED_MODES:
        raise RoutingError(
            f"generate: {mode} under a route of one task per row: it may run several candidates per row, which the "
            "route cannot follow; use greedy, sampling or beam search (num_beams, num_return_sequences), or route "
            "one task for the whole batch (mlv.route(model, 'task'))")


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
        given = {**_positional(type(model).generate, args), **kwargs}
        if isinstance(given.get("inputs"), Tensor):
            given.setdefault("inputs_embeds" if given["inputs"].is_floating_point() else "input_ids", given["inputs"])
        _check_input_rows(model, given)
        _check_generation_mode(model, given)
        check = getattr(model.__dict__.get("_mtl_lora"), "row_check", None)
        if check is None:
            with expanded_rows(model, generation_rows(model, given)):
                return type(model).generate(model, *args, **kwargs)
        # generate encodes the images before the prefill (mm_encoder_outputs), so the forward's count sees no pixel
        was = check[1].checked   # values: the call's inputs are counted here, for the image path and the prefill
        try:
            check[1](check[0], (), given)   # (one entry pushed, also when it refuses: popped below)
            check[1].checked = True
            with expanded_rows(model, generation_rows(model, given)):
                return type(model).generate(model, *args, **kwargs)
        finally:
            check[1].checked = was
            check[1].after(check[0], (), None)

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
