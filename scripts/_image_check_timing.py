"""The timing run of ``scripts/bench_image_check.py``: its test images, the methods it times and the table it prints.

Imported by that script once its options are read, so ``--help`` and an option error import neither numpy, PIL
nor the package's image code (torch).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:   # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from mtl_lora_vl.data.images import to_uint8_tensor, verify_image  # noqa: E402


def photo_like(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 / w, y * 255 / h, (x + y) % 256], -1) + rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def header_only(path: Path) -> None:
    with Image.open(path) as img:
        img.verify()


def full_decode(path: Path) -> None:
    with Image.open(path) as img:
        img.load()


def run(w: int, h: int, n: int) -> None:
    """Time every method on a ``w`` x ``h`` JPEG and PNG, ``n`` interleaved rounds; print the medians."""
    methods = {
        "exists (verify=false)": lambda p: p.is_file(),
        "header + verify() (old)": header_only,
        "default (verify=true)": verify_image,
        'decode (verify="decode")': lambda p: verify_image(p, decode=True),
        "full-size decode": full_decode,
        "loader decode to 224": lambda p: to_uint8_tensor(p, 224),
    }
    with tempfile.TemporaryDirectory() as tmp:
        img = photo_like(w, h)
        files = {"JPEG q90": Path(tmp) / "a.jpg", "PNG": Path(tmp) / "a.png"}
        img.save(files["JPEG q90"], quality=90)
        img.save(files["PNG"])
        for label, path in files.items():
            times: dict[str, list[float]] = {m: [] for m in methods}
            for _ in range(n):
                for name, fn in methods.items():
                    t = time.perf_counter()
                    fn(path)
                    times[name].append(time.perf_counter() - t)
            print(f"{label} {w}x{h}, {path.stat().st_size / 1024:.0f} KiB: median ms per image")
            for name, ts in times.items():
                print(f"  {name:28s} {statistics.median(ts) * 1e3:8.3f}")
