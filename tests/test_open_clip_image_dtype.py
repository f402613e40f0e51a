"""open_clip does not cast its inputs to its weights' dtype (``casts_inputs = False``): ``encode_image`` of the fp32
images ``preprocess_uint8`` makes by default, on a bf16 base (``load_backbone(..., base_dtype="bf16")``), failed with
torch's "Input type (torch.FloatTensor) and weight type (CPUBFloat16Type) should be the same", and float64 images on
an fp32 base with "expected scalar type Double but found Float". Both now name the two dtypes and the fix; the
fixes it names still run. The built-in backbone, CPU."""

from __future__ import annotations

import pytest
import torch

import mtl_lora_vl as mlv

PICTURES = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("base", "images", "weights"), [("bf16", torch.float32, "bfloat16"),
                                                         ("fp32", torch.float64, "float32")])
def test_images_of_another_dtype_than_the_tower_are_named_with_the_fix(base, images, weights):
    bb = mlv.backbones.load_backbone("builtin", base_dtype=base)
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa"], r=2))
    x = bb.preprocess_uint8(PICTURES).to(images)
    want = (rf"^encode_image: the images are torch\.{str(images)[6:]} but builtin's image tower weights are "
            rf"torch\.{weights}.*preprocess_uint8\(images, dtype=torch\.{weights}\)")
    with mlv.route(bb.model, "vqa"), pytest.raises(ValueError, match=want) as e:
        bb.encode_image(x)
    assert ("torch.autocast" in str(e.value)) == (base == "bf16")   # (autocast to fp32 is no fix)


def test_the_fixes_it_names_run_on_a_bf16_base():
    bb = mlv.backbones.load_backbone("builtin", base_dtype="bf16")
    with torch.no_grad():
        cast = bb.encode_image(bb.preprocess_uint8(PICTURES, dtype=torch.bfloat16))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = bb.encode_image(bb.preprocess_uint8(PICTURES))
    assert cast.shape == under.shape and cast.shape[0] == 2 and torch.isfinite(cast.float()).all()


def test_fp16_weights_are_named_with_autocast_as_a_fix_too():
    bb = mlv.backbones.load_backbone("builtin", base_dtype="fp16")
    with pytest.raises(ValueError, match=r"^encode_image: the images are torch\.float32 but builtin's image tower "
                                         r"weights are torch\.float16.*or call it under torch\.autocast\('cpu', "
                                         r"dtype=torch\.float16\)$"):
        bb.encode_image(bb.preprocess_uint8(PICTURES))


@pytest.mark.parametrize("failure", [RuntimeError("a kernel's own failure"), torch.cuda.OutOfMemoryError("OOM")])
def test_other_failures_of_the_tower_are_not_taken_for_the_dtype(monkeypatch, failure):
    """The dtype is named only where it is what failed: under autocast (which casts the images) another RuntimeError is
    the tower's own; an out-of-memory error is never renamed."""
    bb = mlv.backbones.load_backbone("builtin", base_dtype="bf16")
    x = bb.preprocess_uint8(PICTURES)

    def fails(images):
        raise failure

    monkeypatch.setattr(bb.model, "encode_image", fails)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(type(failure)) as under:
        bb.encode_image(x)
    assert under.value is failure
    if isinstance(failure, torch.cuda.OutOfMemoryError):
        with pytest.raises(torch.cuda.OutOfMemoryError) as outside:
            bb.encode_image(x)
        assert outside.value is failure
