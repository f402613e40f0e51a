"""Review 186: task matrices formed by frozen adapters under gradients (load_adapter freezes them; input saliency or a
head trained on top runs with gradients) belong to the route scope that formed them, like those formed without
gradients: they were reused in every later scope, after a write the version counter misses (p.data.copy_);
and LoRAMultiheadAttention(is_causal=True) with a key_padding_mask and no attn_mask is causal (the causal part was
dropped)."""

import copy

import pytest
import torch
from conftest import tiny_open_clip

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.attention import LoRAMultiheadAttention
from mtl_lora_vl.adapters.layers import ADAPTER_PARAM_NAMES


def _model():
    torch.manual_seed(0)
    m = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=["a", "b", "c"], n_up=3))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES:
                p.add_(torch.randn_like(p) * 0.3)
    return m.eval()


def _fresh(m, tasks, img):
    c = copy.deepcopy(m)   # a copy starts with an empty Formation
    with torch.no_grad(), mlv.route(c, tasks):
        return c.encode_image(img)


def test_frozen_adapters_in_grad_mode_do_not_reuse_stale_mt_across_scopes():
    """load_adapter leaves the adapters frozen; with gradients on (input saliency, a head trained on top) their M_t
    have no graph, so neither ``spent`` nor ``done`` ever ends the group: it is reused in every later scope."""
    m = _model()
    ps = [p for n, p in m.named_parameters() if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES]
    for p in ps:
        p.requires_grad_(False)
    img = torch.randn(4, 3, 32, 32, requires_grad=True)
    for _ in range(2):
        with mlv.route(m, "b"):
            m.encode_image(img).sum().backward()
    for p in ps:
        p.data.copy_(p.data * 2)
    with mlv.route(m, "b"):
        got = m.encode_image(img)
    torch.testing.assert_close(got, _fresh(m, "b", img.detach()).requires_grad_(False), check_stride=False)


@pytest.mark.parametrize("tasks", ["b", [1, 0, 2, 1]])
def test_a_write_the_version_counter_misses_is_seen_by_the_next_scope(tasks):
    """The README's contract: forwards without gradients inside one scope reuse their task matrices (generation's
    decoding steps); a p.data write (an EMA swap) is seen once the scope is left and entered again."""
    m = _model()
    img = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        with mlv.route(m, tasks):
            m.encode_image(img)
            m.encode_image(img)
        for n, p in m.named_parameters():
            if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES:
                p.data.copy_(p.data + 0.5)
        with mlv.route(m, tasks):
            got = m.encode_image(img)
    torch.testing.assert_close(got, _fresh(m, tasks, img))


@pytest.mark.parametrize("need_weights", [False, True])
def test_is_causal_with_key_padding_mask_is_causal_or_refused(need_weights):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    lm = LoRAMultiheadAttention(mha, mlv.MTLLoRAConfig(tasks=["a"])).eval()
    x = torch.randn(2, 5, 8)
    kpm = torch.zeros(2, 5, dtype=torch.bool)
    kpm[0, -1] = True
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    try:
        got = lm(x, x, x, key_padding_mask=kpm, is_causal=True, need_weights=need_weights)[0]
    except (RuntimeError, ValueError):
        return   # refused, as torch refuses it: acceptable
    want = lm(x, x, x, key_padding_mask=kpm, attn_mask=causal, need_weights=need_weights)[0]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("update", ["p.data", "fused_adamw"])
def test_a_forward_with_gradients_that_leaves_a_member_out_does_not_hand_its_mt_to_the_next_forward(update):
    """Helper 356: an image-only forward with gradients leaves the text tower's layers (one group with the image
    tower's) without their M_t, so the group stayed open; after a write that counts no version (p.data; a fused
    AdamW step with the gradients of an earlier backward) and no backward through it, the next forward under those
    tasks reused its M_t (3.7 off here; 4.9 on a 3-layer MLP in float64)."""
    m = _model().train()
    ids, img, tok = torch.tensor([1, 0, 2, 1]), torch.randn(4, 3, 32, 32), torch.randint(0, 60, (4, 12))
    ps = [p for n, p in m.named_parameters() if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES]
    opt = torch.optim.AdamW(ps, lr=0.05, fused=True)
    for _ in range(2):   # members of both towers, then one group of them
        with mlv.route(m, ids):
            (m.encode_image(img) * m.encode_text(tok)).sum().backward()
    with mlv.route(m, ids):
        m.encode_image(img)   # the text tower's members do not run; no backward (a loss left unused)
    if update == "fused_adamw":
        opt.step()   # the first two backwards' gradients
    else:
        with torch.no_grad():
            for p in ps:
                p.data.mul_(0.5)
    with mlv.route(m, ids):
        got = m.encode_image(img)
    torch.testing.assert_close(got.detach(), _fresh(m, ids, img))
