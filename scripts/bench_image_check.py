"""Cost per image of the read-time image checks (mtl_lora_vl.data.images.verify_image), one process.

    python scripts/bench_image_check.py [--size 640x480] [--n 200]

Writes a photo-like JPEG and PNG of the given size to a temporary folder and times, per image:
existence only (``verify = false``), the old header-only check (open + format ``verify()``), the
default check (that plus the end-marker look), the full check (``verify = "decode"``: JPEGs decoded
at 1/8 scale), a plain full-size decode, and, for reference, the loader's own decode to 224 px.
Timings are interleaved (one round of every method, repeated) and reported as medians.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="640x480", help="WxH of the test images (default 640x480, COCO-like)")
    ap.add_argument("--n", type=int, default=200, help="rounds (default 200)")
    args = ap.parse_args()
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size {args.size!r}: give WxH, e.g. 640x480")
    if w < 1 or h < 1 or args.n < 1:
        ap.error(f"--size needs both sides >= 1 and --n >= 1, got {args.size} and {args.n}")
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
            for _ in range(args.n):
                for name, fn in methods.items():
                    t = time.perf_counter()
                    fn(path)
                    times[name].append(time.perf_counter() - t)
            print(f"{label} {w}x{h}, {path.stat().st_size / 1024:.0f} KiB: median ms per image")
            for name, ts in times.items():
                print(f"  {name:28s} {statistics.median(ts) * 1e3:8.3f}")


if __name__ == "__main__":
    main()
