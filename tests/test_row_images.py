"""One image per row under a mixed-task route, on every VLM family (adapters/row_images.py): the vision tower gets
the images without their rows and routes image i as row i, so a row with two images beside a row with none sent
the second image through the other row's task, silently (row 0 differed from its task alone by 0.57 on a tiny
LLaVA, 0.29 on a tiny Idefics3); now refused, whether the inputs come by keyword or by position."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llava, tiny_paligemma
from vlm_checks import perturb_adapters

import mtl_lora_vl as mlv


def _adapted(model):
    return perturb_adapters(mlv.attach(model.eval(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=4)))


def _rows(first: list[int], second: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(first), len(second))
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate((first, second)):   # left-padded
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    return ids, mask


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_two_images_in_one_row_and_none_in_the_other_are_refused(family):
    model = _adapted(tiny_llava() if family == "llava" else tiny_paligemma())
    image = [95] * 16
    ids, mask = _rows([1, 5, *image, *image, 7], [1, 9, 10, 11])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with mlv.route(model, [0, 1]), pytest.raises(mlv.RoutingError, match=r"one image per row; the rows hold "
                                                                               r"\[2, 0\] images"):
            model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        with mlv.route(model, [0, 1]), pytest.raises(mlv.RoutingError, match=r"\[2, 0\]"):
            model(ids, pixels, mask)   # by position: LLaVA's and PaliGemma's forward(input_ids, pixel_values, ...)
        with mlv.route(model, "a"):
            model(input_ids=ids, attention_mask=mask, pixel_values=pixels)   # one task: any layout
        one_each, mask1 = _rows([1, 5, *image, 7], [1, 9, *image, 10])
        with mlv.route(model, [0, 1]):
            model(input_ids=one_each, attention_mask=mask1, pixel_values=pixels)   # one image per row: routed


def test_idefics3_rows_are_counted_too():
    from idefics3_tiny import FAKE, GLOBAL, IMG, N_IMAGE, SIDE, tiny_idefics3

    model = _adapted(tiny_idefics3())
    image = [FAKE, GLOBAL, *[IMG] * N_IMAGE, FAKE]
    ids, mask = _rows([1, 5, *image, *image, 7], [1, 9, 10, 11])
    pixels = torch.zeros(2, 2, 3, SIDE, SIDE)   # row 0's two images; row 1's padding (all zero)
    pixels[0] = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad(), mlv.route(model, [0, 1]), pytest.raises(mlv.RoutingError, match=r"\[2, 0\] images"):
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
