"""MTLLoRAModel: the PEFT-shaped API (from_pretrained / save_pretrained / merge_and_unload / route /
disable_adapters / parameter counts / pass-through) over the functional one."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from conftest import llava_inputs, tiny_hf_clip, tiny_llava, tiny_open_clip, tiny_timm_vit
from test_adapter_io import TASKS, _fresh, _hf_run, _oc_run, _outputs, _trained
from torch import nn

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.attention import LoRAMultiheadAttention
from mtl_lora_vl.adapters.layers import LoRALinear
from mtl_lora_vl.io import AdapterFileError


def _timm_run(m, x):
    return m(x)


RUNS = {
    "open_clip": (tiny_open_clip, lambda: (torch.randn(2, 3, 32, 32), torch.randint(1, 60, (2, 12))), _oc_run),
    "hf_clip": (tiny_hf_clip, lambda: (torch.randn(2, 3, 32, 32), torch.randint(0, 60, (2, 10))), _hf_run),
    "timm": (tiny_timm_vit, lambda: torch.randn(2, 3, 32, 32), _timm_run),
}


def test_from_pretrained_is_frozen_for_inference_and_matches_the_functional_api(tmp_path):
    model = _trained(tiny_open_clip)
    head = nn.Linear(32, 5)
    # PEFT's safe_serialization=True is taken (the files are safetensors); False, which asks for .bin, is refused
    path = mlv.MTLLoRAModel(model, heads={"vqa": head}).save_pretrained(tmp_path / "a", safe_serialization=True)
    assert (path / "mtl_lora_config.json").is_file() and (path / "heads.safetensors").is_file()
    with pytest.raises(ValueError, match="safetensors only"):
        mlv.MTLLoRAModel(model, heads={"vqa": head}).save_pretrained(tmp_path / "b", safe_serialization=False)
    assert not (tmp_path / "b").exists()

    new_head = nn.Linear(32, 5)
    wrapped = mlv.MTLLoRAModel.from_pretrained(_fresh(tiny_open_clip).train(), path, heads={"vqa": new_head})
    assert not wrapped.training and not wrapped.get_base_model().training and not new_head.training
    trainable, total = wrapped.get_nb_trainable_parameters()
    assert trainable == 0 and total == sum(p.numel() for p in wrapped.parameters())
    assert torch.equal(new_head.weight, head.weight) and wrapped.heads["vqa"] is new_head
    assert wrapped.tasks == TASKS and wrapped.mtl_lora_config.r == 4

    inp = RUNS["open_clip"][1]()
    ref = _outputs(model, _oc_run, inp, TASKS)
    with torch.no_grad():
        for t in TASKS:
            with wrapped.route(t):
                assert torch.equal(_oc_run(wrapped, inp), ref[t])  # encode_image / encode_text pass through
        with wrapped.disable_adapters(), mlv.disabled(model):
            assert torch.equal(_oc_run(wrapped, inp), _oc_run(model, inp))
        with wrapped.disable_adapter():  # PEFT's spelling; the base model (attention through SDPA here)
            torch.testing.assert_close(_oc_run(wrapped, inp), _oc_run(_fresh(tiny_open_clip), inp))


def test_trainable_loading_and_peft_style_counts(tmp_path, capsys):
    model = _trained(tiny_hf_clip)
    path = mlv.save_adapter(model, tmp_path / "a")
    wrapped = mlv.MTLLoRAModel.from_pretrained(_fresh(tiny_hf_clip).train(), path, is_trainable=True)
    assert wrapped.training
    trainable, total = wrapped.get_nb_trainable_parameters()
    assert trainable == mlv.trainable_parameters(wrapped.get_base_model()) > 0
    assert total == sum(p.numel() for p in model.parameters())
    wrapped.print_trainable_parameters()
    assert capsys.readouterr().out.strip() == (f"trainable params: {trainable:,d} || all params: {total:,d} || "
                                               f"trainable%: {100 * trainable / total:.4f}")
    assert wrapped.config is wrapped.get_base_model().config  # the Hugging Face config passes through
    n = wrapped.add_task("new")
    assert wrapped.tasks == [*TASKS, "new"] and n.trainable > 0
    assert wrapped.get_nb_trainable_parameters()[0] == n.trainable   # the old tasks' rows do not train (was 3x)


def test_wrapping_a_base_model_attaches_and_forward_routes():
    base = _fresh(tiny_hf_clip)
    wrapped = mlv.MTLLoRAModel(base, mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2))
    assert getattr(base, "_mtl_lora", None) is not None and wrapped.get_base_model() is base
    with torch.no_grad():
        for p in base.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    wrapped.eval()
    inp = dict(pixel_values=torch.randn(3, 3, 32, 32), input_ids=torch.randint(0, 60, (3, 10)))
    ids = ["cls", "vqa", "cls"]
    with torch.no_grad():
        with mlv.route(base, ids):
            ref = base(**inp).image_embeds
        assert torch.equal(wrapped(**inp, tasks=ids).image_embeds, ref)
        assert torch.equal(wrapped(**inp, adapter_names=ids).image_embeds, ref)  # PEFT's keyword
        with pytest.raises(TypeError, match="not both"):
            wrapped(**inp, tasks=ids, adapter_names=ids)
        with pytest.raises(mlv.RoutingError, match="no task was given"):
            wrapped(**inp)
    top = torch._C._autograd._top_saved_tensors_default_hooks
    for recompute in (True, False):   # the wrapper's route scope passes recompute on: hooks, or none
        with wrapped.route(ids, recompute=recompute):
            assert (top(False) is not None) is recompute


def test_generate_routes_each_row():
    model = _trained(tiny_llava)
    wrapped = mlv.MTLLoRAModel(model)
    inp = llava_inputs(3)
    ids = torch.tensor([2, 0, 1])
    with torch.no_grad():
        with mlv.route(model, ids):
            ref = model.generate(**inp, max_new_tokens=4, do_sample=False)
        assert torch.equal(wrapped.generate(**inp, tasks=ids, max_new_tokens=4, do_sample=False), ref)


def test_constructor_errors(tmp_path):
    # the fix in this API is a config (it said "call mtl_lora_vl.attach(model, config) first") (helper 139)
    with pytest.raises(mlv.RoutingError, match=r"MTLLoRAModel: VisionTransformer has no MTL-LoRA adapters; pass a "
                                               r"config to attach them, MTLLoRAModel\(model, MTLLoRAConfig"):
        mlv.MTLLoRAModel(tiny_timm_vit())
    model = _trained(tiny_timm_vit)
    with pytest.raises(ValueError, match=r"heads for \['nope'\], which are not tasks"):
        mlv.MTLLoRAModel(model, heads={"nope": nn.Identity()})
    with pytest.raises(TypeError, match="already wrapped"):
        mlv.MTLLoRAModel(mlv.MTLLoRAModel(model))
    path = mlv.export_lora(_trained(tiny_hf_clip), "vqa", tmp_path / "peft")
    with pytest.raises(AdapterFileError, match="PEFT adapter directory"):
        mlv.MTLLoRAModel.from_pretrained(_fresh(tiny_hf_clip), path)


@pytest.mark.parametrize("family", list(RUNS))
def test_merge_and_unload_gives_the_plain_base_class_with_the_task_merged(family):
    build, inputs, run = RUNS[family]
    cfg = mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2, qkv_slices="qv" if family == "timm" else "qkv")
    model = _trained(build, cfg)
    inp = inputs()
    ref = _outputs(model, run, inp, ["retrieval"])["retrieval"]
    fresh = _fresh(build)
    plain = mlv.MTLLoRAModel(model).merge_and_unload("retrieval")
    assert plain is model and type(plain) is type(fresh) and getattr(plain, "_mtl_lora", None) is None
    assert [(n, type(m)) for n, m in plain.named_modules()] == [(n, type(m)) for n, m in fresh.named_modules()]
    assert not any(isinstance(m, (LoRALinear, LoRAMultiheadAttention)) for m in plain.modules())
    assert list(plain.state_dict()) == list(fresh.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(run(plain, inp), ref, atol=1e-5, rtol=1e-5)
        assert (run(plain, inp) - run(fresh, inp)).abs().max() > 1e-3
    fresh.load_state_dict(plain.state_dict())  # strict: a checkpoint of the plain class


def test_unload_restores_the_exact_base_model():
    model = _trained(tiny_open_clip)
    wrapped = mlv.MTLLoRAModel(model)
    wrapped.merge_adapter("vqa")
    wrapped.unmerge_adapter()
    wrapped.merge_adapter("cls")  # unload undoes a merge too
    plain = wrapped.unload()
    fresh = _fresh(tiny_open_clip)
    for (n, a), (m, b) in zip(plain.state_dict().items(), fresh.state_dict().items()):
        assert n == m and torch.equal(a, b), n
    with pytest.raises(mlv.RoutingError, match="no MTL-LoRA adapters"):
        mlv.route(plain, "vqa").__enter__()
    mlv.attach(plain, mlv.MTLLoRAConfig(tasks=["a"], r=2))  # a plain model again: it can be adapted anew


class _TaggedLinear(nn.Linear):
    """A subclass of nn.Linear with nn.Linear's forward (attach takes those), as some models' layers are."""

    tag = "mine"


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = _TaggedLinear(8, 8)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


def test_unload_gives_back_the_layers_attach_replaced():
    """unload rebuilt each adapted layer as a plain nn.Linear / nn.MultiheadAttention: a subclass lost its class
    (and what it adds) and a hook registered on the layer was gone. Now the modules attach replaced
    come back, holding the adapted layers' weights, and the outputs equal the base model's."""
    torch.manual_seed(0)
    block = _Block().eval()
    fc, attn = block.fc, block.attn
    seen = []
    fc.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        want = block(x)
    with pytest.warns(UserWarning, match="hooks registered on them"):   # (adapted, the hook does not run)
        wrapped = mlv.MTLLoRAModel(block, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2,
                                                            targets={"image": [r"^fc$", r"^attn$"]}))
    assert isinstance(block.fc, LoRALinear) and isinstance(block.attn, LoRAMultiheadAttention)
    plain = wrapped.unload()
    assert plain.fc is fc and plain.attn is attn and type(plain.fc) is _TaggedLinear
    seen.clear()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), want, rtol=0, atol=0)
    assert seen == [torch.Size([2, 5, 8])]


def test_the_replaced_modules_kept_for_unload_hold_no_replaced_weights():
    """The modules attach replaced (kept for unload) held the weight tensors they had: after a load with
    assign=True, or a .to() that makes new parameters, the adapted layers' old weights stayed alive as long as
    the adapters (a second copy of every adapted weight). They follow the adapted layers now."""
    torch.manual_seed(0)
    block = _Block().eval()
    mlv.attach(block, mlv.MTLLoRAConfig(tasks=["a"], r=2, targets={"image": [r"^fc$", r"^attn$"]}))
    old = [weakref.ref(p) for p in (block.fc.weight, block.attn.in_proj_weight, block.attn.out_proj.weight)]
    block.load_state_dict({k: v.clone() for k, v in block.state_dict().items()}, assign=True)
    gc.collect()
    assert [r() for r in old] == [None, None, None]   # nothing keeps the replaced weights
    for adapted in (block.fc, block.attn, block.attn.out_proj):
        mine = dict(adapted.named_parameters(recurse=False))
        assert all(p is mine[n] for n, p in adapted.original.named_parameters(recurse=False))
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        block.double()   # new parameters, not the old ones converted in place
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)
    assert block.fc.original.weight is block.fc.weight and block.fc.original.weight.dtype == torch.float64
    assert block.attn.original.in_proj_weight is block.attn.in_proj_weight


def test_the_functional_api_given_the_wrapper_works_on_the_model_inside(tmp_path):
    """The wrapper forwarded attach's marker to its base model, so save_adapter(wrapper) recorded the wrapper's
    class and `base_model.`-prefixed keys (refused when loaded), merged_state_dict(wrapper) gave keys no base
    model loads, and parameter_report counted the heads as frozen base weights."""
    model = _trained(tiny_open_clip)
    wrapped = mlv.MTLLoRAModel(model, heads={"vqa": nn.Linear(32, 5)})
    assert mlv.merged_state_dict(wrapped, "vqa").keys() == mlv.merged_state_dict(model, "vqa").keys()
    assert mlv.parameter_report(wrapped) == mlv.parameter_report(model)
    path = mlv.save_adapter(wrapped, tmp_path / "a")
    fresh = mlv.load_adapter(_fresh(tiny_open_clip), path)
    inp = RUNS["open_clip"][1]()
    assert all(torch.equal(a, b) for a, b in zip(_outputs(fresh, _oc_run, inp, TASKS).values(),
                                                 _outputs(model, _oc_run, inp, TASKS).values()))


def test_peft_adapter_methods_say_what_to_use_here():
    """Through attribute pass-through they reached transformers' PEFT mixin ("use PEFT >= 0.22", "adapter
    model file not found"); disable_adapters() called as a statement (transformers' in-place method) did
    nothing, silently."""
    wrapped = mlv.MTLLoRAModel(_trained(tiny_hf_clip))
    for call, says in ((lambda: wrapped.set_adapter("vqa"), "with model.route"),
                       (lambda: wrapped.load_adapter("x"), "from_pretrained"),
                       (lambda: wrapped.add_adapter("x", None), "add_task"),
                       (lambda: wrapped.enable_adapters(), "disable_adapters"),
                       (lambda: wrapped.active_adapters, "route scope"),
                       # the base model's push_to_hub (reached through pass-through) would upload the whole base
                       (lambda: wrapped.push_to_hub("me/x"), "upload_folder")):
        with pytest.raises((RuntimeError, AttributeError), match=f"MTLLoRAModel has no PEFT-style .*{says}"):
            call()
    assert not hasattr(wrapped, "active_adapters") and getattr(wrapped, "active_adapter", None) is None
    with pytest.warns(UserWarning, match=r"disable_adapters\(\) returns a context manager and did nothing"):
        wrapped.disable_adapters()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with wrapped.disable_adapters():   # entered: no warning
            pass


def test_common_misuse_gets_a_message_with_the_fix(tmp_path):
    """A dict or a PEFT LoraConfig as the config, a Backbone instead of its model, a tensor as a head: Python's
    AttributeErrors ('dict' object has no attribute 'targets'), or "not a supported model class" for a Backbone."""
    from peft import LoraConfig

    from mtl_lora_vl.backbones import load_backbone

    cfg = mlv.MTLLoRAConfig(tasks=TASKS, r=2)
    for bad, says in (({"tasks": TASKS}, r"the config is a dict; pass MTLLoRAConfig.from_dict"),
                      (LoraConfig(r=4), r"a PEFT LoraConfig is not an MTLLoRAConfig; .*alpha=cfg.lora_alpha")):
        with pytest.raises(TypeError, match=f"attach: {says}"):
            mlv.attach(_fresh(tiny_open_clip), bad)
        with pytest.raises(TypeError, match=f"MTLLoRAModel: {says}"):
            mlv.MTLLoRAModel(_fresh(tiny_open_clip), bad)
    bb = load_backbone("builtin")
    for call in (lambda: mlv.attach(bb, cfg), lambda: mlv.route(bb, "vqa").__enter__(),
                 lambda: mlv.save_adapter(bb, tmp_path / "x")):
        with pytest.raises(TypeError, match=r"got a OpenClipBackbone, which holds the model; pass its .model"):
            call()
    model = _trained(tiny_open_clip)
    for call in (lambda: mlv.MTLLoRAModel(model, heads={"vqa": torch.zeros(2)}),
                 lambda: mlv.save_adapter(model, tmp_path / "y", heads={"vqa": torch.zeros(2)})):
        with pytest.raises(TypeError, match=r"heads must be nn.Modules .*not for \['vqa'\]"):
            call()
    assert not (tmp_path / "y").exists()


def test_llava_round_trip_keeps_parameterless_heads(tmp_path):
    """A generative task's head has no tensors; MTLLoRAModel.save_pretrained warned it was not saved and wrote
    none, so eval --adapter refused the copy ("no saved task spec or head") (helper 121)."""
    import warnings

    from mtl_lora_vl.backbones import load_backbone
    from mtl_lora_vl.tasks import build_kind, load_spec

    bb = load_backbone("builtin-llava")
    spec = load_spec("captioning")
    kind = build_kind(spec, spec.load_split("train", None), bb)
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["captioning"], r=2))
    mlv.save_adapter(bb.model, tmp_path / "a", heads={"captioning": kind.build_head(bb)},
                     task_specs={"captioning": spec}, kinds={"captioning": kind}, base={"backbone": "builtin-llava"})
    assert "captioning" in mlv.load_pretrained(tmp_path / "a").heads          # as the run saved it
    m = mlv.MTLLoRAModel.from_pretrained(load_backbone("builtin-llava").model, tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no "holds heads ... which are not saved": there is nothing to load
        m.save_pretrained(tmp_path / "b")
    # eval --adapter b needs the task's (parameter-less) head: it refused with "no saved task spec or head"
    assert "captioning" in mlv.load_pretrained(tmp_path / "b").heads


def test_trainable_count_after_add_task_leaves_idle_rows_out(tmp_path):
    """After add_task on an adapter with idle projections (B_i never trained: zero and frozen, so the new task's
    rows there get zero gradients), the trainable count agrees with added.trainable (1,072 against 536 before)."""
    from vl_tiny import tiny_backbone

    torch.manual_seed(0)
    bb = tiny_backbone(tmp_path, coca=True)
    for p in bb.model.parameters():
        p.requires_grad_(False)
    wrapped = mlv.MTLLoRAModel(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "retrieval"], r=8, n_up=3))
    with torch.no_grad():
        for path, bank in bb.model._mtl_lora.layers.items():
            if not path.startswith("text_decoder"):
                bank.lora_B.normal_(std=0.1)
    added = wrapped.add_task("captioning")
    assert added.idle
    assert wrapped.get_nb_trainable_parameters()[0] == added.trainable
