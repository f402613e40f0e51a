"""``python tests/broken_images.py ARGS``: ``train_vl.py ARGS`` (for torchrun) where a quarter of vqa's images, by
image id, cannot be decoded: each rank replaces the rows it meets and warns about each file it finds broken."""

from __future__ import annotations

import sys
import zlib

from mtl_lora_vl.cli import train_main
from mtl_lora_vl.data.fallback import ImageFallback
from mtl_lora_vl.data.images import ImageError

_decode = ImageFallback._decode


def broken(self: ImageFallback, index: int):
    if self.task == "vqa" and zlib.crc32(str(self.examples[index].image_id).encode()) % 4 == 0:
        raise ImageError(f"example {index}: cannot be decoded (test)")
    return _decode(self, index)


if __name__ == "__main__":
    ImageFallback._decode = broken
    sys.exit(train_main(sys.argv[1:]))
