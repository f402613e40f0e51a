#!/usr/bin/env python
"""Benchmark: CoCa caption generation with and without the KV cache, under a mixed-task route.

    python scripts/bench_generation.py                 # CPU, 1 thread, ~2 minutes
    python scripts/bench_generation.py --device cuda

An open_clip CoCa with a 6-layer, 512-wide text tower and decoder (coca_ViT-B-32's text side; a small
vision tower, random init) and MTL-LoRA on both towers captions 8 images, each row under its own task.
End of sequence is disabled so that every case decodes exactly ``--max-len`` tokens. Cases run
interleaved in one process; the script prints medians, the cached / uncached ratio, and whether both
paths produced the same captions (token ids compared: the decoder's 1000 ids are more than the word
tokenizer's, and decoded text would show every id past them as ``<unk>``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:   # _parse_checks.py beside this script (loaded from elsewhere too)
    sys.path.insert(0, str(HERE))

from _parse_checks import Parser, at_least  # noqa: E402

#: What a count below 1 is told (checked as it is parsed, before torch is imported).
POSITIVE = "{flag} must be at least 1, got {value}"


def build_parser() -> argparse.ArgumentParser:
    """The options, read before torch is imported (below): ``--help`` and a mistyped flag answer at once."""
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)",
                   **at_least(1, POSITIVE))
    p.add_argument("--images", type=int, default=8, help="images captioned per case, one row each (default 8)",
                   **at_least(1, POSITIVE))
    p.add_argument("--max-len", type=int, default=30, help="tokens decoded per caption (default 30)",
                   **at_least(1, POSITIVE))
    p.add_argument("--repeats", type=int, default=3,
                   help="timed rounds of every case after one warm-up round; medians are printed (default 3)",
                   **at_least(1, POSITIVE))
    return p


if __name__ == "__main__":   # --help and an option error answer here, before the imports below (torch: seconds)
    build_parser().parse_args()

import torch  # noqa: E402

import mtl_lora_vl as mlv  # noqa: E402
from mtl_lora_vl.backbones import build_open_clip, builtin_dir  # noqa: E402
from mtl_lora_vl.distributed import pick_device  # noqa: E402


def build(device: torch.device):
    """The CoCa (word tokenizer of the built-in CLIP), adapted for three tasks."""
    vocab, ctx = 1000, 76
    text = {"context_length": ctx, "vocab_size": vocab, "width": 512, "heads": 8, "layers": 6}
    cfg = {"embed_dim": 512, "custom_text": True,
           "vision_cfg": {"image_size": 64, "layers": 4, "width": 256, "patch_size": 16, "head_width": 64,
                          "attentional_pool": True, "attn_pooler_heads": 8, "output_tokens": True},
           "text_cfg": dict(text, embed_cls=True, output_tokens=True),
           "multimodal_cfg": dict(text, attn_pooler_heads=8)}
    torch.manual_seed(0)
    bb = build_open_clip(cfg, tokenizer_dir=builtin_dir(), name="coca-bench")
    torch.nn.init.normal_(bb.model.text_decoder.text_projection, std=512 ** -0.5)  # open_clip leaves it empty
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b", "c"], r=8))
    bb.model.to(device).eval()
    return bb


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)   # (counts below 1 refused there)
    try:
        device = pick_device(args.device)
    except RuntimeError as e:   # a bad name, or cuda without a GPU: said now, not from inside model.to()
        p.error(str(e))
    torch.set_num_threads(args.threads)
    bb = build(device)
    bb.eos_id = -1  # never stop early: every case decodes max_len tokens
    bb.decode = lambda row: tuple(int(t) for t in row)   # captions as token ids: compared exactly
    images = torch.randn(args.images, 3, 64, 64, device=device)
    ids = torch.arange(args.images, device=device) % 3
    cases = [(beams, cache) for beams in (1, 3) for cache in (False, True)]
    times: dict[tuple[int, bool], list[float]] = {c: [] for c in cases}
    captions: dict[tuple[int, bool], list[tuple[int, ...]]] = {}

    def decode(beams: int, cache: bool) -> list[tuple[int, ...]]:
        with mlv.route(bb.model, ids):
            return bb.generate(images, max_len=args.max_len, beam_size=beams, use_cache=cache)

    for case in cases:  # warm-up, untimed: no case pays for first calls
        decode(*case)
    for r in range(args.repeats):  # each round starts one case later, so no case always runs first
        for beams, cache in cases[r % len(cases):] + cases[:r % len(cases)]:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            captions[(beams, cache)] = decode(beams, cache)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[(beams, cache)].append(time.perf_counter() - t)
    print(f"CoCa (text 6 x 512) on {device}, {args.images} images under 3 tasks, {args.max_len} tokens, "
          f"{args.repeats} rotated rounds after a warm-up, {torch.get_num_threads()} threads")
    print(f"{'beams':<8}{'no cache s':>12}{'cache s':>10}{'ratio':>8}  same captions")
    for beams in (1, 3):
        plain, cached = statistics.median(times[(beams, False)]), statistics.median(times[(beams, True)])
        same = captions[(beams, False)] == captions[(beams, True)]
        print(f"{beams:<8}{plain:>12.2f}{cached:>10.2f}{cached / plain:>8.3f}  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
