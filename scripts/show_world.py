#!/usr/bin/env python
"""Draw a PNG grid of built-in-world samples: images with their captions, questions, answers and labels.

    python scripts/show_world.py --out assets/world_samples.png

One row per task kind (pretrain, retrieval, VQA, classification, nlvr); each panel shows the rendered scene (nlvr:
the left and the right scene side by side) and the texts that come with it, so a reader can see what each task asks
of the model.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:   # _parse_checks.py beside this script (loaded from elsewhere too)
    sys.path.insert(0, str(HERE))

from _parse_checks import Parser  # noqa: E402


def _panels(per_row: int, seed: int) -> list[tuple[str, list[tuple[object, str]]]]:
    from collections import Counter

    from mtl_lora_vl.data import world

    rows = []
    pre = world.build_split("pretrain", "train", n=per_row, seed=seed)
    rows.append(("pretrain", [(ex.image, "\n".join(f"• {c}" for c in ex.captions[:4])) for ex in pre.examples]))

    ret = world.build_split("retrieval", "test", n=per_row, seed=seed)
    rows.append(("retrieval / captioning", [(ex.image, "\n".join(f"• {c}" for c in ex.captions))
                                            for ex in ret.examples]))

    vqa = world.build_split("vqa", "test", n=per_row, seed=seed)
    by_scene: dict[str, list] = {}
    for ex in vqa.examples:
        by_scene.setdefault(ex.image_id, []).append(ex)
    panels = []
    for exs in list(by_scene.values())[:per_row]:
        lines = []
        for ex in exs:
            counts = Counter(ex.answers).most_common()
            answers = ", ".join(f"{a}×{n}" if n > 1 else a for a, n in counts)
            lines.append(f"[{ex.question_type}] {ex.text}\n   → {answers}")
        panels.append((exs[0].image, "\n".join(lines)))
    rows.append(("vqa", panels))

    cls = world.build_split("classification", "test", n=per_row, seed=seed)
    names = cls.class_names or []
    rows.append(("classification (class = the large object)",
                 [(ex.image, f"label {ex.label}: “{names[ex.label]}”") for ex in cls.examples]))

    pairs = world.build_split("nlvr", "test", n=per_row, seed=seed)
    rows.append(("nlvr (a statement about the left and the right image)",
                 [(ex.image, f"[{ex.question_type}] {ex.text}\n   → {ex.meta['label_name']}")
                  for ex in pairs.examples]))
    return rows


def _picture(scene: object, size: int):
    """The rendered scene as an array; a pair (nlvr) side by side, a white gap between."""
    import numpy as np

    from mtl_lora_vl.data.images import load_image

    if not isinstance(scene, tuple):
        return np.asarray(load_image(scene, size))
    gap = np.full((size, max(2, size // 12), 3), 255, dtype=np.uint8)
    parts = [np.asarray(load_image(s, size)) for s in scene]
    return np.concatenate([x for p in parts for x in (p, gap)][:-1], axis=1)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "assets" / "world_samples.png"),
                    help="PNG file to write (default: the repository's assets/world_samples.png)")
    ap.add_argument("--per-row", type=int, default=4, help="samples per task kind (default: %(default)s)")
    ap.add_argument("--size", type=int, default=96, help="rendered image side in pixels (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="world seed (default: %(default)s)")
    ap.add_argument("--dpi", type=int, default=80, help="figure resolution (default: %(default)s)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing --out file (the default path, the repository's picture, always is)")
    args = ap.parse_args(argv)
    if args.per_row < 1 or args.size < 8 or args.dpi < 1:
        ap.error("--per-row must be >= 1, --size >= 8 and --dpi >= 1")
    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".png" or out.is_dir():
        ap.error(f"--out {out}: give a .png file path")
    default = out.resolve() == (REPO / "assets" / "world_samples.png").resolve()
    if out.exists() and not (args.overwrite or default):   # a picture of the user's
        ap.error(f"--out {out} exists; pass --overwrite to replace it, or choose another path")
    from mtl_lora_vl.io.atomic import atomic_file, check_writable_file

    try:   # before drawing, not as a traceback after it
        check_writable_file(out, "--out")
    except OSError as e:
        ap.error(str(e))

    # the object API: no pyplot, no backend switch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _panels(args.per_row, args.seed)
    fig = Figure(figsize=(3.9 * args.per_row, 4.6 * len(rows)))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2 * len(rows), args.per_row, height_ratios=[1.0, 0.72] * len(rows),
                            left=0.02, right=0.98, top=0.98, bottom=0.01, wspace=0.08, hspace=0.12)
    for r, (title, panels) in enumerate(rows):
        for c, (scene, text) in enumerate(panels[: args.per_row]):
            ax = fig.add_subplot(grid[2 * r, c])
            ax.imshow(_picture(scene, args.size), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(title, fontsize=12, loc="left", fontweight="bold")
            tx = fig.add_subplot(grid[2 * r + 1, c])
            tx.axis("off")
            wrapped = "\n".join(textwrap.fill(line, 40, subsequent_indent="   ") for line in text.split("\n"))
            tx.text(0.0, 1.0, wrapped, va="top", ha="left", fontsize=9, transform=tx.transAxes)
    with atomic_file(out, overwrite=True, what="--out") as tmp:   # an interrupted write keeps the old image
        fig.savefig(tmp, dpi=args.dpi, format="png")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
