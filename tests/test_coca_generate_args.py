"""CoCa ``generate`` takes whole numbers for ``max_len`` and ``beam_size``, as the LLaVA-style backbone does: a
fractional ``max_len`` was cut (2.5 gave two-word captions) and ``beam_size=2.0`` failed inside torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vl_tiny import tiny_backbone


@pytest.fixture(scope="module")
def coca(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("coca"), coca=True)


@pytest.mark.parametrize(("kw", "message"), [
    (dict(max_len=2.5), "max_len must be an integer >= 1, got 2.5"),
    (dict(max_len=0.5), "max_len must be an integer >= 1, got 0.5"),
    (dict(beam_size=2.5), "beam_size must be an integer >= 1, got 2.5"),
    (dict(beam_size=True), "beam_size must be an integer >= 1, got True"),
    (dict(beam_size=0), "beam_size must be an integer >= 1, got 0"),
])
def test_coca_generate_refuses_what_is_not_a_whole_number(coca, kw, message):
    with pytest.raises(ValueError, match=message):
        coca.generate(torch.randn(2, 3, 32, 32), **kw)


def test_coca_generate_takes_whole_floats_and_numpy_integers_as_their_integers(coca):
    images = torch.randn(2, 3, 32, 32)
    want = coca.generate(images, max_len=3, beam_size=2)
    assert coca.generate(images, max_len=3.0, beam_size=2.0) == want
    assert coca.generate(images, max_len=np.int64(3), beam_size=np.int64(2)) == want
