"""When no image of a task decodes, the error says why -- also for a task of one example, whose row has no other
row to try (the reason used to be only in a warning logged, with workers, from another process)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mtl_lora_vl.data.fallback import ImageFallback
from mtl_lora_vl.data.images import ImageError
from mtl_lora_vl.data.records import Example


def test_a_one_example_task_whose_image_fails_says_why(tmp_path):
    path = tmp_path / "only.jpg"
    Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:300])
    images = ImageFallback("t", [Example(str(path), "only-row")], 16)
    with pytest.raises(ImageError, match=r"no image of its 1 example\(s\) can be decoded \(example 'only-row': "
                                         r".*only\.jpg; last error: example 'only-row': image .*only\.jpg: .*OSError"):
        images.decode(0)
