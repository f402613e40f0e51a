"""The dtype adapters are made in (``precision.adapter_dtype``): fp32 on fp32 / bf16 / fp16 bases, the base's own on a
float64 one; and a float64 adapter kept float64 through the forward, gradients, merge, save, load and plain export."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.attention import LoRAMultiheadAttention
from mtl_lora_vl.adapters.layers import ADAPTER_PARAM_NAMES, AdapterBank, LoRALinear
from mtl_lora_vl.adapters.routing import Router
from mtl_lora_vl.io import apply_plain_lora
from mtl_lora_vl.io.exports import PLAIN_WEIGHTS
from mtl_lora_vl.io.layout import ADAPTER_WEIGHTS
from mtl_lora_vl.precision import adapter_dtype

TASKS = ["a", "b", "c"]
IDS = [2, 0, 1, 0, 2]   # a mixed batch, rows not grouped by task


def _config(**kw) -> mlv.MTLLoRAConfig:
    return mlv.MTLLoRAConfig(tasks=TASKS, r=3, alpha=6, n_up=2, temperature=0.7, targets={"image": [r"^\d$"]}, **kw)


def _base(dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4)).to(dtype)


def _randomize(model: nn.Module) -> None:
    """Adapter values of float64 resolution (B starts at zero), drawn in float64 and copied in."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)


def _adapter_dtypes(model: nn.Module) -> set[torch.dtype]:
    return {p.dtype for n, p in model.named_parameters() if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES}


@pytest.mark.parametrize(("base", "want"), [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                            (torch.bfloat16, torch.float32), (torch.float16, torch.float32)])
def test_adapters_are_fp32_on_fp32_and_half_bases_and_float64_on_a_float64_one(base, want):
    """Adapters were made in fp32 whatever the base's dtype: on a float64 base an fp64 forward, gradient check or
    exactness test met fp32 rounding (~1e-7). They take the base weight's dtype where it is wider than fp32 now; on
    bf16 / fp16 / fp32 bases they stay fp32, as before (a Linear's bank and a MultiheadAttention's packed one)."""
    model = mlv.attach(_base(base), _config())
    assert _adapter_dtypes(model) == {want}
    mha = LoRAMultiheadAttention(nn.MultiheadAttention(4, 2, batch_first=True).to(base), _config())
    assert _adapter_dtypes(mha) == {want}
    assert adapter_dtype(base) == want


def test_adapter_dtype_leaves_narrow_and_non_float_bases_at_the_default_dtype():
    assert adapter_dtype(None) == torch.float32
    assert adapter_dtype(torch.int8) == torch.float32
    assert adapter_dtype(torch.float8_e4m3fn) == torch.float32


@pytest.mark.parametrize(("base", "want"), [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                            (torch.bfloat16, torch.float32), (torch.float16, torch.float32)])
def test_adapters_keep_their_dtype_where_torchs_default_dtype_is_float64(float64_default, base, want):
    """adapter_dtype returned torch's default dtype below a wider base: under ``torch.set_default_dtype(float64)`` a
    bf16, fp16 or fp32 base got float64 adapters (twice the memory, fp64 matmuls). Adapters are fp32 unless the base
    is float64, whatever the default: attach (a Linear's bank, a MultiheadAttention's packed one), add_task's new
    rows, and a bank made without a dtype (the adapter file check builds those on meta)."""
    assert torch.get_default_dtype() == torch.float64
    model = mlv.attach(_base(base), _config())
    assert _adapter_dtypes(model) == {want}
    mlv.add_task(model, "d")
    assert _adapter_dtypes(model) == {want}
    mha = LoRAMultiheadAttention(nn.MultiheadAttention(4, 2, batch_first=True).to(base), _config())
    assert _adapter_dtypes(mha) == {want}
    assert adapter_dtype(base) == want
    assert _adapter_dtypes(AdapterBank(6, 5, _config(), device=torch.device("meta"))) == {torch.float32}


def _formula(layer: LoRALinear, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """y_b = W x_b + b + s (Σ_i softmax(w_t / τ)_i B_i) Λ_t A x_b for each row b of task t (DESIGN §2), in float64."""
    rows = []
    for b, t in enumerate(ids):
        pi = torch.softmax(layer.lora_w[t] / layer.temperature, dim=0)
        bbar = sum(pi[i] * layer.lora_B[i] for i in range(layer.lora_B.shape[0]))
        delta = layer.scaling * bbar @ layer.lora_lambda[t] @ layer.lora_A
        rows.append(x[b] @ (layer.weight + delta).T + layer.bias)
    return torch.stack(rows)


@pytest.mark.parametrize("ids", [IDS, [1] * 5], ids=["mixed", "one_task"])
def test_a_float64_bases_routed_forward_is_the_formula_to_1e_12(ids):
    """fp32 adapters on a float64 base formed M_t in fp32: the routed output sat off the formula computed in float64
    from the same values (measured at 0bf61d5 on this model: 3.6e-8 mixed, 1.1e-8 one task). Float64 adapters: within
    1e-12."""
    model = mlv.attach(_base(), _config())
    _randomize(model)
    x = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad(), mlv.route(model, ids):
        got = model(x)
        want = _formula(model[1], _formula(model[0], x, ids), ids)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_a_float64_adapters_gradients_pass_gradcheck():
    """``torch.autograd.gradcheck`` wants float64 inputs: the adapters of a float64 base are that now (fp32 ones made
    it fail at 0bf61d5: 'Jacobian mismatch for output 0 with respect to input 1', lora_A, through fp32 rounding)."""
    cfg = _config()
    layer = LoRALinear(nn.Linear(6, 5).double(), cfg)
    layer.router, layer.layer_name = Router(TASKS), "test.layer"
    _randomize(layer)
    names = ("lora_A", "lora_B", "lora_lambda", "lora_w")
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        layer.router.current = layer.router.make_route(IDS)
        try:
            return torch.func.functional_call(layer, dict(zip(names, params)), (x,))
        finally:
            layer.router.current = None

    params = tuple(getattr(layer, n).detach().clone().requires_grad_() for n in names)
    assert {p.dtype for p in params} == {torch.float64}
    assert torch.autograd.gradcheck(f, (x, *params))


def test_a_float64_adapter_saves_loads_merges_and_exports_in_float64(tmp_path, caplog):
    """A float64 base's adapter file holds float64 tensors and loads into a fresh float64 base bit for bit, unwarned
    (into an fp32 base: rounded, with the warning); merging and the plain export fold it in float64, the merged
    model's output the routed one's to 1e-12."""
    model = mlv.attach(_base(), _config())
    _randomize(model)
    x = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad(), mlv.route(model, "b"):
        routed = model(x)
    path = mlv.save_adapter(model, tmp_path / "adapter")
    assert {t.dtype for t in load_file(path / ADAPTER_WEIGHTS).values()} == {torch.float64}
    params = dict(model.named_parameters())
    with caplog.at_level(logging.WARNING):
        loaded = mlv.load_adapter(_base(), path)
    assert not [r for r in caplog.records if "float64" in r.getMessage()]
    for n, p in loaded.named_parameters():
        assert p.dtype == torch.float64 and torch.equal(p, params[n]), n
    with caplog.at_level(logging.WARNING):
        narrow = mlv.load_adapter(_base(torch.float32), path)
    assert _adapter_dtypes(narrow) == {torch.float32}
    assert [r for r in caplog.records if "rounded to fp32" in r.getMessage()]

    plain = mlv.export_lora(model, "b", tmp_path / "plain", format="plain")
    assert {t.dtype for t in load_file(plain / PLAIN_WEIGHTS).values()} == {torch.float64}
    merged = mlv.merge(model, "b")
    folded = apply_plain_lora(_base(), plain)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), routed, atol=1e-12, rtol=0)
        torch.testing.assert_close(folded(x), routed, atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ["mtl_lora", "task_lora", "moe_lora"])
def test_a_float64_adapters_added_task_is_drawn_in_float64(method):
    """Helper 519: ``add_task`` on float64 adapters drew the new task's random rows (w_t, task_lora's A_t) in fp32 and
    widened them, so every one of their values was an fp32 number, where attach draws a float64 adapter's in float64
    ("initialised as at construction"). Now drawn in the adapter's dtype; the old rows are kept as they were."""
    kw = {} if method == "task_lora" else {"n_up": 2}
    cfg = mlv.MTLLoRAConfig(tasks=TASKS, r=3, method=method, targets={"image": [r"^\d$"]}, **kw)
    model = mlv.attach(_base(), cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora" in n}
    torch.manual_seed(2)
    mlv.add_task(model, "d")
    drawn = {n: p for n, p in model.named_parameters() if n.endswith(("lora_w", "lora_A")) and p.shape[0] == 4}
    assert drawn, "no grown per-task random rows"
    for n, p in drawn.items():
        assert p.dtype == torch.float64
        new = p.detach()[3]
        assert (new.float().double() != new).any(), f"{n}: the new task's row holds fp32 values only"
        torch.testing.assert_close(p.detach()[:3], before[n], rtol=0, atol=0)
