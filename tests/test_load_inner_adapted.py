"""Loading an adapter saved from a model whose inner multimodal model was adapted on its own
(``attach(bb.model.model, cfg)``, recorded as family "custom" of the inner class): ``load_pretrained`` and
``load_adapter`` of the whole model put it back on that inner model (helper 343's items 1 and 2)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from llava_tiny import save_tiny_llava
from qwen_tiny import save_tiny_qwen2vl
from test_qwen2vl_backbone import _tiny_sized
from vlm_checks import perturb_adapters, prompts

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.io import AdapterFileError

TARGETS = {"text": [r"language_model\.layers\.\d+\.self_attn\.[qv]_proj$"]}


def _inner_adapted(folder, **load):
    """The backbone of ``folder`` with random adapters on its inner multimodal model only."""
    bb = load_backbone(f"hf:{folder}", **load)
    mlv.attach(bb.model.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1, targets=TARGETS))
    perturb_adapters(bb.model, std=0.3)
    return bb


def _routed_losses(bb, route: tuple[int, ...] = (0, 1, 1, 0)) -> torch.Tensor:
    """Per-row language-model losses of four rows under a mixed route (a, b, b, a)."""
    b = bb.lm_collator()(prompts(bb, 4), ["red", "a blue square", "two", "a circle"])
    torch.manual_seed(1)
    images = torch.randn(4, 3, bb.image_size, bb.image_size)
    with torch.no_grad(), mlv.route(bb.model, list(route)):
        return bb.lm_loss(images, **b)


@pytest.mark.parametrize("save", [save_tiny_qwen2vl, save_tiny_llava], ids=["qwen2_vl", "llava"])
def test_load_pretrained_puts_an_inner_models_adapter_back_on_the_inner_model(tmp_path, save):
    """It refused: 'the adapter was made for a model of family custom (...Qwen2VLModel), but this base model is of
    family qwen2_vl (...Qwen2VLForConditionalGeneration)', the model the adapter records as its base."""
    folder = save(tmp_path / "base")
    bb = _inner_adapted(folder)
    ref = _routed_losses(bb)
    out = mlv.save_adapter(bb.model, tmp_path / "adapter", base={"backbone": f"hf:{folder}"})
    assert json.loads((out / "mtl_lora_config.json").read_text())["base_model"]["family"] == "custom"
    bb2 = mlv.load_pretrained(out, heads=False).backbone
    assert getattr(bb2.model.model, "_mtl_lora", None) is not None and getattr(bb2.model, "_mtl_lora", None) is None
    got = _routed_losses(bb2)
    assert (got - ref).abs().max() < 1e-5
    assert (_routed_losses(bb2, (1, 0, 0, 1)) - got).abs().max() > 1e-4   # the tasks differ
    again = load_backbone(f"hf:{folder}").model
    assert mlv.load_adapter(again, out) is again and getattr(again.model, "_mtl_lora", None) is not None
    with pytest.raises(AdapterFileError, match="already has MTL-LoRA adapters"):
        mlv.load_adapter(again, out)


def test_load_adapter_of_the_whole_model_checks_its_backbones_image_area(tmp_path):
    """``load_adapter(bb2.model.model, ...)`` of an adapter trained within 1024 to 4096 pixels on a backbone that
    reads within 1024 to 448² said nothing (the inner model has no image record; the area it set there no backbone
    reads); the whole model given, its backbone's area is checked and named."""
    folder = _tiny_sized(tmp_path, longest_edge=1_000_000)
    bb = _inner_adapted(folder, image_max_pixels=4096)
    out = mlv.save_adapter(bb.model, tmp_path / "adapter", base={"backbone": f"hf:{folder}"})
    with pytest.warns(UserWarning, match=r"read within 1024 to 4096 pixels.*reads them within 1024 to 200704; "
                                         r"call backbone.read_within\(1024, 4096\)"):
        mlv.load_adapter(load_backbone(f"hf:{folder}").model, out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mlv.load_adapter(load_backbone(f"hf:{folder}", image_max_pixels=4096).model, out)


def test_a_backbone_built_after_a_load_onto_the_bare_inner_model_reads_the_adapters_area(tmp_path):
    """``load_adapter(bare.model, ...)`` of a model no backbone reads put the area on the inner model only, with a
    warning that no backbone built later would see it: one built on the whole model read within 1024 to 448² (a
    1000x800 picture at 496x400, where training read 64x48); it now reads the adapter's 1024 to 4096, the load
    silent, as on a bare whole model."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from mtl_lora_vl.backbones.qwen2_vl import Qwen2VLBackbone

    folder = _tiny_sized(tmp_path, longest_edge=1_000_000)
    bb = _inner_adapted(folder, image_max_pixels=4096)
    out = mlv.save_adapter(bb.model, tmp_path / "adapter", base={"backbone": f"hf:{folder}"})
    bare = Qwen2VLForConditionalGeneration.from_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mlv.load_adapter(bare.model, out)
    built = Qwen2VLBackbone.from_model(bare, AutoProcessor.from_pretrained(folder))
    assert (built.resize.min_pixels, built.resize.budget) == (1024, 4096)
    assert built.resize.resized_size(1000, 800) == bb.resize.resized_size(1000, 800) == (64, 48)


def test_load_adapter_of_a_backbones_inner_model_checks_the_backbones_image_area(tmp_path):
    """Helper 364: ``load_adapter(bb2.model.model, ...)`` warned 'whose backbone's image reading cannot be seen from
    it' on every load, the areas the same (1024 to 4096) or not (the backbone reading within 1024 to 448²: a
    1000x800 picture, 775 image tokens where training read 12); the backbone's record is now on its inner model
    too: the same area says nothing, another is named with the fix."""
    folder = _tiny_sized(tmp_path, longest_edge=1_000_000)
    bb = _inner_adapted(folder, image_max_pixels=4096)
    out = mlv.save_adapter(bb.model, tmp_path / "adapter", base={"backbone": f"hf:{folder}"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mlv.load_adapter(load_backbone(f"hf:{folder}", image_max_pixels=4096).model.model, out)
    with pytest.warns(UserWarning, match=r"read within 1024 to 4096 pixels.*reads them within 1024 to 200704; "
                                         r"call backbone.read_within\(1024, 4096\)") as caught:
        mlv.load_adapter(load_backbone(f"hf:{folder}").model.model, out)
    assert not any("cannot be seen" in str(w.message) for w in caught)


def test_unload_takes_off_the_image_area_load_adapter_put_on_the_whole_model(tmp_path):
    """load_adapter of a bare whole Qwen2-VL puts the adapter's area on it (no backbone set one); unload gave the
    adapters back but kept that area, read by the next backbone built on the model (only the inner one's went)."""
    from transformers import Qwen2VLForConditionalGeneration

    from mtl_lora_vl.backbones.image_record import image_record
    from mtl_lora_vl.mtl_lora_model import unload

    folder = _tiny_sized(tmp_path, longest_edge=1_000_000)
    bb = _inner_adapted(folder, image_max_pixels=4096)
    out = mlv.save_adapter(bb.model, tmp_path / "adapter", base={"backbone": f"hf:{folder}"})
    bare = mlv.load_adapter(Qwen2VLForConditionalGeneration.from_pretrained(folder), out)
    assert image_record(bare).bounds == (1024, 4096)
    unload(bare)
    assert not image_record(bare).capped and image_record(bare).bounds is None


def test_a_plain_lora_export_of_an_inner_model_folds_into_the_whole_model(tmp_path):
    """export_lora(format="plain") of a model whose inner Qwen2VLModel was adapted records the inner model; its
    apply_plain_lora onto the whole model was refused ('made for a model of family custom (...Qwen2VLModel)')."""
    from mtl_lora_vl.io.exports import apply_plain_lora

    folder = save_tiny_qwen2vl(tmp_path / "base")
    bb = _inner_adapted(folder)
    ref = _routed_losses(bb, (0, 0, 0, 0))
    plain = mlv.export_lora(bb.model, "a", tmp_path / "plain", format="plain")
    bb2 = load_backbone(f"hf:{folder}")
    zero_shot = _plain_losses(bb2)
    assert apply_plain_lora(bb2.model, plain) is bb2.model
    got = _plain_losses(bb2)
    assert (got - ref).abs().max() < 1e-5 and (zero_shot - ref).abs().max() > 1e-4


def _plain_losses(bb) -> torch.Tensor:
    """``_routed_losses``'s rows on a model without adapters."""
    b = bb.lm_collator()(prompts(bb, 4), ["red", "a blue square", "two", "a circle"])
    torch.manual_seed(1)
    with torch.no_grad():
        return bb.lm_loss(torch.randn(4, 3, bb.image_size, bb.image_size), **b)


def test_saving_the_inner_model_alone_records_the_backbones_image_area(tmp_path):
    """Helper 358: ``save_adapter(bb.model.model, ...)`` of a backbone reading within 1024 to 4096 pixels recorded no
    area without a word (the backbone's record was on the whole model only), so load_pretrained read within 1024 to
    448² (200704 pixels); helper 364: the backbone's record is on its inner model too, so the inner model alone
    records the same area as the whole model, and neither save says anything."""
    folder = _tiny_sized(tmp_path, longest_edge=1_000_000)
    bb = _inner_adapted(folder, image_max_pixels=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, model in (("inner", bb.model.model), ("whole", bb.model)):
            out = mlv.save_adapter(model, tmp_path / name, base={"backbone": f"hf:{folder}"})
            base = json.loads((out / "mtl_lora_config.json").read_text())["base"]
            assert (base["image_min_pixels"], base["image_max_pixels"]) == (1024, 4096), name


@pytest.mark.parametrize("base", ["other_family", "two_inner_models", "ddp"])
def test_an_inner_models_adapter_on_a_base_it_does_not_fit_says_why_and_what_to_pass(tmp_path, base):
    """Helper 364: a LLaVA inner model's adapter loaded onto a Qwen2-VL, onto a LLaVA holding two LlavaModel modules,
    or onto a DDP-wrapped LLaVA was refused with 'made for a model of family custom (...LlavaModel), but this base
    model is of family llava' (DDP: 'made for class ...LlavaModel, but this base model is ...DistributedDataParallel'),
    which says nothing of why; now: saved from the inner model of a llava model, and what to pass."""
    import copy

    import torch.distributed as dist

    folder = save_tiny_llava(tmp_path / "llava")
    out = mlv.save_adapter(_inner_adapted(folder).model, tmp_path / "adapter", base={"backbone": f"hf:{folder}"})
    saved = r"saved from the inner multimodal model \(LlavaModel\) of a llava model, adapted on its own"
    model = load_backbone(f"hf:{save_tiny_qwen2vl(tmp_path / 'qwen')}" if base == "other_family" else
                          f"hf:{folder}").model
    fix = r"Qwen2VLForConditionalGeneration \(family qwen2_vl\): load it onto a llava model"
    if base == "two_inner_models":
        model.extra = copy.deepcopy(model.model)
        fix = r"holds 2 LlavaModel modules \(model, extra\).*load_adapter\(model.model, path\)"
    elif base == "ddp":
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        model = torch.nn.parallel.DistributedDataParallel(model)
        fix = r"a DistributedDataParallel wrapping a LlavaForConditionalGeneration: .*load_adapter\(wrapper.module"
    try:
        with pytest.raises(AdapterFileError, match=saved + ".*" + fix):
            mlv.load_adapter(model, out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if base == "ddp":
        assert mlv.load_adapter(model.module, out) is model.module
