"""A task kind that draws from every global generator, for the resume tests; also a train_vl entry point.

No built-in kind draws from Python's ``random`` or NumPy while training (the sampler has generators of
its own, dropout draws from torch's), so the resume tests use this one: retrieval that trains on a
random reference caption of each image (``random``, ``numpy.random`` and ``torch`` in the loader's
rows) and scales its loss by a random factor (``random`` and ``numpy.random`` in the training process).

It is registered only on demand (:func:`registered`), so that the registry the other tests see holds
the built-in kinds alone. ``python tests/rng_kind.py ARGS`` runs ``train_vl.py ARGS`` with it registered
(for torchrun).
"""

from __future__ import annotations

import contextlib
import random
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from mtl_lora_vl.tasks import registry
from mtl_lora_vl.tasks.base import caption_of
from mtl_lora_vl.tasks.retrieval import RetrievalKind
from mtl_lora_vl.tasks.spec import builtin_spec_dirs

KIND = "sampled_retrieval"


class SampledRetrievalKind(RetrievalKind):
    def sample_text(self, example):
        caps = example.captions or (caption_of(self.name, example),)
        n = len(caps)
        i = random.randrange(n) + int(np.random.randint(n)) + int(torch.randint(n, ()))
        return caps[i % n]

    def loss(self, head, backbone, batch, image_emb, text_emb):
        jitter = (1.0 + 0.2 * random.random()) * (1.0 + 0.2 * float(np.random.rand()))
        return super().loss(head, backbone, batch, image_emb, text_emb) * jitter


def register() -> None:
    registry.register_kind(KIND)(SampledRetrievalKind)


@contextlib.contextmanager
def registered() -> Iterator[None]:
    register()
    try:
        yield
    finally:
        registry._KINDS.pop(KIND, None)


def small_spec(tmp: Path, name: str, n_train: int = 48, n_eval: int = 16, kind: str | None = None) -> Path:
    """A copy of a built-in spec with small splits (``kind``: the sampled kind, named ``sampled``)."""
    src = next(d / f"{name}.toml" for d in builtin_spec_dirs() if (d / f"{name}.toml").is_file())
    text = src.read_text()
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        text = re.sub(rf"^\[data\.{split}\]$", f"[data.{split}]\nn = {n}", text, flags=re.M)
    if kind:
        text = re.sub(r'^name = ".*"$', 'name = "sampled"', text, flags=re.M)
        text = re.sub(r'^kind = ".*"$', f'kind = "{kind}"', text, flags=re.M)
        text = re.sub(r'^source = "builtin"$', f'source = "builtin"\nworld_kind = "{name}"', text, flags=re.M)
        name = "sampled"
    path = Path(tmp) / f"{name}.toml"
    path.write_text(text)
    return path


def sigterm_in_step(step: int):
    """``forward_backward`` of the trainer that sends this process SIGTERM inside step ``step`` (after its
    forward and backward, before the optimizer step): a preemption notice that arrives mid-step."""
    import os
    import signal

    import mtl_lora_vl.training.train as train_module

    real, calls = train_module.forward_backward, []

    def signalled(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    return signalled


if __name__ == "__main__":  # train with the sampled kind registered; "eval ARGS" evaluates instead
    import os

    from mtl_lora_vl.cli import eval_main, train_main

    register()
    if os.environ.get("SIGTERM_RANK_STEP"):  # "rank:step": only that rank gets the signal
        import mtl_lora_vl.training.train as train_module

        rank, step = (int(x) for x in os.environ["SIGTERM_RANK_STEP"].split(":"))
        if int(os.environ.get("RANK", "0")) == rank:
            train_module.forward_backward = sigterm_in_step(step)
    if os.environ.get("FAIL_SETUP_RANK") == os.environ.get("RANK", "0"):  # that rank's set-up fails
        import mtl_lora_vl.training.train as train_module

        def failing_setup(*args, **kwargs):
            import time

            time.sleep(3)   # the other ranks are past their set-up by now
            raise ValueError("this rank's set-up failed (FAIL_SETUP_RANK)")

        train_module.build_setup = failing_setup
    if sys.argv[1:2] == ["eval"]:
        sys.exit(eval_main(sys.argv[2:]))
    sys.exit(train_main(sys.argv[1:]))
