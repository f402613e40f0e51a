"""A route of task ids all equal is one task (module doc of adapters/row_images.py): it must take rows holding any
number of images, as the task's name does. The vision tower's layers refused it (routed 3 task ids but the batch
here has 11 samples) for every family routed by the image path (LLaVA, LLaVA-NeXT, Idefics3, ...): a training loop
under route(model, task_ids) failed on each batch whose rows happened to share one task (helper 165)."""

from __future__ import annotations

import pytest
import test_llava_next as next_
import torch
from anyres_family import adapted

import mtl_lora_vl as mlv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return next_.build(tmp_path_factory.mktemp("llava_next_equal_ids"))


@pytest.mark.parametrize("counts", [[2, 0, 1], [1, 1, 1]])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_ids_all_equal_are_the_tasks_name(tiny, counts, checkpointing):
    m = adapted(tiny)
    x = next_.batch(tiny, counts)
    if checkpointing:
        m.train()
        m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    params = [p for n, p in m.named_parameters() if "lora_" in n and p.requires_grad]
    out = {}
    for tasks in ("b", [1, 1, 1]):
        with mlv.route(m, tasks):
            logits = m(**x).logits
        grads = torch.autograd.grad(logits[:, -1].pow(2).sum(), params, allow_unused=True)
        out[str(tasks)] = (logits.detach(), [g for g in grads if g is not None])
    (la, ga), (lb, gb) = out.values()
    torch.testing.assert_close(lb, la)
    assert len(ga) == len(gb) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ga, gb))
    kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, num_beams=3, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        with mlv.route(m, "b"):
            ref = m.generate(**x, **kw)
        with mlv.route(m, [1, 1, 1]):
            assert torch.equal(m.generate(**x, **kw), ref)
