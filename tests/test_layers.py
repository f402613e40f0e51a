"""Adapter layers against a dense reference built from the formula of DESIGN §2."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.attention import LoRAMultiheadAttention
from mtl_lora_vl.adapters.layers import LoRALinear
from mtl_lora_vl.adapters.routing import Router

METHODS = ["mtl_lora", "lora", "task_lora", "multi_lora", "moe_lora"]
TASKS = ["a", "b", "c"]


def _randomize(bank) -> None:
    """Give every adapter tensor non-trivial values (B starts at zero)."""
    with torch.no_grad():
        for name, p in bank.named_parameters(recurse=False):
            if name.startswith("lora_"):
                p.copy_(torch.randn_like(p) * 0.3)


def reference_delta(bank, t: int) -> torch.Tensor:
    """ΔW_t straight from the paper's formula, independent of the layer code."""
    s, tau, A, B = bank.scaling, bank.temperature, bank.lora_A, bank.lora_B
    if bank.method == "mtl_lora":
        pi = torch.softmax(bank.lora_w[t] / tau, dim=0)
        Bbar = sum(pi[i] * B[i] for i in range(B.shape[0]))
        lam = torch.eye(bank.r)
        if bank.lambda_type == "full":
            lam = bank.lora_lambda[t]
        elif bank.lambda_type == "diagonal":
            lam = torch.diag(bank.lora_lambda[t])
        d = s * Bbar @ lam @ A
    elif bank.method == "lora":
        d = s * B[0] @ A
    elif bank.method == "multi_lora":
        d = s * sum(B[i] @ A[i] for i in range(B.shape[0]))
    elif bank.method == "moe_lora":
        g = torch.softmax(bank.lora_w[t] / tau, dim=0)
        d = s * sum(g[i] * B[i] @ A[i] for i in range(B.shape[0]))
    else:
        d = s * B[t] @ A[t]
    if bank.out_slices is not None:
        k = d.shape[0] // sum(bank.out_slices)
        parts, it = [], iter(d.split(k))
        for on in bank.out_slices:
            parts.append(next(it) if on else torch.zeros(k, d.shape[1]))
        d = torch.cat(parts)
    return d


def make_linear(method: str, lambda_type: str = "full", d_in=12, d_out=10, slices=None, n_up=3):
    cfg = mlv.MTLLoRAConfig(tasks=TASKS, r=4, alpha=8, n_up=n_up, method=method, lambda_type=lambda_type)
    layer = LoRALinear(nn.Linear(d_in, d_out * (len(slices) if slices else 1)), cfg, slices)
    layer.router, layer.layer_name = Router(TASKS), "test.layer"
    _randomize(layer)
    return layer


@pytest.mark.parametrize(("method", "lambda_type"),   # lambda_type only shapes mtl_lora
                         [(m, "full") for m in METHODS] + [("mtl_lora", "diagonal"), ("mtl_lora", "none")])
def test_linear_matches_dense_reference_per_sample(method, lambda_type):
    layer = make_linear(method, lambda_type)
    x = torch.randn(6, 5, 12)
    ids = torch.tensor([0, 1, 2, 2, 0, 1])
    with _scope(layer, ids):
        y = layer(x)
    for b in range(6):
        W = layer.weight + reference_delta(layer, int(ids[b]))
        torch.testing.assert_close(y[b], x[b] @ W.T + layer.bias, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.delta_weight(int(ids[b])),
                                   reference_delta(layer, int(ids[b])), atol=1e-5, rtol=1e-5)


class _scope:
    """route() for a bare layer: set the router's route directly."""

    def __init__(self, layer, tasks):
        self.router, self.tasks = layer.router, tasks

    def __enter__(self):
        self.router.current = self.router.make_route(self.tasks)

    def __exit__(self, *exc):
        self.router.current = None


@pytest.mark.parametrize("method", METHODS)
def test_mixed_batch_equals_per_task_runs_row_by_row(method):
    layer = make_linear(method)
    x = torch.randn(7, 3, 12)
    ids = torch.tensor([2, 0, 0, 1, 2, 1, 0])
    with _scope(layer, ids):
        mixed = layer(x)
    for t in range(3):
        with _scope(layer, TASKS[t]):
            alone = layer(x[ids == t])
        torch.testing.assert_close(mixed[ids == t], alone, atol=1e-6, rtol=1e-6)


def test_single_task_mtl_lora_with_n1_identity_lambda_is_plain_lora():
    cfg = mlv.MTLLoRAConfig(tasks=["a"], r=4, alpha=8, n_up=1, method="mtl_lora", lambda_type="full")
    base = nn.Linear(12, 10)
    mtl = LoRALinear(base, cfg)
    lora = LoRALinear(base, mlv.MTLLoRAConfig(tasks=["a"], r=4, alpha=8, method="lora"))
    for layer in (mtl, lora):
        layer.router, layer.layer_name = Router(["a"]), "x"
    with torch.no_grad():
        B = torch.randn(1, 10, 4)
        mtl.lora_B.copy_(B)
        lora.lora_B.copy_(B)
        lora.lora_A.copy_(mtl.lora_A)
    x = torch.randn(5, 12)
    # softmax over one up-projection is 1 and Λ = I: exactly LoRA's s·B·A.
    torch.testing.assert_close(mtl(x), lora(x), atol=0, rtol=0)
    torch.testing.assert_close(mtl(x), x @ (base.weight + 2.0 * B[0] @ mtl.lora_A).T + base.bias)


def test_packed_qkv_slices_only_adapt_chosen_parts():
    cfg = mlv.MTLLoRAConfig(tasks=TASKS, r=4, qkv_slices="qv")
    layer = LoRALinear(nn.Linear(8, 24), cfg, out_slices=(True, False, True))
    layer.router, layer.layer_name = Router(TASKS), "qkv"
    _randomize(layer)
    assert layer.lora_B.shape == (3, 16, 4)
    x = torch.randn(4, 8)
    with _scope(layer, "b"):
        y = layer(x)
    base = x @ layer.weight.T + layer.bias
    torch.testing.assert_close(y[:, 8:16], base[:, 8:16])  # k untouched
    assert (y[:, :8] - base[:, :8]).abs().max() > 1e-3
    torch.testing.assert_close(y, x @ (layer.weight + reference_delta(layer, 1)).T + layer.bias, atol=1e-5, rtol=1e-5)


def test_initial_parameters_follow_design():
    layer = LoRALinear(nn.Linear(16, 8), mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=3))
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (3, 8, 4)
    assert layer.lora_lambda.shape == (3, 4, 4) and layer.lora_w.shape == (3, 3)
    assert torch.equal(layer.lora_B, torch.zeros_like(layer.lora_B))
    assert torch.equal(layer.lora_lambda, torch.eye(4).repeat(3, 1, 1))
    assert layer.lora_w.abs().max() <= 1 / 3**0.5
    bound = 1 / 16**0.5  # kaiming_uniform(a=√5) on fan_in 16
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.std() > bound / 4
    diag = LoRALinear(nn.Linear(16, 8), mlv.MTLLoRAConfig(tasks=TASKS, r=4, lambda_type="diagonal"))
    assert torch.equal(diag.lora_lambda, torch.ones(3, 4))
    none = LoRALinear(nn.Linear(16, 8), mlv.MTLLoRAConfig(tasks=TASKS, r=4, lambda_type="none"))
    assert not hasattr(none, "lora_lambda")


def test_gradients_reach_shared_and_present_task_tensors_only():
    layer = make_linear("mtl_lora")
    ids = torch.tensor([0, 2, 0, 2])
    with _scope(layer, ids):
        layer(torch.randn(4, 3, 12)).pow(2).sum().backward()
    assert layer.lora_A.grad.abs().sum() > 0
    for i in range(3):
        assert layer.lora_B.grad[i].abs().sum() > 0, f"B_{i} got no gradient"
    for t in (0, 2):
        assert layer.lora_lambda.grad[t].abs().sum() > 0 and layer.lora_w.grad[t].abs().sum() > 0
    assert layer.lora_lambda.grad[1].abs().sum() == 0 and layer.lora_w.grad[1].abs().sum() == 0


def _mha_pair(batch_first: bool, cfg=None):
    base = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    new = LoRAMultiheadAttention(base, cfg or mlv.MTLLoRAConfig(tasks=TASKS, r=4))
    for bank, n in ((new.in_proj, "in"), (new.out_proj, "out")):
        bank.router, bank.layer_name = Router(TASKS), n
    new.out_proj.router = new.in_proj.router
    return base, new.eval()


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(
    "mask_kind", ["none", "float2d", "bool2d", "float3d", "bool3d", "kpm_bool", "kpm_float", "both"]
)
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")   # "both": on purpose
def test_mha_equals_torch_module_with_zero_adapters(batch_first, mask_kind, cross, need_weights):
    base, new = _mha_pair(batch_first)
    B, L, S, H = 3, 5, 7 if cross else 5, 4
    q = torch.randn(B, L, 16)
    kv = torch.randn(B, S, 16) if cross else q
    attn_mask = kpm = None
    if mask_kind in ("float2d", "both"):
        attn_mask = torch.randn(L, S)
    if mask_kind == "bool2d":
        attn_mask = torch.rand(L, S) > 0.7
        attn_mask[:, 0] = False
    if mask_kind == "float3d":
        attn_mask = torch.randn(B * H, L, S)
    if mask_kind == "bool3d":
        attn_mask = torch.rand(B * H, L, S) > 0.7
        attn_mask[..., 0] = False
    if mask_kind in ("kpm_bool", "both"):
        kpm = torch.zeros(B, S, dtype=torch.bool)
        kpm[0, -2:] = True
    if mask_kind == "kpm_float":
        kpm = torch.randn(B, S)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    with _scope(new.in_proj, "a"):
        out, w = new(q, kv, kv, key_padding_mask=kpm, need_weights=need_weights, attn_mask=attn_mask)
    ref, rw = base(q, kv, kv, key_padding_mask=kpm, need_weights=need_weights, attn_mask=attn_mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(w, rw, atol=1e-5, rtol=1e-5)


def test_mha_with_adapters_matches_dense_reference_mixed_batch():
    base, new = _mha_pair(True)
    _randomize(new.in_proj)
    _randomize(new.out_proj)
    x = torch.randn(4, 6, 16)
    ids = torch.tensor([0, 1, 2, 1])
    with _scope(new.in_proj, ids):
        out, _ = new(x, x, x, need_weights=False)
    for b in range(4):
        t = int(ids[b])
        ref = nn.MultiheadAttention(16, 4, batch_first=True).eval()
        with torch.no_grad():
            ref.in_proj_weight.copy_(base.in_proj_weight + reference_delta(new.in_proj, t))
            ref.in_proj_bias.copy_(base.in_proj_bias)
            ref.out_proj.weight.copy_(base.out_proj.weight + reference_delta(new.out_proj, t))
            ref.out_proj.bias.copy_(base.out_proj.bias)
        expect, _ = ref(x[b : b + 1], x[b : b + 1], x[b : b + 1], need_weights=False)
        torch.testing.assert_close(out[b : b + 1], expect, atol=1e-5, rtol=1e-5)


def test_mha_cross_attention_adapters_match_reference():
    base, new = _mha_pair(True, mlv.MTLLoRAConfig(tasks=TASKS, r=4, qkv_slices="qv"))
    _randomize(new.in_proj)
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    with _scope(new.in_proj, "c"):
        out, _ = new(q, kv, kv, need_weights=False)
    ref = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.load_state_dict(base.state_dict())
        ref.in_proj_weight.add_(reference_delta(new.in_proj, 2))
    torch.testing.assert_close(out, ref(q, kv, kv, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def test_mha_bad_mask_shape_is_named():
    _, new = _mha_pair(True)
    x = torch.randn(2, 5, 16)
    with _scope(new.in_proj, "a"), pytest.raises(ValueError, match="attn_mask: 3-D shape must be"):
        new(x, x, x, attn_mask=torch.zeros(3, 5, 5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_and_adapter_params_stay_fp32(dtype):
    layer = make_linear("mtl_lora")
    x = torch.randn(4, 12)
    with torch.autocast("cpu", dtype=dtype), _scope(layer, torch.tensor([0, 1, 1, 2])):
        y = layer(x)
    assert y.dtype == dtype
    assert layer.lora_A.dtype == torch.float32
    with _scope(layer, torch.tensor([0, 1, 1, 2])):
        ref = layer(x)
    torch.testing.assert_close(y.float(), ref, atol=0.1, rtol=0.05)


def _graph_nodes(t: torch.Tensor) -> list[str]:
    seen, todo, names = set(), [t.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    return names


@pytest.mark.parametrize("method", ["lora", "task_lora", "multi_lora"])
def test_one_matrix_for_every_row_is_autograds_own_addmm(method, monkeypatch):
    """``lora`` (any batch) and a one-task batch of the other task-matrix methods: the update is autograd's in-place
    ``addmm_`` -- no Python node in the graph (~30 µs of host time a layer, forward and backward) -- with the
    Python node's outputs and gradients, keeping the same tensors for backward."""
    import mtl_lora_vl.adapters.layers as layers_mod

    layer = make_linear(method)
    x = torch.randn(6, 12)
    params = [p for n, p in layer.named_parameters() if n.startswith("lora_")]
    mine = {p.untyped_storage().data_ptr() for p in layer.parameters()}

    def run():
        xs = x.clone().requires_grad_()
        saved: list[torch.Tensor] = []
        with _scope(layer, "b"), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                                           lambda t: t):
            y = layer(xs)
        kept = sum(t.numel() * t.element_size() for t in saved if t.untyped_storage().data_ptr() not in mine)
        return y, torch.autograd.grad(y.square().sum(), [xs, *params], allow_unused=True), kept, _graph_nodes(y)

    y, grads, kept, nodes = run()
    assert "AddmmBackward0" in nodes and not any(n.endswith("RowsUpdateBackward") for n in nodes)
    monkeypatch.setattr(layers_mod, "WHOLE_BATCH", ((0, slice(None)),))   # an equal plan: the Python node's path
    y_node, grads_node, kept_node, nodes_node = run()
    assert "_TaskRowsUpdateBackward" in nodes_node
    torch.testing.assert_close(y, y_node)
    for a, b in zip(grads, grads_node):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
    assert kept == kept_node


@pytest.mark.parametrize("method", ["mtl_lora", "lora", "task_lora"])
@pytest.mark.parametrize("tasks", ["b", "mixed"])
def test_backward_called_inside_autocast_equals_backward_outside(method, tasks):
    """`with autocast(): loss = model(x); loss.backward()` -- the backward inherits autocast, which the
    mtl_lora node's backward did not turn off: its softmax backward met a bf16 gradient and fp32 π and raised."""
    layer = make_linear(method)
    x, gy = torch.randn(4, 12), torch.randn(4, 10)
    route = torch.tensor([0, 1, 1, 2]) if tasks == "mixed" else tasks
    params = [p for n, p in layer.named_parameters() if n.startswith("lora_")]
    grads = []
    for inside in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16), _scope(layer, route):
            y = layer(x)
            if inside:
                grads.append(torch.autograd.grad((y.float() * gy).sum(), params))
        if not inside:
            grads.append(torch.autograd.grad((y.float() * gy).sum(), params))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("tasks", ["b", "mixed"])
def test_autocast_backward_gives_fp32_adapter_gradients(tasks):
    """The backward of an autocast step (the GPU's bf16 path, here on the CPU): the adapter gradients are fp32
    and close to the fp32 step's, for a one-task and a mixed batch."""
    layer = make_linear("mtl_lora")
    x, gy = torch.randn(4, 12), torch.randn(4, 10)
    route = torch.tensor([0, 1, 1, 2]) if tasks == "mixed" else tasks
    params = [p for n, p in layer.named_parameters() if n.startswith("lora_")]
    grads = {}
    for dtype in (torch.bfloat16, None):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None), _scope(layer, route):
            y = layer(x)
        grads[dtype] = torch.autograd.grad((y.float() * gy).sum(), params)
    for g_half, g_full in zip(grads[torch.bfloat16], grads[None]):
        assert g_half.dtype == torch.float32
        torch.testing.assert_close(g_half, g_full, atol=0.05 * g_full.abs().max().item(), rtol=0.05)


def test_half_base_without_autocast():
    layer = make_linear("mtl_lora")
    layer.weight.data = layer.weight.data.bfloat16()
    layer.bias.data = layer.bias.data.bfloat16()
    with _scope(layer, "a"):
        y = layer(torch.randn(3, 12, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("lambda_type", ["full", "diagonal", "none"])
@pytest.mark.parametrize("tasks", [1, "mixed", "present", "present_slice", "runs", "gathered_runs"])
def test_mtl_rows_update_gradients(lambda_type, tasks):
    """MTL-LoRA's row-update node (π and M_t formed inside, recomputed in backward; one task's rows or each
    sample its own task, in place) against finite differences and against the formula, and its no-grad
    path against its autograd path. The mixed batch leaves task 3 out: its w and Λ rows get zero gradient,
    whether every task's M_t is formed or only the present ones' (given as an index or a slice of task
    rows, the samples' tasks as positions among them). The samples' tasks may also come as a plan of runs of
    rows (a packed tower's images of different sizes), as slices or gathered per task."""
    from mtl_lora_vl.adapters.rows import update_mtl_rows

    g = torch.Generator().manual_seed(0)
    z = torch.randn(4 * 3, 2, dtype=torch.double, generator=g, requires_grad=True)  # 4 samples x 3 rows, r = 2
    w = torch.randn(4, 3, dtype=torch.double, generator=g, requires_grad=True)  # 4 tasks, n = 3
    lam = {"full": torch.randn(4, 2, 2, dtype=torch.double, generator=g),
           "diagonal": torch.randn(4, 2, dtype=torch.double, generator=g), "none": None}[lambda_type]
    lam = lam.requires_grad_() if lam is not None else None
    B = torch.randn(3, 5, 2, dtype=torch.double, generator=g, requires_grad=True)  # d_out = 5
    out = torch.randn(12, 5, dtype=torch.double, generator=g, requires_grad=True)
    ids = 1 if tasks == 1 else torch.tensor([2, 0, 2, 1])  # the samples' tasks; task 3 has none
    present, arg = None, ids
    if tasks == "present":  # the present tasks' rows as an index, in another order; samples as positions in it
        present, arg = torch.tensor([2, 0, 1]), torch.tensor([0, 1, 0, 2])
    elif tasks == "present_slice":
        present = slice(0, 3)
    elif tasks == "runs":
        arg = ((2, slice(0, 1)), (0, slice(1, 2)), (2, slice(2, 3)), (1, slice(3, 4)))
    elif tasks == "gathered_runs":
        present, arg = torch.tensor([2, 0, 1]), ((1, torch.tensor([1])), (2, torch.tensor([3])),
                                                 (0, torch.tensor([0, 2])))
    inputs = tuple(t for t in (out, z, w, lam, B) if t is not None)

    def f(out, z, w, *rest):
        lam_, B_ = rest if len(rest) == 2 else (None, rest[0])
        return update_mtl_rows(out * 1.0, z, w, lam_, B_, arg, 4, 0.7, 0.5, present)  # out * 1.0: fresh, in place

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)  # create_graph reaches w and Λ through π and M_t
    want = out.clone()
    for i, t in enumerate([ids] * 4 if tasks == 1 else ids.tolist()):
        Lt = torch.eye(2, dtype=torch.double) if lam is None else (torch.diag(lam[t]) if lam.dim() == 2 else lam[t])
        Mt = torch.einsum("i,idr->dr", torch.softmax(w[t] / 0.5, -1), B) @ Lt
        want[3 * i:3 * i + 3] += 0.7 * z[3 * i:3 * i + 3] @ Mt.T
    torch.testing.assert_close(f(*inputs), want)
    f(*inputs).sum().backward()
    unused = [0, 2, 3] if tasks == 1 else [3]
    assert w.grad[unused].abs().max() == 0 and w.grad[1 if tasks == 1 else 2].abs().min() > 0
    if lam is not None:
        assert lam.grad[unused].abs().max() == 0
    with torch.no_grad():
        plain = f(*inputs)
    torch.testing.assert_close(plain, f(*inputs).detach())


@pytest.mark.parametrize("lambda_type", ["full", "diagonal", "none"])
def test_one_task_batch_forms_only_its_own_matrix(monkeypatch, lambda_type):
    """A batch of one task forms that task's M_t alone (forward, backward and no-grad: the cost of the small
    matrices does not grow with the number of tasks); a mixed batch forms those of the tasks it has. Counted
    by the number of mixing rows π that reach M_t's formula."""
    from mtl_lora_vl.adapters import rows

    seen = []
    real = rows._mtl_parts
    monkeypatch.setattr(rows, "_mtl_parts", lambda pi, B, lam: seen.append(pi.shape[0]) or real(pi, B, lam))
    layer = make_linear("mtl_lora", lambda_type)
    x = torch.randn(4, 12)
    for tasks, want in (("b", 1), (torch.tensor([0, 2, 2, 1]), 3), (torch.tensor([2, 0, 0, 2]), 2)):
        seen.clear()
        with _scope(layer, tasks):
            layer(x).sum().backward()
            with torch.no_grad():
                layer(x)
        assert seen == [want] * 3, (tasks, seen)


@pytest.mark.parametrize("lambda_type", ["full", "diagonal", "none"])
@pytest.mark.parametrize("batch_dim", [0, 1])
def test_mixed_batch_gradients_equal_the_per_task_ones(lambda_type, batch_dim):
    """A mixed batch (its own code path) gives every tensor the gradient that each task's rows give alone
    through the one-task path (which the gradcheck above and the reference formula pin down)."""
    layer = make_linear("mtl_lora", lambda_type)
    layer.batch_dim = batch_dim
    ids = torch.tensor([1, 0, 2, 2, 0])
    x = torch.randn(5, 4, 12)
    w = torch.randn(5, 4, 10)
    params = [p for n, p in layer.named_parameters() if n.startswith("lora_")]

    def grads(xs, ws, tasks):
        xs = (xs if batch_dim == 0 else xs.transpose(0, 1)).clone().requires_grad_()
        with _scope(layer, tasks):
            y = layer(xs)
        y = y if batch_dim == 0 else y.transpose(0, 1)
        return torch.autograd.grad((y * ws).sum(), [xs, *params]), y

    (gx_mixed, *gp_mixed), y_mixed = grads(x, w, ids)
    gp_sum = [torch.zeros_like(p) for p in params]
    for t in range(3):
        (gx, *gp), y = grads(x[ids == t], w[ids == t], TASKS[t])
        torch.testing.assert_close(y_mixed[ids == t], y, atol=1e-5, rtol=1e-5)
        gx_rows = gx if batch_dim == 0 else gx.transpose(0, 1)
        gx_mixed_rows = gx_mixed if batch_dim == 0 else gx_mixed.transpose(0, 1)
        torch.testing.assert_close(gx_mixed_rows[ids == t], gx_rows, atol=1e-5, rtol=1e-5)
        gp_sum = [a + b for a, b in zip(gp_sum, gp)]
    for p, a, b in zip(params, gp_mixed, gp_sum):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, p=p: f"{p.shape}: {m}")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layout", ["one_task", "runs", "index"])
@pytest.mark.parametrize("batch_dim", [0, 1])
def test_every_method_s_gradients_equal_autograd_of_the_dense_reference(method, layout, batch_dim, monkeypatch):
    """Each method's own backward (rows.py) against autograd through x @ (W + ΔW_t).T with ΔW_t from the
    paper's formula, on every row layout: one task, grouped runs (a product per run) and interleaved rows
    (one gathered index per task). Only mtl_lora had a reference for its gradients; the others were compared
    with themselves."""
    import mtl_lora_vl.adapters.routing as routing_mod

    if layout == "index":   # interleaved rows take the gather / index_add path (on a CPU only past 64 runs)
        monkeypatch.setitem(routing_mod.MAX_RUNS_PER_TASK, "cpu", 1)
    layer = make_linear(method)
    ids = {"one_task": [1] * 6, "runs": [0, 0, 2, 2, 2, 1], "index": [1, 0, 2, 0, 1, 2]}[layout]
    layer.batch_dim = batch_dim
    x = torch.randn(6, 4, 12, dtype=torch.float64)
    w = torch.randn(6, 4, 10, dtype=torch.float64)
    layer.double()
    params = [p for n, p in layer.named_parameters() if n.startswith("lora_")]

    xs = (x if batch_dim == 0 else x.transpose(0, 1)).clone().requires_grad_()
    with _scope(layer, TASKS[1] if layout == "one_task" else torch.tensor(ids)):
        y = layer(xs)
    y = y if batch_dim == 0 else y.transpose(0, 1)
    got = torch.autograd.grad((y * w).sum(), [xs, *params], allow_unused=True)

    xr = x.clone().requires_grad_()
    ref = torch.stack([xr[b] @ (layer.weight + reference_delta(layer, t)).T + layer.bias for b, t in enumerate(ids)])
    want = torch.autograd.grad((ref * w).sum(), [xr, *params], allow_unused=True)
    torch.testing.assert_close(y, ref)
    gx = got[0] if batch_dim == 0 else got[0].transpose(0, 1)
    torch.testing.assert_close(gx, want[0])
    for p, a, b in zip(params, got[1:], want[1:]):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        torch.testing.assert_close(a, b, msg=lambda m, p=p: f"{tuple(p.shape)}: {m}")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layout", ["one_task", "runs", "index"])
def test_second_derivatives_equal_the_dense_reference_s(method, layout, monkeypatch):
    """A gradient penalty (create_graph=True, then a gradient of the input gradient's norm): mtl_lora's node
    formed π and Λ_t without their graph, so w and Λ got wrong second-order gradients, silently."""
    import mtl_lora_vl.adapters.routing as routing_mod

    if layout == "index":
        monkeypatch.setitem(routing_mod.MAX_RUNS_PER_TASK, "cpu", 1)
    layer = make_linear(method).double()
    ids = {"one_task": [1] * 6, "runs": [0, 0, 2, 2, 2, 1], "index": [1, 0, 2, 0, 1, 2]}[layout]
    x = torch.randn(6, 4, 12, dtype=torch.float64)
    params = [p for n, p in layer.named_parameters() if n.startswith("lora_")]

    def penalty_grads(forward):
        xs = x.clone().requires_grad_()
        gx, = torch.autograd.grad(forward(xs).square().sum(), xs, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), params, allow_unused=True)

    def ours(xs):
        with _scope(layer, TASKS[1] if layout == "one_task" else torch.tensor(ids)):
            return layer(xs)

    def dense(xs):
        return torch.stack([xs[b] @ (layer.weight + reference_delta(layer, t)).T + layer.bias
                            for b, t in enumerate(ids)])

    for p, a, b in zip(params, penalty_grads(ours), penalty_grads(dense)):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        torch.testing.assert_close(a, b, msg=lambda m, p=p: f"{tuple(p.shape)}: {m}")


def test_attention_weights_are_returned_after_dropout_as_torch_returns_them():
    cfg = mlv.MTLLoRAConfig(tasks=TASKS, r=2, alpha=4, n_up=2)
    mha = LoRAMultiheadAttention(nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True), cfg)
    mha.router, mha.layer_name = Router(TASKS), "test.mha"
    mha.train()
    x = torch.randn(2, 5, 8)
    torch.manual_seed(0)
    with mlv.route(mha.router, "a"):
        _, w = mha(x, x, x, need_weights=True, average_attn_weights=False)
    assert not torch.allclose(w.sum(-1), torch.ones(2, 2, 5))   # rows of dropped weights (they summed to 1)


def test_adapter_dropout_acts_in_training_only():
    """cfg.dropout drops the adapter's input in train mode and nothing in eval. The only eval check had B = 0,
    where any dropout gives the same zero update, so dropout always on (or never on) went unnoticed."""
    cfg = mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, alpha=8, n_up=2, dropout=0.5)
    layer = LoRALinear(nn.Linear(12, 10), cfg)
    layer.router, layer.layer_name = Router(["a", "b"]), "x"
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.5)
    x = torch.randn(6, 12)
    base = x @ layer.weight.T + layer.bias
    with torch.no_grad():
        layer.router.current = layer.router.make_route("a")
        try:
            dense = base + x @ layer.delta_weight(0).T
            layer.eval()
            torch.testing.assert_close(layer(x), dense, atol=1e-5, rtol=1e-5)   # eval: no dropout
            layer.train()
            torch.manual_seed(1)
            y1 = layer(x)
            y2 = layer(x)
        finally:
            layer.router.current = None
    assert not torch.allclose(y1, dense, atol=1e-4) and not torch.allclose(y1, y2, atol=1e-4)   # train: dropped
