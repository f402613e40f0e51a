"""A decoded RGB image becomes its uint8 tensor from its bytes, the same tensor ``pil_to_tensor`` gives, without
NumPy's array interface (about half the per-row host time of that step)."""

from __future__ import annotations

import io

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from mtl_lora_vl.data import images, world
from mtl_lora_vl.data.images import to_uint8_tensor
from mtl_lora_vl.data.resize import ImageResize


def _png(w: int, h: int, mode: str, seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    px = torch.randint(0, 256, (h, w, len(mode)), generator=g, dtype=torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(px.squeeze(-1) if mode == "L" else px, mode).save(buf, "PNG")
    return buf.getvalue()


SOURCES = [_png(37, 23, "RGB", 0), _png(20, 50, "RGBA", 1), _png(64, 64, "L", 2)]
RESIZES = [ImageResize(32), ImageResize(24, mode="squash", interpolation="bilinear", alpha="drop"),
           ImageResize(32, mode="longest"), ImageResize(32, mode="native", factor=8)]


def _reference(source, resize: ImageResize) -> torch.Tensor:
    img = images.load_image(source, resize.size) if images.is_scene(source) else images._decoded(
        source, resize.draft_side, resize.alpha)
    return TF.pil_to_tensor(images.resize_to_square(images.to_rgb(img, resize.alpha), resize)).contiguous()


@pytest.mark.parametrize("resize", RESIZES, ids=lambda r: r.mode)
def test_the_uint8_tensor_is_pil_to_tensors_without_it(resize, monkeypatch):
    scenes = [ex.image for ex in world.build_split("vqa", "train", n=3, seed=0).examples]
    expected = [_reference(s, resize) for s in [*SOURCES, *scenes]]
    monkeypatch.setattr(TF, "pil_to_tensor", lambda img: pytest.fail("an RGB image went through pil_to_tensor"))
    for source, want in zip([*SOURCES, *scenes], expected):
        got = to_uint8_tensor(source, resize)
        assert got.dtype == torch.uint8 and got.is_contiguous() and got.shape == want.shape
        assert torch.equal(got, want)
        assert got.untyped_storage().nbytes() == got.numel()   # its own storage, not a view of a larger buffer
