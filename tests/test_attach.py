"""attach / route / merge on tiny models of every supported family."""

from __future__ import annotations

import copy
import importlib
import warnings

import pytest
import torch
from conftest import llava_inputs, tiny_hf_clip, tiny_llava, tiny_open_clip, tiny_timm_vit
from torch import nn

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.attach import attach_info, select_targets
from mtl_lora_vl.adapters.generation import expanded_rows
from mtl_lora_vl.adapters.layers import ADAPTER_PARAM_NAMES

TASKS = ["vqa", "retrieval", "cls"]


def _randomize_adapters(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES:
                p.add_(torch.randn_like(p) * 0.2)


# Each family: build, inputs, and a function giving (image-tower output, text-tower output).
def _oc_io(kind):
    def run(m, inp):
        img, txt = inp
        return m.encode_image(img), m.encode_text(txt)

    return (lambda: tiny_open_clip(kind)), (lambda b=3: (torch.randn(b, 3, 32, 32), torch.randint(1, 60, (b, 12)))), run


def _coca_io():
    build, inputs, _ = _oc_io("coca")

    def run(m, inp):
        img, txt = inp
        out = m(img, txt)
        return out["image_features"], out["logits"]  # logits come from the text decoder (cross-attention)

    return build, inputs, run


def _hf_io():
    def run(m, inp):
        img, txt = inp
        return m.get_image_features(pixel_values=img), m.get_text_features(input_ids=txt)

    return tiny_hf_clip, (lambda b=3: (torch.randn(b, 3, 32, 32), torch.randint(0, 60, (b, 10)))), run


def _feat(x):
    return x if isinstance(x, torch.Tensor) else x.pooler_output


def _llava_io():
    def run(m, inp):
        tower = m.model.vision_tower if hasattr(m, "model") else m.vision_tower
        return tower(pixel_values=inp["pixel_values"]).last_hidden_state, m(**inp).logits

    return tiny_llava, (lambda b=3: llava_inputs(b)), run


def _timm_io():
    def run(m, inp):
        return m(inp), None

    return tiny_timm_vit, (lambda b=3: torch.randn(b, 3, 32, 32)), run


FAMILIES = {
    "open_clip": _oc_io("clip"),
    "open_clip_custom": _oc_io("custom"),
    "coca": _coca_io(),
    "hf_clip": _hf_io(),
    "llava": _llava_io(),
    "timm": _timm_io(),
}


def _outputs(run, m, inp):
    with torch.no_grad():
        return [None if o is None else _feat(o) for o in run(m, inp)]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_identical_outputs_at_init_both_towers(family):
    build, inputs, run = FAMILIES[family]
    model = build().eval()
    inp = inputs()
    ref = _outputs(run, model, inp)
    mlv.attach(model, mlv.MTLLoRAConfig(tasks=TASKS))
    towers = set(model._mtl_lora.towers.values())
    assert towers == ({"image"} if family == "timm" else {"image", "text"})
    with mlv.route(model, torch.tensor([0, 1, 2])):
        got = _outputs(run, model, inp)
    for r, g in zip(ref, got):
        if r is not None:
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    # ... and the adapters really act on both towers once they are non-zero.
    _randomize_adapters(model)
    with mlv.route(model, torch.tensor([0, 1, 2])):
        moved = _outputs(run, model, inp)
    for r, g in zip(ref, moved):
        if r is not None:
            assert (g - r).abs().max() > 1e-4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mixed_batch_equals_per_task_runs(family):
    build, inputs, run = FAMILIES[family]
    model = mlv.attach(build().eval(), mlv.MTLLoRAConfig(tasks=TASKS))
    _randomize_adapters(model)
    inp = inputs(3)
    ids = torch.tensor([2, 0, 1])
    with mlv.route(model, ids):
        mixed = _outputs(run, model, inp)
    for t in range(3):
        with mlv.route(model, TASKS[t]):
            alone = _outputs(run, model, inp)
        for m, a in zip(mixed, alone):
            if m is not None:
                torch.testing.assert_close(m[ids == t], a[ids == t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_merge_equals_routed_and_unmerge_restores_exactly(family):
    build, inputs, run = FAMILIES[family]
    model = mlv.attach(build().eval(), mlv.MTLLoRAConfig(tasks=TASKS))
    _randomize_adapters(model)
    inp = inputs()
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    with mlv.route(model, "retrieval"):
        routed = _outputs(run, model, inp)
    for _ in range(3):  # repeated merge/unmerge must not drift
        mlv.merge(model, "retrieval")
        merged = _outputs(run, model, inp)
        for r, m in zip(routed, merged):
            if r is not None:
                torch.testing.assert_close(m, r, atol=1e-5, rtol=1e-5)
        mlv.unmerge(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, base_sd[k]), k
    # merged_state_dict loads strictly into a fresh base model and reproduces the routed outputs.
    fresh = build().eval()
    fresh.load_state_dict(mlv.merged_state_dict(model, "retrieval"), strict=True)
    for r, f in zip(routed, _outputs(run, fresh, inp)):
        if r is not None:
            torch.testing.assert_close(f, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_base_state_dict_keys_are_preserved_and_checkpoints_load(family):
    build = FAMILIES[family][0]
    model = build()
    before = model.state_dict()
    mlv.attach(model, mlv.MTLLoRAConfig(tasks=TASKS))
    after = model.state_dict()
    base_keys = {k for k in after if k.rpartition(".")[2] not in ADAPTER_PARAM_NAMES}
    assert base_keys == set(before)
    missing, unexpected = model.load_state_dict(before, strict=False)
    assert unexpected == [] and all(k.rpartition(".")[2] in ADAPTER_PARAM_NAMES for k in missing)


def test_freezes_base_and_counts_adapter_parameters():
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.rpartition(".")[2] in ADAPTER_PARAM_NAMES for n in trainable)
    expected = 0
    for bank in model._mtl_lora.layers.values():
        d_in, d_out = bank.d_in, bank.lora_B.shape[1]
        expected += 4 * d_in + 2 * d_out * 4 + 3 * 16 + 3 * 2
    assert mlv.trainable_parameters(model) == expected
    rep = mlv.parameter_report(model)
    assert rep["image"] + rep["text"] == expected and rep["image"] > 0 and rep["text"] > 0


def test_open_clip_attention_and_mlp_names_are_adapted_in_both_towers():
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS))
    names = set(model._mtl_lora.layers)
    for prefix in ("visual.transformer.resblocks.0.", "transformer.resblocks.1."):
        for leaf in ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"):
            assert prefix + leaf in names
    # open_clip reads mlp.c_fc.weight.dtype to pick its cast dtype
    assert model.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.float32
    assert model.transformer.resblocks[0].mlp.c_fc.in_features == 32


def test_coca_decoder_cross_attention_is_adapted():
    model = mlv.attach(tiny_open_clip("coca"), mlv.MTLLoRAConfig(tasks=TASKS))
    names = set(model._mtl_lora.layers)
    assert "text_decoder.cross_attn.0.attn.in_proj" in names
    assert "text_decoder.resblocks.1.mlp.c_fc" in names


def test_timm_packed_qkv_respects_qkv_slices():
    model = mlv.attach(tiny_timm_vit(), mlv.MTLLoRAConfig(tasks=TASKS, qkv_slices="qv"))
    qkv = model.blocks[0].attn.qkv
    assert qkv.out_slices == (True, False, True) and qkv.lora_B.shape[1] == 64


def test_timm_swiglu_mlp_is_adapted_like_the_plain_one():
    import timm

    # AIMv2 (and other SwiGLU ViTs) split fc1 into a gate and a value layer: both are the MLP's first layer
    model = timm.create_model("aimv2_large_patch14_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=1, num_heads=2)
    mlv.attach(model, mlv.MTLLoRAConfig(tasks=TASKS))
    linears = {n for n, m in model.named_modules() if n.startswith("blocks.") and hasattr(m, "lora_A")}
    assert linears == {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1_g", "blocks.0.mlp.fc1_x",
                       "blocks.0.mlp.fc2"}
    assert set(model._mtl_lora.layers) == linears


def test_custom_targets_matching_both_towers_are_warned_about():
    """The regexes are searched in full module names: {"image": ["attn"], "text": ["attn"]} took the text tower's
    attention as "image" layers (counts, heatmap and the recorded towers said image 16, text 0), silently."""
    with pytest.warns(UserWarning, match=r"4 module\(s\) match the target regexes of more than one tower"):
        mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS, targets={"image": ["attn"], "text": ["attn"]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS, targets={
            "image": [r"^visual\..*attn"], "text": [r"^transformer\..*attn"]}))
    assert set(model._mtl_lora.towers.values()) == {"image", "text"}


def test_the_both_towers_warning_is_given_once_when_loading(tmp_path):
    """load_adapter checks the base (which plans the targets) and then attaches: the warning came twice."""
    cfg = mlv.MTLLoRAConfig(tasks=TASKS, targets={"image": ["attn"], "text": ["attn"]})
    with pytest.warns(UserWarning, match="more than one tower"):
        model = mlv.attach(tiny_open_clip(), cfg)
    mlv.save_adapter(model, tmp_path / "a")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mlv.load_adapter(tiny_open_clip(), tmp_path / "a", check_base_weights=False)
    assert sum("more than one tower" in str(w.message) for w in rec) == 1
    # attributed to the caller's line, not to the package's own (it named io/identity.py or mtl_lora_model.py)
    assert [w.filename for w in rec if "more than one tower" in str(w.message)] == [__file__]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mlv.MTLLoRAModel(tiny_open_clip(), cfg)
    assert [w.filename for w in rec if "more than one tower" in str(w.message)] == [__file__]


def test_custom_targets_and_sequence_first_open_clip():
    import open_clip

    model = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8,
                                                          head_width=16),
                           text_cfg=dict(context_length=12, vocab_size=64, width=32, heads=2, layers=1))
    model.transformer.batch_first = False  # sequence-first text stack (older open_clip layout)
    model.transformer.resblocks[0].attn.batch_first = False
    txt = torch.randint(1, 60, (4, 12))
    ref = model.encode_text(txt).detach()
    cfg = mlv.MTLLoRAConfig(tasks=TASKS, targets={"text": [r"^transformer\.resblocks\.\d+\.(attn|mlp\.c_fc)$"]})
    mlv.attach(model, cfg)
    assert set(model._mtl_lora.towers.values()) == {"text"}
    assert model._mtl_lora.layers["transformer.resblocks.0.mlp.c_fc"].batch_dim == 1
    with mlv.route(model, torch.tensor([0, 1, 2, 0])):
        torch.testing.assert_close(model.encode_text(txt), ref, atol=1e-5, rtol=1e-5)
        _randomize_adapters(model)
        mixed = model.encode_text(txt)
    with mlv.route(model, "retrieval"):
        alone = model.encode_text(txt)
    torch.testing.assert_close(mixed[1], alone[1], atol=1e-5, rtol=1e-5)
    assert (mixed[0] - alone[0]).abs().max() > 1e-4


def test_gradients_reach_every_tower_and_task_present():
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS))
    _randomize_adapters(model)
    img, txt = torch.randn(4, 3, 32, 32), torch.randint(1, 60, (4, 12))
    with mlv.route(model, torch.tensor([0, 2, 0, 2])):
        loss = (model.encode_image(img) @ model.encode_text(txt).T).sum()
    loss.backward()
    for name, bank in model._mtl_lora.layers.items():
        assert bank.lora_A.grad.abs().sum() > 0, name
        assert all(bank.lora_B.grad[i].abs().sum() > 0 for i in range(3)), name
        assert bank.lora_lambda.grad[1].abs().sum() == 0 and bank.lora_w.grad[0].abs().sum() > 0


@pytest.mark.parametrize("method", ["lora", "task_lora", "multi_lora", "moe_lora"])
def test_baselines_attach_and_merge(method):
    model = mlv.attach(tiny_open_clip().eval(), mlv.MTLLoRAConfig(tasks=TASKS, method=method))
    _randomize_adapters(model)
    img = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), mlv.route(model, torch.tensor([0, 1, 2])):
        mixed = model.encode_image(img)
    with torch.no_grad(), mlv.route(model, "cls"):
        alone = model.encode_image(img)
    torch.testing.assert_close(mixed[2], alone[2], atol=1e-5, rtol=1e-5)
    mlv.merge(model, "cls")
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(img), alone, atol=1e-5, rtol=1e-5)


def test_disabled_gives_base_model():
    model = tiny_open_clip().eval()
    img = torch.randn(2, 3, 32, 32)
    ref = model.encode_image(img).detach()
    mlv.attach(model, mlv.MTLLoRAConfig(tasks=TASKS))
    _randomize_adapters(model)
    with torch.no_grad(), mlv.disabled(model):
        torch.testing.assert_close(model.encode_image(img), ref)


# Errors -------------------------------------------------------------------------------------
def test_second_attach_is_refused():
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS))
    with pytest.raises(mlv.AttachError, match="already has MTL-LoRA adapters"):
        mlv.attach(model, mlv.MTLLoRAConfig(tasks=TASKS))


def test_unknown_model_class_says_what_is_supported_and_how_to_target():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(mlv.AttachError, match=r"not a supported model class"
                                              r".*open_clip.*hf_clip.*llava.*timm.*targets="):
        mlv.attach(model, mlv.MTLLoRAConfig(tasks=TASKS))
    mlv.attach(model, mlv.MTLLoRAConfig(tasks=TASKS, targets={"image": [r"^0$"]}))
    assert mlv.trainable_parameters(model) > 0


def test_targets_that_match_nothing_are_refused():
    with pytest.raises(mlv.AttachError, match="matched no nn.Linear"):
        mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS, targets={"text": ["nothing_here"]}))


def test_routing_errors():
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS))
    img = torch.randn(3, 3, 32, 32)
    with pytest.raises(mlv.RoutingError, match="unknown task 'caption'.*'vqa', 'retrieval', 'cls'"):
        with mlv.route(model, "caption"):
            pass
    with pytest.raises(mlv.RoutingError, match=r"task id 3 is out of range; ids must be in \[0, 2\]"):
        with mlv.route(model, torch.tensor([0, 3, 1])):
            pass
    with pytest.raises(mlv.RoutingError, match=r"task id -1 is out of range"):   # would index the last task
        with mlv.route(model, [0, -1, 1]):
            pass
    with pytest.raises(mlv.RoutingError, match=r"visual\.transformer\.resblocks\.0\.attn\.in_proj: routed 2 task ids "
                                               r"but the batch here has 3"):
        with mlv.route(model, torch.tensor([0, 1])):
            model.encode_image(img)
    with pytest.raises(mlv.RoutingError, match=r"serve 3 tasks .* no task was given; wrap the forward pass"):
        model.encode_image(img)
    with pytest.raises(mlv.RoutingError, match="integer tensor"):
        with mlv.route(model, torch.tensor([0.0, 1.0])):
            pass


def test_route_names_the_task_a_case_or_spelling_slip_meant():
    """route(model, 'VQA') listed the tasks only; merge and export named the close one, route now does too."""
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS))
    for given, meant in (("VQA", "vqa"), ("retrival", "retrieval"), (["vqa", "Cls"], "cls")):
        with pytest.raises(mlv.RoutingError, match=rf"unknown task .*\(did you mean '{meant}'\?\)"):
            with mlv.route(model, given):
                pass
    with pytest.raises(mlv.RoutingError) as info:   # nothing close: the list of tasks, no guess
        with mlv.route(model, "nlvr"):
            pass
    assert "did you mean" not in str(info.value) and "'vqa', 'retrieval', 'cls'" in str(info.value)


def test_nested_scopes_restore_the_outer_one():
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS))
    router = model._mtl_lora.router
    with mlv.route(model, "vqa") as outer:
        with mlv.route(model, ["cls", "retrieval"]):
            assert router.current.present == (1, 2)
        assert router.current is outer and outer.task == 0
    assert router.current is None


def test_single_task_adapter_needs_no_scope_and_route_works_through_wrappers():
    model = mlv.attach(tiny_open_clip().eval(), mlv.MTLLoRAConfig(tasks=["only"]))
    model.encode_image(torch.randn(2, 3, 32, 32))
    wrapper = nn.ModuleDict({"inner": model})
    with mlv.route(wrapper, "only"):
        assert model._mtl_lora.router.current.task == 0


def test_a_module_holding_several_adapted_models_is_refused_and_one_under_several_paths_is_not(tmp_path):
    """route, merge, save_adapter, parameter_report and expanded_rows (beams) on a student-teacher pair silently acted
    on the first adapted model found (the student): the teacher was never routed, saved or counted. A wrapper reaching
    one adapted model under several paths (MultiTaskModel's ``model`` and ``backbone.model``, DataParallel replicas
    sharing its router, torch.compile's ``_orig_mod``) still finds it."""

    def adapted():
        return mlv.attach(nn.Sequential(nn.Linear(4, 4)),
                          mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^0$"]}))

    pair = nn.ModuleDict({"student": adapted(), "teacher": adapted()})
    before = copy.deepcopy(pair.state_dict())
    for act in (lambda: mlv.route(pair, "a").__enter__(), lambda: mlv.disabled(pair).__enter__(),
                lambda: mlv.merge(pair, "a"), lambda: mlv.save_adapter(pair, tmp_path / "ad"),
                lambda: mlv.parameter_report(pair), lambda: expanded_rows(pair, 2).__enter__()):
        with pytest.raises(mlv.RoutingError, match=r"2 separately adapted models, at \['student', 'teacher'\].*"
                                                   r"pass one of them \(e\.g\. its \.student\)"):
            act()
    assert all(torch.equal(v, pair.state_dict()[k]) for k, v in before.items())   # nothing merged
    assert not (tmp_path / "ad").exists()
    for m in pair.values():
        assert m._mtl_lora.router.current is None and m._mtl_lora.router.merged_task is None
    with mlv.route(pair["teacher"], "b"):   # one of them, as the message says
        assert pair["teacher"]._mtl_lora.router.current.task == 1

    one = adapted()
    holder = nn.Module()
    holder.model, holder.backbone = one, nn.Module()
    holder.backbone.model = one
    holder.replica = one._replicate_for_data_parallel()   # a shallow copy sharing the router
    for wrapper in (holder, torch.compile(holder)):
        with mlv.route(wrapper, "b"):
            assert one._mtl_lora.router.current.task == 1
        assert mlv.parameter_report(wrapper)["adapted_projections"] == 1

    used = nn.ModuleDict({"student": adapted()})   # a wrapper routed once, then given a second adapted model
    with mlv.route(used, "a"):
        pass
    used["teacher"] = adapted()
    with pytest.raises(mlv.RoutingError, match="2 separately adapted models"):   # it routed the student alone
        mlv.route(used, "b").__enter__()
    deeper = nn.ModuleDict({"inner": nn.ModuleList([adapted()])})   # the second one added below a direct child
    with mlv.route(deeper, "a"):
        pass
    deeper["inner"].append(adapted())
    with pytest.raises(mlv.RoutingError, match="2 separately adapted models"):   # a stale answer routed the first
        mlv.route(deeper, "b").__enter__()
    compiled = torch.compile(adapted())   # saved as the model inside: it wrote '_orig_mod.' keys that never loaded
    path = mlv.save_adapter(compiled, tmp_path / "compiled")
    mlv.load_adapter(nn.Sequential(nn.Linear(4, 4)), path, check_base_weights=False)


def test_routing_to_another_task_or_disabling_while_merged_is_refused():
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS))
    mlv.merge(model, "vqa")
    with pytest.raises(mlv.RoutingError, match="merged into the weights for task 'vqa'"):
        with mlv.route(model, "cls"):
            pass
    with mlv.route(model, "vqa"):
        pass
    with pytest.raises(mlv.RoutingError, match="merged into the weights for task 'vqa'.*unmerge"):
        with mlv.disabled(model):  # would silently run the merged task, not the base model
            pass
    mlv.unmerge(model)
    with mlv.disabled(model):
        pass


def test_attached_model_deepcopies_with_its_own_router():
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=TASKS))
    clone = copy.deepcopy(model)
    assert clone._mtl_lora.router is not model._mtl_lora.router
    bank = next(iter(clone._mtl_lora.layers.values()))
    assert bank.router is clone._mtl_lora.router


def test_default_targets_that_miss_a_tower_are_refused():
    """An open_clip CLIP whose image tower is a ResNet (RN50-style): the family's default targets match only the
    text tower, and the image tower silently got no adapters. Explicit targets still work."""
    import open_clip

    model = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, layers=[1, 1, 1, 1], width=16, head_width=16),
                           text_cfg=dict(context_length=12, vocab_size=64, width=32, heads=2, layers=1))
    with pytest.raises(mlv.AttachError, match=r"match nothing in the image tower .*pass targets for both towers"):
        mlv.attach(copy.deepcopy(model), mlv.MTLLoRAConfig(tasks=["a"]))
    explicit = {"image": [r"visual\.attnpool\.(q|k|v|c)_proj$"], "text": [r"transformer\.resblocks\.\d+\.mlp\.c_fc$"]}
    info = mlv.attach(model, mlv.MTLLoRAConfig(tasks=["a"], targets=explicit))._mtl_lora
    assert set(info.towers.values()) == {"image", "text"}


class _WithMHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.cross = nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True)   # not supported

    def forward(self, x):
        h = self.fc(x)
        return self.attn(h, h, h, need_weights=False)[0]


def test_layers_their_owner_does_not_call_are_refused():
    """nn.MultiheadAttention reads out_proj.weight itself, nn.TransformerEncoderLayer's fast path reads its
    layers' weights: adapters there would never run, and a merge would still fold them in."""
    with pytest.raises(mlv.AttachError, match="reads its weight directly.*target the attention module itself"):
        mlv.attach(_WithMHA(), mlv.MTLLoRAConfig(tasks=["a"], targets={"image": [r"^attn\.out_proj$"]}))
    enc = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True))
    with pytest.raises(mlv.AttachError, match="fast path reads"):
        mlv.attach(enc, mlv.MTLLoRAConfig(tasks=["a"], targets={"image": [r"linear1$"]}))
    dec = nn.Sequential(nn.TransformerDecoderLayer(8, 2, 16, batch_first=True))   # no fast path: it calls them
    mlv.attach(dec, mlv.MTLLoRAConfig(tasks=["a"], targets={"image": [r"linear1$", r"self_attn$"]}))


def test_a_failed_attach_leaves_the_model_as_it_was():
    model = _WithMHA()
    types = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(ValueError, match="kdim/vdim"):
        mlv.attach(model, mlv.MTLLoRAConfig(tasks=["a"], targets={"image": [r"^fc$", r"^cross$"]}))
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert all(p.requires_grad for p in model.parameters())
    mlv.attach(model, mlv.MTLLoRAConfig(tasks=["a"], targets={"image": [r"^fc$", r"^attn$"]}))   # corrected


def test_a_failed_merge_puts_back_the_layers_it_had_merged(monkeypatch):
    model = mlv.attach(_WithMHA(), mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^fc$", r"^attn$"]}))
    _randomize_adapters(model)
    x = torch.randn(2, 3, 8)
    with torch.no_grad(), mlv.disabled(model):
        base = model(x)
    with torch.no_grad(), mlv.route(model, "a"):
        routed = model(x)
    info = attach_info(model)
    monkeypatch.setattr(info.layers["attn.in_proj"], "delta_weight", lambda *a: 1 / 0)   # after fc was merged
    with pytest.raises(ZeroDivisionError):
        mlv.merge(model, "a")
    assert info.router.merged_task is None and all(b.merge_backup is None for b in info.layers.values())
    with torch.no_grad(), mlv.disabled(model):
        assert torch.equal(model(x), base)
    with torch.no_grad(), mlv.route(model, "a"):
        assert torch.equal(model(x), routed)


def test_merged_weights_are_fp32_sums_under_autocast():
    model = mlv.attach(_WithMHA(), mlv.MTLLoRAConfig(tasks=["a"], targets={"image": [r"^fc$"]}))
    _randomize_adapters(model)
    bank = attach_info(model).layers["fc"]
    plain = bank.delta_weight(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = bank.delta_weight(0)
    assert under.dtype == torch.float32 and torch.equal(under, plain)


def test_a_float64_model_merges_to_float64_precision():
    """A ``.double()`` model's merged weights are summed in fp64: merged output equals routed to fp64
    rounding (summing in fp32 left it 2-3e-7 off), in place and in ``merged_state_dict``."""
    torch.manual_seed(0)
    cfg = mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^fc$", r"^attn$"]})
    model = mlv.attach(_WithMHA(), cfg).double()
    _randomize_adapters(model)
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    with torch.no_grad(), mlv.route(model, "b"):
        routed = model(x)
    sd = mlv.merged_state_dict(model, "b")
    plain = _WithMHA().double()
    plain.load_state_dict(sd)
    mlv.merge(model, "b")
    with torch.no_grad():
        assert (model(x) - routed).abs().max().item() < 1e-12
        assert (plain(x) - routed).abs().max().item() < 1e-12


def test_fp32_adapters_on_a_float64_base_merge_to_float64_precision():
    """Adapters left fp32 on a float64 base (attached to the fp32 base, whose weights were cast to float64 after;
    attached to a ``.double()`` base they are float64 since helper 516); the merge formed ΔW = M A in fp32 and added
    it in fp64, so merged outputs were off routed ones (A x and M z in fp64) by fp32 rounding: 7.3e-8 here (helper
    310). ΔW is now formed in the base's dtype where that is wider: ΔW = M A of the fp32 M_t in fp64, in place and in
    ``merged_state_dict``. (The routed forward forms M_t for several layers at once, whose fp32 rounding can differ
    from one layer's by the CPU's kernels -- 4.8e-8 on an AVX-512 machine --, so merged outputs are compared with it
    at 1e-6, and ΔW with its fp64 product exactly.)"""
    torch.manual_seed(0)
    cfg = mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^fc$", r"^attn$"]})
    model = mlv.attach(_WithMHA(), cfg)
    for n, p in model.named_parameters():
        if "lora_" not in n:
            p.data = p.data.double()
    _randomize_adapters(model)
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    with torch.no_grad(), mlv.route(model, "b"):
        routed = model(x)
        fc = attach_info(model).layers["fc"]
        want = model.fc.weight + fc.task_matrices((1,))[0].double() @ fc.a_matrix(1).double()
    plain = _WithMHA().double()
    plain.load_state_dict(mlv.merged_state_dict(model, "b"))
    mlv.merge(model, "b")
    with torch.no_grad():
        torch.testing.assert_close(model.fc.weight, want, atol=1e-15, rtol=0)
        torch.testing.assert_close(plain.fc.weight, want, atol=1e-15, rtol=0)
        assert (model(x) - routed).abs().max().item() < 1e-6
        assert (plain(x) - routed).abs().max().item() < 1e-6
    assert attach_info(model).layers["fc"].delta_weight(0).dtype == torch.float32   # fp32 unless asked wider


def test_wrapper_checks_head_names_before_attaching():
    from mtl_lora_vl import MTLLoRAModel

    model, cfg = _WithMHA(), mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^fc$"]})
    with pytest.raises(ValueError, match=r"heads for \['c'\]"):
        MTLLoRAModel(model, cfg, heads={"c": nn.Linear(2, 2)})
    assert getattr(model, "_mtl_lora", None) is None
    MTLLoRAModel(model, cfg, heads={"b": nn.Linear(2, 2)})   # the corrected call attaches


def test_sequence_first_self_attention_projects_once():
    """Self-attention in sequence-first layout takes the one fused in-projection (z = A x once), not
    three: the identity of query, key and value is read before the layout transpose."""
    m = nn.Module()
    m.attn = nn.MultiheadAttention(8, 2, batch_first=False)
    mlv.attach(m, mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^attn$"]}))
    calls, linear = [], m.attn.in_proj.linear
    m.attn.in_proj.linear = lambda x, w, b=None, rows=None: calls.append(rows) or linear(x, w, b, rows)
    x = torch.randn(5, 3, 8)
    with torch.no_grad(), mlv.route(m, "a"):
        m.attn(x, x, x, need_weights=False)
    assert calls == [slice(0, 24)]


def test_numpy_integer_ids_route():
    np = pytest.importorskip("numpy")
    model = mlv.attach(_WithMHA(), mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^fc$"]}))
    _randomize_adapters(model)
    x = torch.randn(2, 3, 8)
    with torch.no_grad(), mlv.route(model, list(np.array([1, 0]))):
        got = model(x)
    with torch.no_grad(), mlv.route(model, [1, 0]):
        assert torch.equal(got, model(x))


class _Tied(nn.Module):
    """A language model's tied input embeddings and output layer."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_merging_into_a_tied_weight_is_refused_before_anything_changes():
    model = mlv.attach(_Tied(), mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^head$"]}))
    _randomize_adapters(model)
    emb = model.embed.weight.detach().clone()
    with pytest.raises(RuntimeError, match=r"weight of head is shared with embed.weight, head.weight .*route"):
        mlv.merge(model, "a")
    assert torch.equal(model.embed.weight, emb) and attach_info(model).router.merged_task is None
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad(), mlv.route(model, "a"):   # routed, the adapter acts at the output layer only
        routed = model(ids)
    with torch.no_grad(), mlv.disabled(model):
        base = model(ids)
    assert not torch.equal(routed, base) and torch.equal(model.embed.weight, emb)
    # A merged state dict too: loaded into a tied model, its merged head.weight became the embeddings as well
    with pytest.raises(RuntimeError, match=r"merged_state_dict: the weight of head is shared with embed.weight"):
        mlv.merged_state_dict(model, "a")


def test_linears_inside_a_sequence_first_torch_transformer_layer_route_by_sample():
    """nn.TransformerDecoderLayer keeps batch_first on its self_attn only: its linear1 was taken as batch-first,
    so a mixed route went by sequence position when length == batch (max error 1.6), or raised otherwise."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.dec = nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0)   # batch_first=False: (L, B, d)

        def forward(self, tgt, mem):
            return self.dec(tgt, mem)

    torch.manual_seed(0)
    net = mlv.attach(Net().eval(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, alpha=4, n_up=2,
                                                      targets={"image": [r"dec\.linear1$"], "text": []}))
    _randomize_adapters(net)
    assert attach_info(net).layers["dec.linear1"].batch_dim == 1
    for length in (3, 4):
        tgt, mem = torch.randn(length, 3, 8), torch.randn(5, 3, 8)
        with torch.no_grad():
            with mlv.route(net, [0, 1, 1]):
                mixed = net(tgt, mem)
            alone = torch.cat([_run_one(net, tgt[:, b:b + 1], mem[:, b:b + 1], t) for b, t in enumerate("abb")], 1)
        torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-5)


def _run_one(net, tgt, mem, task):
    with mlv.route(net, task):
        return net(tgt, mem)


class _SharedProj(nn.Module):
    """One nn.Linear reachable under two names (a projection reused by two paths)."""

    def __init__(self):
        super().__init__()
        self.img_proj = nn.Linear(8, 8)
        self.txt_proj = self.img_proj

    def forward(self, x):
        return self.img_proj(x), self.txt_proj(x)


def test_a_module_under_two_names_is_adapted_under_both():
    """named_modules() drops duplicates, so only img_proj was adapted: txt_proj ran the base model silently, and
    merge refused it as a tied weight while telling the user to run routed -- the path that was wrong."""
    torch.manual_seed(0)
    model = mlv.attach(_SharedProj(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, targets={"image": [r"img_proj$"]}))
    _randomize_adapters(model)
    assert model.txt_proj is model.img_proj and list(attach_info(model).layers) == ["img_proj"]
    x = torch.randn(3, 8)
    with torch.no_grad(), mlv.route(model, "a"):
        yi, yt = model(x)
    assert torch.equal(yi, yt)
    sd = mlv.merged_state_dict(model, "a")
    assert torch.equal(sd["img_proj.weight"], sd["txt_proj.weight"])
    with torch.no_grad():
        mlv.merge(model, "a")
        mi, mt = model(x)
    torch.testing.assert_close(mi, yi, atol=1e-5, rtol=1e-5)
    mlv.unmerge(model)
    plain = mlv.MTLLoRAModel(model).unload()
    assert type(plain.img_proj) is nn.Linear and plain.txt_proj is plain.img_proj


def test_merging_inside_an_open_scope_is_refused():
    """The merged weights silently overrode the open route() or disabled() scope."""
    lin = mlv.attach(nn.Sequential(nn.Linear(4, 4)), mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^0$"]}))
    with mlv.route(lin, ["b", "b"]):
        with pytest.raises(RuntimeError, match=r"merge: a route\(\) scope for \['b'\] is open on this model"):
            mlv.merge(lin, "a")
    with mlv.disabled(lin):
        with pytest.raises(RuntimeError, match=r"merge: a disabled\(\) scope is open"):
            mlv.merge(lin, "a")
    with mlv.route(lin, "a"):   # the task being merged: what runs is the same
        mlv.merge(lin, "a")
    mlv.unmerge(lin)


def test_grown_rows_stay_frozen_in_a_copy():
    """add_task's gradient hooks live on the tensors; deepcopy and pickle dropped them, so a copy trained the
    old tasks' rows."""
    import pickle

    model = mlv.attach(nn.Sequential(nn.Linear(4, 4)), mlv.MTLLoRAConfig(tasks=["a", "b"], targets={"image": [r"^0$"]}))
    _randomize_adapters(model)
    mlv.add_task(model, "c")
    frozen = copy.deepcopy(model).requires_grad_(False)   # frozen for inference: copying it raised (a hook needs
    copy.deepcopy(frozen)                                 # requires_grad)
    pickle.loads(pickle.dumps(frozen))
    for copy_of in (copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))):
        twin = copy_of(model)
        w = twin[0].lora_w
        old = w.detach()[:2].clone()
        opt = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=1.0)
        with mlv.route(twin, ["a", "c"]):
            twin(torch.randn(2, 4)).square().sum().backward()
        opt.step()
        assert torch.equal(w.detach()[:2], old) and not torch.equal(w.detach()[2], model[0].lora_w.detach()[2])


def test_attach_keeps_the_replaced_modules_mode():
    """New adapter modules start in train mode: an eval() model had adapter dropout on, and a replaced
    nn.MultiheadAttention's own attention dropout came back on (zero-initialised adapters then differed from
    the base), also after unload."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.0))
    base.attn = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True)
    base.eval()
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        want = base.attn(x, x, x, need_weights=False)[0]
    cfg = mlv.MTLLoRAConfig(tasks=["a"], dropout=0.5, targets={"image": [r"^0$", r"^attn$"]})
    model = mlv.attach(base, cfg)
    assert not any(m.training for m in model.modules())
    with torch.no_grad(), mlv.route(model, "a"):
        torch.testing.assert_close(model.attn(x, x, x, need_weights=False)[0], want)
        assert torch.equal(model[0](x), model[0](x))   # no adapter dropout in eval


def test_qkv_slices_select_separate_q_k_v_layers():
    """qkv_slices="qv" (PEFT's ["q_proj", "v_proj"]) was silently ignored where q, k and v are layers of their
    own: k_proj was adapted too."""
    block = nn.Module()
    for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
        setattr(block, n, nn.Linear(4, 4))
    block.forward = lambda x: block.out_proj(block.q_proj(x) + block.k_proj(x) + block.v_proj(x))
    model = nn.Sequential(block)
    cfg = mlv.MTLLoRAConfig(tasks=["a"], qkv_slices="qv", targets={"image": [r"_proj$"]})
    chosen = [name for name, *_ in select_targets(model, cfg)]
    assert chosen == ["0.q_proj", "0.v_proj", "0.out_proj"]


def test_a_custom_target_of_unknown_layout_in_a_sequence_first_model_is_warned_about():
    """An nn.Linear after a sequence-first nn.MultiheadAttention, given as a custom target, was routed along
    dim 0 -- the sequence -- and with as many positions as samples a mixed route silently mixed positions."""
    import warnings

    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.fc = nn.MultiheadAttention(16, 2), nn.Linear(16, 16)

    class BatchFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.fc = nn.MultiheadAttention(16, 2, batch_first=True), nn.Linear(16, 16)

    targets = {"image": ["^attn$", "^fc$"]}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        mlv.attach(SeqFirst(), mlv.MTLLoRAConfig(tasks=["a", "b"], targets=targets))
    assert any("no module around target 'fc' says whether its input is batch-first" in str(w.message) for w in seen)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        mlv.attach(BatchFirst(), mlv.MTLLoRAConfig(tasks=["a", "b"], targets=targets))
    assert not any("batch-first" in str(w.message) for w in seen)


def test_targets_that_name_what_cannot_be_adapted_are_warned_about():
    """open_clip blocks with qk_norm (its own Attention class: neither a Linear nor a MultiheadAttention) got
    adapters on their MLPs only, silently; qkv_slices='qv' adapted a Phi-3 LLaVA's packed qkv_proj whole (k
    too), silently."""
    import open_clip
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, Phi3Config

    model = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8,
                                                         head_width=16, qk_norm=True),
                           text_cfg=dict(context_length=12, vocab_size=64, width=32, heads=2, layers=1))
    with pytest.warns(UserWarning, match=r"1 module\(s\) that the targets name are neither nn.Linear nor "
                                         r"nn.MultiheadAttention and get no adapter \(e.g. "
                                         r"'visual.transformer.resblocks.0.attn', class Attention\)"):
        mlv.attach(model, mlv.MTLLoRAConfig(tasks=TASKS))
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    text = Phi3Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    llava = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=95,
                                                      vision_feature_layer=-1))
    with pytest.warns(UserWarning, match=r"qkv_slices='qv' does not apply to 1 packed q/k/v layer\(s\) \(e.g. "
                                         r"'model.language_model.layers.0.self_attn.qkv_proj'\)"):
        mlv.attach(llava, mlv.MTLLoRAConfig(tasks=TASKS, qkv_slices="qv"))
    with warnings.catch_warnings():   # the family's own projections, every slice: nothing to say
        warnings.simplefilter("error")
        mlv.attach(LlavaForConditionalGeneration(llava.config), mlv.MTLLoRAConfig(tasks=TASKS))


def test_add_task_zeroes_the_gradient_of_every_old_task_row():
    """grow_tasks' gradient hook zeroes the frozen rows; zeroing one row too few (the last old task's) went
    unnoticed: the copy test routes only the first old task, and add_task's test restores rows after each
    step anyway. With a batch of every task, every old row's gradient must be zero and the new row's not."""
    model = mlv.attach(nn.Sequential(nn.Linear(4, 4)), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=2,
                                                                         targets={"image": [r"^0$"]}))
    with torch.no_grad():
        model[0].lora_B.normal_(0, 0.5)
    mlv.add_task(model, "c")
    bank = model[0]
    with mlv.route(model, ["a", "b", "c"]):
        model(torch.randn(3, 4)).square().sum().backward()
    for name in ("lora_w", "lora_lambda"):
        g = getattr(bank, name).grad
        assert torch.count_nonzero(g[:2]) == 0, name
        assert torch.count_nonzero(g[2]) > 0, name


class _ScaledLinear(nn.Linear):
    """An nn.Linear subclass whose forward computes something else than F.linear (as quantized or casting layers do)."""

    def forward(self, x):
        return super().forward(x) * 2.0


def test_a_linear_subclass_with_its_own_forward_is_refused():
    """The adapted layer computes F.linear(x, weight, bias) + ΔW x: it replaced such a layer's own forward, so the
    model at init (B = 0) no longer gave the base model's outputs (here every output halved), silently."""
    model = nn.Sequential(_ScaledLinear(4, 4), nn.Linear(4, 4))
    with pytest.raises(mlv.AttachError, match=r"'0' is a _ScaledLinear.*own forward.*leave it out of the targets"):
        mlv.attach(model, mlv.MTLLoRAConfig(tasks=["a"], r=2, targets={"image": [r"^\d$"]}))
    assert type(model[0]) is _ScaledLinear and all(p.requires_grad for p in model.parameters())
    plain = nn.Sequential(nn.modules.linear.NonDynamicallyQuantizableLinear(4, 4))   # no forward of its own
    mlv.attach(plain, mlv.MTLLoRAConfig(tasks=["a"], r=2, targets={"image": [r"^0$"]}))
    timm_layers = pytest.importorskip("timm.layers")
    mlv.attach(nn.Sequential(timm_layers.Linear(4, 4)),
               mlv.MTLLoRAConfig(tasks=["a"], r=2, targets={"image": [r"^0$"]}))


def test_hooks_on_a_replaced_layer_are_warned_about():
    """attach replaces each target by a new module: a forward hook the user had put on the nn.Linear stopped firing,
    silently (a feature extractor then read nothing, or stale values)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o))
    with pytest.warns(UserWarning, match=r"1 target\(s\) have hooks.*'0'.*register them again after attach"):
        mlv.attach(model, mlv.MTLLoRAConfig(tasks=["a"], r=2, targets={"image": [r"^\d$"]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mlv.attach(nn.Sequential(nn.Linear(4, 4)), mlv.MTLLoRAConfig(tasks=["a"], r=2, targets={"image": [r"^0$"]}))


def test_adapter_tensors_that_do_not_fit_name_the_rank(monkeypatch):
    """An absurd --rank ended in the allocator's bare "DefaultCPUAllocator: can't allocate memory: you tried to
    allocate 512000000000 bytes" (CUDA: "CUDA out of memory. Tried to allocate ..."); it names the layer and r."""
    attach_module = importlib.import_module("mtl_lora_vl.adapters.attach")   # (the package's attach is the function)

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 476.84 GiB")

    model = tiny_open_clip()
    monkeypatch.setattr(attach_module, "LoRALinear", no_memory)
    monkeypatch.setattr(attach_module, "LoRAMultiheadAttention", no_memory)
    with pytest.raises(mlv.AttachError, match=r"do not fit in memory at r = 8 \(--rank\).*smaller rank.*476.84 GiB"):
        mlv.attach(model, mlv.MTLLoRAConfig(tasks=["a"], r=8))
    assert getattr(model, "_mtl_lora", None) is None   # nothing replaced


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_merge_into_a_float8_base_is_refused_by_name_and_changes_nothing(dtype):
    """Helper 460: merge / merged_state_dict on a float8 base gave torch's 'Promotion for Float8 Types is not
    supported' (save_merged and apply_plain_lora already refused it by name). Refused so too, before an earlier merged
    task is unmerged: the model is left as it was. bf16 / fp16 / fp32 / fp64 bases still merge."""
    torch.manual_seed(0)
    config = mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, alpha=8, targets={"image": [r"^\d$"]})
    model = mlv.attach(nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8)), config)
    _randomize_adapters(model)
    mlv.merge(model, "a")
    model.to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if dtype.itemsize > 1:
        mlv.merge(model, "b")
        assert set(mlv.merged_state_dict(model, "a")) == {"0.weight", "0.bias", "1.weight", "1.bias"}
        return
    for call, fold in (("merge", mlv.merge), ("merged_state_dict", mlv.merged_state_dict)):
        with pytest.raises(TypeError, match=rf"^{call}: the base weight 0.weight is float8_e4m3fn \(and 1 more\): .*"
                                            r"load the base model in bfloat16 or float32"):
            fold(model, "b")
    assert attach_info(model).router.merged_task == 0   # still task 'a', merged
    after = model.state_dict()
    assert all(torch.equal(v.view(torch.uint8), after[k].view(torch.uint8)) for k, v in before.items())
