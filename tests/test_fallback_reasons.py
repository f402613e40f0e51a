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


@pytest.mark.parametrize("image", [None, 12, (Image.new("RGB", (8, 8)), None)])
def test_a_row_whose_image_is_of_no_image_type_is_named(image):
    """A reader's row with no image source (None, a number, in a pair too) raised load_image's TypeError, naming
    neither the task nor the row, out of a loader worker (the training step's error)."""
    rows = [Example(Image.new("RGB", (8, 8)), "a"), Example(image, "row-b")]
    with pytest.raises(TypeError, match=r"^task 't': example 'row-b': load_image: expected an image file path.*"
                                        r"got (NoneType|int)$"):
        ImageFallback("t", rows, 8).decode(1)
