"""A native-aspect strip (LLaVA-NeXT / OneVision anyres views, Idefics3 / SmolVLM crops) keeps its picture's original
size through copies, or is refused once it lost it, never read as a picture of the strip's own shape (review 276:
cloned LLaVA-NeXT strips of (30, 90) and (70, 24) pictures were read as (96, 32), 40 tokens each instead of 34 and 40).
"""

from __future__ import annotations

import copy
import pickle
import re

import numpy as np
import pytest
import test_llava_next
import torch
from idefics3_tiny import _num2words, tiny_idefics3_backbone  # noqa: F401 (an autouse fixture)
from PIL import Image
from torch.utils.data import DataLoader

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.data.anyres import pad_images
from mtl_lora_vl.data.images import to_uint8_tensor

# (h, w): a wide and a tall picture whose strips share one shape, and a larger one of more views
SIZES = [(30, 90), (70, 24), (160, 30)]
KEPT = {
    "clone": lambda x: x.clone(),
    "to float and back": lambda x: x.to(torch.float32).to(torch.uint8),
    "contiguous": lambda x: x.contiguous(),
    "detach": lambda x: x.detach(),
    "pickle": lambda x: pickle.loads(pickle.dumps(x)),
    "deepcopy": copy.deepcopy,
}
LOST = {"stack and unbind": lambda x: torch.stack([x]).unbind(0)[0], "x[None][0]": lambda x: x[None][0]}


@pytest.fixture(scope="module")
def llava_next(tmp_path_factory):
    return load_backbone(f"hf:{test_llava_next.build(tmp_path_factory.mktemp('llava_next'))[2]}")


@pytest.fixture(params=["llava_next", "idefics3"])
def bb(request, llava_next, tmp_path_factory):
    return llava_next if request.param == "llava_next" else tiny_idefics3_backbone(tmp_path_factory.mktemp("i3"))


def _strips(bb):
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]
    return [to_uint8_tensor(p, bb.resize) for p in pictures]


class _Strips(torch.utils.data.Dataset):
    def __init__(self, strips):
        self.strips = strips

    def __len__(self):
        return len(self.strips)

    def __getitem__(self, i):
        return self.strips[i]


@pytest.mark.parametrize("how", list(KEPT))
def test_a_copied_strip_keeps_its_pictures_size(bb, how):
    strips = _strips(bb)
    canvas, sizes = pad_images(strips)
    assert sizes == tuple(SIZES)
    copied, copied_sizes = pad_images([KEPT[how](x) for x in strips])
    assert copied_sizes == sizes and torch.equal(copied, canvas)
    assert type(canvas) is torch.Tensor and type(copied) is torch.Tensor   # (the batch: a plain tensor)


def test_strips_from_loader_workers_keep_their_sizes(llava_next):
    strips = _strips(llava_next)
    loader = DataLoader(_Strips(strips), batch_size=len(strips), num_workers=1, collate_fn=list)
    assert pad_images(next(iter(loader)))[1] == tuple(SIZES)


@pytest.mark.parametrize("how", list(LOST))
def test_a_strip_that_lost_its_size_is_refused_by_name(bb, how):
    strips = _strips(bb)
    shape = re.escape(str(tuple(strips[0].shape)))
    with pytest.raises(ValueError, match=rf"{shape} lost its picture's original size.*with_size"):
        pad_images([LOST[how](x) for x in strips])


def test_cloned_strips_give_the_same_tokens_and_loss(llava_next):
    bb = llava_next
    strips = _strips(bb)[:2]

    def loss(images):
        canvas, sizes = pad_images(images)
        batch = bb.lm_collator()([f"{bb.image_token} caption:"] * 2, ["a b", "c d"], image_sizes=list(sizes))
        tokens = (batch["input_ids"] == bb.image_token_id).sum(1).tolist()
        with torch.no_grad():
            out = bb.lm_loss(bb.preprocess_uint8(canvas), batch["input_ids"], batch["attention_mask"],
                             batch["labels"], image_sizes=list(sizes))
        return tokens, out

    tokens, want = loss(strips)
    assert tokens == [34, 40]
    cloned_tokens, got = loss([x.clone() for x in strips])
    assert cloned_tokens == tokens and torch.equal(got, want)


def test_stacked_strips_reach_the_model_as_a_plain_tensor():
    """Strips of one shape stacked by hand (sizes passed as image_sizes=) went through preprocess_uint8 as a SizedStrip:
    every op of the model's forward then ran through its Python __torch_function__ (tiny OneVision generate 1.39 s
    instead of 1.12 s), and each output was a SizedStrip too."""
    from mtl_lora_vl.data.anyres import AnyresGeometry, SizedStrip, anyres_views

    geo = AnyresGeometry(tile=32, pinpoints=((32, 64), (64, 32), (64, 64)), grid=4, view_tokens=16)
    rng = np.random.default_rng(0)
    strips = [anyres_views(Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)), geo) for _ in range(2)]
    stacked = torch.stack(strips)
    assert isinstance(stacked, SizedStrip)   # (the premise)
    x = load_backbone("builtin").preprocess_uint8(stacked)
    assert type(x) is torch.Tensor and type(torch.nn.functional.conv2d(x, torch.ones(1, 3, 1, 1))) is torch.Tensor
