"""The module the training loop calls (:func:`wrap_model`): the model, under DDP when distributed (and when DDP must
look for unused parameters), compiled with ``--compile``.
"""

from __future__ import annotations

import torch
from torch import nn

from .run import Run


def wrap_model(run: Run) -> nn.Module:
    """The module the loop calls: the model, under DDP when distributed, compiled with ``--compile``."""
    model, opts, info = run.setup.model, run.opts, run.info
    net: nn.Module = model
    if info.enabled:
        # Every adapter parameter gets a gradient each step only when every task is in every batch, some
        # task uses the text tower (classification alone never runs it), some task runs the decoder when
        # there is one (a CoCa's default targets include it; retrieval never runs it), and the targets are
        # the family's defaults (others may name modules no forward reaches, e.g. LLaVA vision layers past
        # vision_feature_layer). Otherwise DDP must look for unused parameters or it waits at step 2.
        kinds = [run.setup.kinds[n] for n in run.trained]
        text_unused = not any(k.uses_text or k.generative for k in kinds)
        decoder_unused = run.setup.backbone.has_decoder and not any(k.uses_decoder for k in kinds)
        # One task per batch leaves the other tasks' heads (and towers they alone run) idle -- except on the
        # generative path, where every task runs the same modules and no head has parameters (the adapter
        # tensors hold every task's rows, so they always get a gradient).
        head_params = any(p.requires_grad for n in run.trained for p in model.heads[n].parameters())
        same_modules = all(k.generative for k in kinds) and not head_params
        unused = ((opts.batch_mode == "homogeneous" and not same_modules) or len(run.trained) > opts.batch_size
                  or text_unused or decoder_unused or opts.targets != "default")
        model.ranks = info   # in-batch negatives (retrieval) from every rank's rows
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=unused)
    if opts.compile:
        net = torch.compile(net)
    return net
