"""CoCa ``generate`` on a batch of no images is refused by name (it failed inside torch's image tower: "cannot
reshape tensor of 0 elements"), as the LLaVA-style path refuses no prompts."""

from __future__ import annotations

import pytest
import torch
from vl_tiny import tiny_backbone


@pytest.mark.parametrize("beam_size", [1, 2])
def test_coca_generate_refuses_no_images(tmp_path, beam_size):
    coca = tiny_backbone(tmp_path, coca=True)
    with pytest.raises(ValueError, match=r"generate: no images \(a batch of shape \(0, 3, 32, 32\)\); backbone "
                                         r"'tiny-coca' \(CoCa\) writes one caption per image: pass at least one"):
        coca.generate(torch.randn(0, 3, 32, 32), beam_size=beam_size)
    assert len(coca.generate(torch.randn(1, 3, 32, 32), max_len=2, beam_size=beam_size)) == 1
