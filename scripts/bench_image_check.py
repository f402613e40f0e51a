"""Cost per image of the read-time image checks (mtl_lora_vl.data.images.verify_image), one process.

    python scripts/bench_image_check.py [--size 640x480] [--n 200]

Writes a photo-like JPEG and PNG of the given size to a temporary folder and times, per image:
existence only (``verify = false``), the old header-only check (open + format ``verify()``), the
default check (that plus the end-marker look), the full check (``verify = "decode"``: JPEGs decoded
at 1/8 scale), a plain full-size decode, and, for reference, the loader's own decode to 224 px.
Timings are interleaved (one round of every method, repeated) and reported as medians.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:   # the timing run's module beside this script (loaded from elsewhere too)
    sys.path.insert(0, str(HERE))

from _parse_checks import Parser  # noqa: E402


def main() -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="640x480", help="WxH of the test images (default 640x480, COCO-like)")
    ap.add_argument("--n", type=int, default=200, help="rounds (default 200)")
    args = ap.parse_args()
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size {args.size!r}: give WxH, e.g. 640x480")
    if w < 1 or h < 1 or args.n < 1:
        ap.error(f"--size needs both sides >= 1 and --n >= 1, got {args.size} and {args.n}")
    # the run's imports (numpy, PIL, the package's image code and torch) only once the options are read
    from _image_check_timing import run

    run(w, h, args.n)


if __name__ == "__main__":
    main()
