"""Taking MTL-LoRA adapters out of a model again: :func:`unload`, with or without one task merged into the weights.

Each adapted layer becomes the module ``attach`` replaced (its own class and hooks), holding the adapted layer's
weight tensors; ``MTLLoRAModel.unload`` / ``merge_and_unload`` call it (and ``mtl_lora_vl.mtl_lora_model`` exports it).
"""

from __future__ import annotations

import torch
from torch import nn

from .adapters.attach import adapted_module, merge, unmerge, whole_model
from .adapters.attention import LoRAMultiheadAttention
from .adapters.compiled import unwatch_compiled
from .adapters.generation import uninstall_routed_generate
from .adapters.layers import LoRALinear
from .backbones.image_record import forget_loaded

__all__ = ["unload"]


@torch.no_grad()
def unload(model: nn.Module, task: str | None = None) -> nn.Module:
    """Take the adapters out of ``model`` in place and return it as a plain instance of its own class.

    With ``task``, that task is merged into the weights first (PEFT's ``merge_and_unload``); without, the
    exact base weights come back (PEFT's ``unload``), without the image reading / area ``load_adapter`` put on a
    bare model (merged, they stay: its images are read as the task was trained). Each adapted layer is the
    module ``attach`` replaced again (its own class, e.g. a subclass of ``nn.Linear``, and its hooks kept; PEFT
    gives back its base layers so too), holding the adapted layer's weight tensors; base parameters keep
    ``requires_grad=False`` as ``attach`` left them.
    """
    inner, whole = adapted_module(model), whole_model(model)[0]   # (load_adapter's record: on the whole model)
    if task is not None:
        merge(inner, task)
    else:
        unmerge(inner)
    every = list(inner.named_modules(remove_duplicate=False))   # a module reachable under several names: each
    attention = [n for n, m in every if isinstance(m, LoRAMultiheadAttention)]
    linear = [n for n, m in every if isinstance(m, LoRALinear) and not any(n.startswith(a + ".") for a in attention)]
    plain: dict[int, nn.Module] = {}   # one plain module per adapted one, set under each of its names
    for name in attention + linear:
        old = inner.get_submodule(name)
        new = plain.get(id(old))
        if new is None:
            new = _plain_attention(old) if isinstance(old, LoRAMultiheadAttention) else _plain_linear(old)
            new.train(old.training)
            plain[id(old)] = new
        parent, _, child = name.rpartition(".")
        setattr(inner.get_submodule(parent) if parent else inner, child, new)
    for hook in inner._mtl_lora.hooks:
        hook.remove()
    unwatch_compiled(inner._mtl_lora.router)
    del inner._mtl_lora
    uninstall_routed_generate(inner)
    if task is None:   # the base as it was: the image reading / area load_adapter put on it go (a backbone's stay)
        forget_loaded(inner)
        forget_loaded(whole)
    return model


def _plain_linear(m: LoRALinear) -> nn.Linear:
    """The linear layer ``m`` replaced, with ``m``'s weight tensors (the same, unless replaced since: a load with
    ``assign=True``)."""
    lin = m.__dict__.get("original")
    if lin is None:   # (an adapted layer pickled before it kept the original)
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
    lin.weight = m.weight
    lin.bias = m.bias
    return lin


def _plain_attention(m: LoRAMultiheadAttention) -> nn.MultiheadAttention:
    """As :func:`_plain_linear`, for an adapted ``nn.MultiheadAttention``."""
    mha = m.__dict__.get("original")
    if mha is None:
        mha = nn.MultiheadAttention(m.embed_dim, m.num_heads, dropout=m.dropout, bias=m.in_proj_bias is not None,
                                    batch_first=m.batch_first, device="meta")
    mha.in_proj_weight = m.in_proj_weight
    mha.in_proj_bias = m.in_proj_bias
    mha.out_proj = _plain_linear(m.out_proj)
    return mha

