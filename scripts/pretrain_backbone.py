#!/usr/bin/env python
"""Pretrain the built-in backbone: a ~1.7 M-parameter open_clip CLIP on the built-in world.

    python scripts/pretrain_backbone.py                 # 8-25 minutes on 2 CPU cores (the committed asset: 24)
    python scripts/pretrain_backbone.py --steps 50 --out /tmp/clip   # a quick try
    python scripts/pretrain_backbone.py --evaluate assets/builtin_clip   # re-score a saved backbone (seconds)

It renders the world's pretraining split once into an in-memory uint8 cache, builds a small word-level
tokenizer over the world's words plus a few hundred common English words, trains both towers with the
symmetric InfoNCE loss of the retrieval task (AdamW, the package's warm-up + cosine schedule, fp32), then writes
``assets/builtin_clip/``:
``open_clip_config.json``, ``model.safetensors`` (fp16; loaded back as fp32), ``tokenizer.json`` and
``tokenizer_config.json``. It ends by printing zero-shot scores on the world's retrieval and
classification validation splits next to chance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:   # _parse_checks.py beside this script (loaded from elsewhere too)
    sys.path.insert(0, str(HERE))

from _parse_checks import Parser, at_least  # noqa: E402

#: A batch of one pair: every InfoNCE gradient is 0 (checked as it is parsed, before torch is imported).
TWO_PAIRS = at_least(2, "{flag} must be >= 2 (a contrastive batch needs two pairs), got {value}")


def build_parser() -> argparse.ArgumentParser:
    """The options, read before torch is imported (below): ``--help`` and a mistyped flag answer at once."""
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=700, help="optimizer steps (default 700: 8-25 minutes on 2 CPU cores; "
                                                           "the committed asset took 24)", **at_least(1))
    ap.add_argument("--batch-size", type=int, default=128, help="pairs per step (default 128)", **TWO_PAIRS)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    ap.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices (default 0.1)")
    ap.add_argument("--n-pretrain", type=int, default=None, help="pretraining pairs (default: the world's split)",
                    **TWO_PAIRS)
    ap.add_argument("--seed", type=int, default=None,
                    help="world and training seed (default 0; with --evaluate, the one the backbone was trained with)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)",
                    **at_least(1))   # --evaluate too: torch's own error otherwise
    ap.add_argument("--out", type=Path, default=REPO / "assets" / "builtin_clip",
                    help="where to write the backbone (default assets/builtin_clip)")
    ap.add_argument("--evaluate", type=Path, default=None, metavar="DIR",
                    help="only score a saved backbone on the val splits and update its recorded zero-shot scores")
    return ap


if __name__ == "__main__":   # --help and an option error answer here, before the imports below (torch: seconds)
    build_parser().parse_args()

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from mtl_lora_vl.backbones import (  # noqa: E402
    Backbone,
    WordTokenizer,  # noqa: E402
    build_open_clip,
    build_word_tokenizer,
)
from mtl_lora_vl.data import world  # noqa: E402
from mtl_lora_vl.data.images import stack_uint8  # noqa: E402
from mtl_lora_vl.families import OPEN_CLIP_CONFIG  # noqa: E402
from mtl_lora_vl.io.atomic import atomic_dir, atomic_file, check_asset_dir  # noqa: E402
from mtl_lora_vl.metrics import retrieval_recall  # noqa: E402
from mtl_lora_vl.tasks.retrieval import infonce  # noqa: E402
from mtl_lora_vl.training.schedule import cosine_with_warmup  # noqa: E402

IMAGE_SIZE = 64
#: What the script writes in --out; an earlier output holding anything else is not replaced.
CLIP_FILES = (OPEN_CLIP_CONFIG, "model.safetensors", "tokenizer.json", "tokenizer_config.json")
TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.")

# Common English words, so that prompts a user types are not all <unk>.
COMMON_WORDS = """
a an the this that these those there here it its is are was were be been being am do does did done has have
had having will would can could shall should may might must not no yes and or but if then than so because
as of at by for from in into on onto off out over under up down with without about above below between
behind beside near next to through across around along against among before after during while until
since again once twice also only just very too more most less least much many few several some any all
each every both either neither other another such same different own what which who whom whose where
when why how i you he she we they me him her us them my your his our their mine yours one two three four
five six seven eight nine ten eleven twelve zero first second third last number numbers none nothing
something everything anything thing things object objects shape shapes item items picture pictures
photo photos image images scene scenes view drawing painting background foreground top bottom left right
middle center centre corner side edge upper lower front back inside outside near far big small large
little tiny huge long short tall wide narrow thin thick round flat bright dark light pale deep colour
color colours colors coloured colored red green blue yellow orange purple pink brown black white gray
grey cyan magenta violet gold silver circle circles square squares triangle triangles rectangle
rectangles star stars cross crosses diamond diamonds heart hearts ring rings dot dots line lines box
boxes ball balls block blocks cube cubes disk disks oval ovals hexagon hexagons pentagon pentagons
cat dog bird fish horse car bus truck plane boat train bike tree flower house person man woman child
people animal table chair cup bottle book phone computer window door road street sky sun moon water
grass sea river mountain city room kitchen food apple banana orange pizza cake how many count counting
show shows showing shown contain contains containing contained see seen look looks looking appear appears
located placed sitting standing lying find found make made take give get go come put set turn move
question answer caption describe description class category label kind type example sample true false
correct wrong same left-most right-most leftmost rightmost highest lowest closest nearest farthest
alone together pair pairs group row column grid empty full half whole part parts piece pieces
""".split()


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def clip_config(vocab_size: int, context_length: int, width: int = 128, layers: int = 4,
                embed_dim: int = 128, image_size: int = IMAGE_SIZE, patch_size: int = 8,
                mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25)) -> dict:
    """The built-in backbone's open_clip config: ViT and text transformer of ``layers`` x ``width``,
    text pooled at the word tokenizer's ``<eot>`` (id 2) instead of at the highest token id."""
    heads = max(1, width // 32)
    return {
        "model_cfg": {
            "embed_dim": embed_dim,
            "vision_cfg": {"image_size": image_size, "patch_size": patch_size, "width": width,
                           "layers": layers, "head_width": width // heads, "mlp_ratio": 4.0},
            "text_cfg": {"context_length": context_length, "vocab_size": vocab_size, "width": width,
                         "heads": heads, "layers": layers, "mlp_ratio": 4.0, "pad_id": 0,
                         "eos_id": 2, "pool_type": "eos", "hf_tokenizer_name": "builtin_clip"},
        },
        "preprocess_cfg": {"size": image_size, "mean": [float(m) for m in mean],
                           "std": [float(s) for s in std], "interpolation": "bilinear",
                           "resize_mode": "squash"},
    }


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def train_clip(bb: Backbone, images: torch.Tensor, caption_tokens: torch.Tensor,
               image_captions: Sequence[Sequence[int]], *, steps: int, batch_size: int = 128, lr: float = 1e-3,
               weight_decay: float = 0.1, warmup: int | None = None, seed: int = 0, log_every: int = 25,
               log: Callable[[str], None] = print) -> list[float]:
    """Contrastive pretraining of ``bb.model`` (in place) on cached uint8 ``images``.

    ``caption_tokens`` holds each distinct caption once (``(U, L)``); ``image_captions[i]`` lists the
    rows of image ``i``'s true captions. Each step draws ``batch_size`` distinct images and one of each
    image's captions at random. Returns the per-step losses.
    """
    n = images.shape[0]
    if len(image_captions) != n or any(len(c) == 0 for c in image_captions):
        raise ValueError(f"image_captions must list at least one caption row for each of the {n} images")
    counts = torch.tensor([len(c) for c in image_captions])
    table = torch.zeros((n, int(counts.max())), dtype=torch.long)
    for i, caps in enumerate(image_captions):
        table[i, : len(caps)] = torch.tensor(list(caps), dtype=torch.long)
    if int(table.max()) >= caption_tokens.shape[0]:
        raise ValueError(f"image_captions refers to caption row {int(table.max())} but caption_tokens has "
                         f"{caption_tokens.shape[0]} rows")
    model = bb.model
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, steps // 20) if warmup is None else max(1, warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(warmup, steps, floor=0.05))
    gen = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, n)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randperm(n, generator=gen)[:batch_size]
        pick = (torch.rand(batch_size, generator=gen) * counts[idx]).long()
        text_ids = table[idx, pick]
        img = bb.encode_image(bb.preprocess_uint8(images[idx], torch.float32))
        txt = bb.encode_text(caption_tokens[text_ids])
        own = table[idx]                                   # (B, C) caption rows true of each image
        valid = torch.arange(own.shape[1]).unsqueeze(0) < counts[idx].unsqueeze(1)
        pos = ((own.unsqueeze(1) == text_ids.view(1, -1, 1)) & valid.unsqueeze(1)).any(dim=2)
        pos |= torch.eye(batch_size, dtype=torch.bool)   # caption j is true of image i: several positives
        loss = infonce(bb.logit_scale * img @ txt.t(), pos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            el = time.perf_counter() - t0
            recent = losses[-log_every:]
            log(f"step {step + 1}/{steps}  loss {sum(recent) / len(recent):.3f}  "
                f"scale {bb.logit_scale.item():.1f}  {el / (step + 1):.2f} s/step  {el:.0f}s")
    model.eval()
    return losses


# --------------------------------------------------------------------------------------------------
# Zero-shot evaluation (simple, self-contained versions of the task metrics)
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def embed_images(bb: Backbone, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    out = [bb.encode_image(bb.preprocess_uint8(images[i:i + batch], torch.float32))
           for i in range(0, images.shape[0], batch)]
    return torch.cat(out)


@torch.no_grad()
def embed_texts(bb: Backbone, texts: Sequence[str], batch: int = 512) -> torch.Tensor:
    out = [bb.encode_text(bb.tokenizer(list(texts[i:i + batch]))) for i in range(0, len(texts), batch)]
    return torch.cat(out)


def image_to_text_recall(img: torch.Tensor, txt: torch.Tensor, owner: torch.Tensor,
                         ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image->text recall@k (:func:`mtl_lora_vl.metrics.retrieval_recall`): an image scores a hit when
    one of its own captions (``owner[j]`` is caption j's image) is among its top k."""
    r = retrieval_recall(img @ txt.t(), owner, ks=ks)
    return {f"r@{k}": r[f"i2t_r{k}"] for k in ks}


def chance_recall(owner: torch.Tensor, n_images: int, k: int) -> float:
    """Expected recall@k of a random ranking (mean over images of 1 - C(T-c, k)/C(T, k))."""
    total = owner.numel()
    counts = torch.bincount(owner, minlength=n_images).tolist()
    vals = []
    for c in counts:
        miss = 1.0
        for j in range(min(k, total)):
            miss *= max(0.0, (total - c - j) / (total - j))
        vals.append(1.0 - miss)
    return sum(vals) / len(vals)


# --------------------------------------------------------------------------------------------------
# The built-in world
# --------------------------------------------------------------------------------------------------


def render_cache(examples: Sequence, size: int, log: Callable[[str], None] = print) -> torch.Tensor:
    """Render every example's scene once into a ``(N, 3, size, size)`` uint8 tensor."""
    t0 = time.perf_counter()
    out = stack_uint8([ex.image for ex in examples], size)
    log(f"rendered {len(examples)} images in {time.perf_counter() - t0:.1f}s")
    return out


def zero_shot_report(bb: Backbone, seed: int, log: Callable[[str], None] = print) -> dict:
    """Zero-shot retrieval (val recall@1/5 image->text) and classification (val accuracy) with chance."""
    report: dict = {}
    ret = world.build_split("retrieval", "val", seed=seed)
    seen: dict[str, int] = {}
    scenes, caps, owner = [], [], []
    for ex in ret.examples:
        if ex.image_id not in seen:
            seen[ex.image_id] = len(scenes)
            scenes.append(ex)
            for c in (ex.captions or (ex.text,)):
                caps.append(c)
                owner.append(seen[ex.image_id])
    owner_t = torch.tensor(owner)
    img = embed_images(bb, render_cache(scenes, bb.image_size, log=lambda _m: None))
    txt = embed_texts(bb, caps)
    r = image_to_text_recall(img, txt, owner_t)
    report["retrieval"] = {**r, "chance_r@1": chance_recall(owner_t, len(scenes), 1),
                           "chance_r@5": chance_recall(owner_t, len(scenes), 5),
                           "images": len(scenes), "captions": len(caps)}

    cls = world.build_split("classification", "val", seed=seed)
    names = cls.class_names or []
    prompts = [TEMPLATES[0].format(n) for n in names]
    img = embed_images(bb, render_cache(cls.examples, bb.image_size, log=lambda _m: None))
    txt = embed_texts(bb, prompts)
    pred = (img @ txt.t()).argmax(dim=1)
    labels = torch.tensor([ex.label for ex in cls.examples])
    report["classification"] = {"accuracy": float((pred == labels).float().mean()),
                                "chance": 1.0 / max(1, len(names)), "classes": len(names),
                                "images": len(cls.examples)}
    for task, vals in report.items():
        log(f"zero-shot {task}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in vals.items()))
    return report


# --------------------------------------------------------------------------------------------------
# Writing the assets
# --------------------------------------------------------------------------------------------------


def save_assets(bb: Backbone, config: dict, tokenizer_dir: Path, out: Path, meta: dict) -> dict[str, int]:
    """Write config, fp16 weights and tokenizer files as the folder ``out``, all at once (a temporary folder
    renamed into place: an interrupted save never leaves new weights beside an old config and tokenizer)."""
    check_asset_dir(out, OPEN_CLIP_CONFIG, "pretrain", "--out", own=CLIP_FILES)
    state = {k: v.detach().to(torch.float16).contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in bb.model.state_dict().items()}
    with atomic_dir(out, overwrite=True, what="--out") as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "dtype": "float16"})
        (tmp / OPEN_CLIP_CONFIG).write_text(json.dumps({**config, "pretrain": meta}, indent=2) + "\n")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (tmp / name).write_bytes((tokenizer_dir / name).read_bytes())
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
    return {p.name: p.stat().st_size for p in sorted(out.iterdir()) if not p.name.startswith(".")}


def image_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units."""
    x = images[: min(4096, images.shape[0])].float().div(255)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()


def evaluate_saved(path: Path, seed: int | None) -> int:
    """Score a saved backbone as it loads for users (``open_clip:DIR``) and, in a folder this script wrote, store
    the scores in its config's ``pretrain`` record (the world's val splits change with the world's code): on the
    val splits of the seed it was pretrained with unless ``seed`` says another (then they are only printed)."""
    from mtl_lora_vl.backbones.loading import load_backbone

    config_path = path / OPEN_CLIP_CONFIG
    config = json.loads(config_path.read_text())
    record = config.get("pretrain")
    trained_with = record.get("seed", 0) if isinstance(record, dict) else 0
    report = zero_shot_report(load_backbone(f"open_clip:{path}"), trained_with if seed is None else seed)
    if not isinstance(record, dict):   # not this script's: marking it would let --out replace it
        print(f"not stored: {config_path} has no 'pretrain' record (it is not a backbone this script wrote)")
        return 0
    if seed is not None and seed != trained_with:
        print(f"not stored: scored on seed {seed}'s val splits; {config_path} records a backbone of seed "
              f"{trained_with}")
        return 0
    record["zero_shot_val"] = report
    with atomic_file(config_path, overwrite=True, what=OPEN_CLIP_CONFIG) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.chmod(config_path, 0o644)
    print(f"updated {config_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)   # (--threads, --steps, --batch-size and --n-pretrain too low refused there)
    if args.evaluate is not None:
        ignored = sorted(f"--{k.replace('_', '-')}" for k, v in vars(args).items()   # parsed: abbreviations too
                         if k not in ("evaluate", "seed", "threads") and v != ap.get_default(k))
        if ignored:
            ap.error(f"--evaluate only scores a saved backbone; {', '.join(ignored)} would be ignored")
        if not (args.evaluate / OPEN_CLIP_CONFIG).is_file():
            ap.error(f"--evaluate {args.evaluate}: not a saved open_clip backbone (no {OPEN_CLIP_CONFIG})")
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        return evaluate_saved(args.evaluate, args.seed)
    args.seed = 0 if args.seed is None else args.seed
    if not (0 <= args.lr < math.inf and 0 <= args.weight_decay < math.inf):   # < 0: gradient ascent; inf: NaN
        ap.error(f"--lr and --weight-decay must be finite and >= 0, got {args.lr} and {args.weight_decay}")
    try:  # before training (minutes), not at the save
        check_asset_dir(args.out, OPEN_CLIP_CONFIG, "pretrain", "--out", own=CLIP_FILES)
    except OSError as e:
        ap.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    pre = world.build_split("pretrain", "train", n=args.n_pretrain, seed=args.seed)
    if not pre.examples or any(not ex.captions for ex in pre.examples):
        raise SystemExit("the world's pretraining split is empty or has examples without captions")
    captions = [c for ex in pre.examples for c in ex.captions]
    print(f"pretraining split: {len(pre.examples)} images")

    texts = world.all_texts(args.seed)
    templates = [t.format("x") for t in TEMPLATES]
    words = COMMON_WORDS + texts + captions + templates + [str(i) for i in range(21)]
    with tempfile.TemporaryDirectory() as tdir:
        build_word_tokenizer(words, tdir, context_length=77)
        probe = WordTokenizer(tdir, context_length=512)
        longest = max(len(probe.encode_words(t)) for t in texts + captions) + 2
        context_length = max(32, 8 * math.ceil((longest + 8) / 8))
        build_word_tokenizer(words, tdir, context_length=context_length)
        images = render_cache(pre.examples, IMAGE_SIZE)
        mean, std = image_stats(images)
        config = clip_config(probe.vocab_size, context_length, mean=mean, std=std)
        bb = build_open_clip(config, tokenizer_dir=tdir, name="builtin")
        n_params = sum(p.numel() for p in bb.model.parameters())
        print(f"vocabulary {probe.vocab_size} words, context {context_length} tokens, {n_params / 1e6:.2f} M params")

        uniq = {c: i for i, c in enumerate(dict.fromkeys(c for ex in pre.examples for c in ex.captions))}
        caption_tokens = bb.tokenizer(list(uniq))
        image_captions = [[uniq[c] for c in ex.captions] for ex in pre.examples]
        print(f"{len(uniq)} distinct captions, {sum(map(len, image_captions)) / len(image_captions):.1f} per image")
        t_train = time.perf_counter()
        losses = train_clip(bb, images, caption_tokens, image_captions, steps=args.steps, batch_size=args.batch_size,
                            lr=args.lr, weight_decay=args.weight_decay, seed=args.seed)
        train_s = time.perf_counter() - t_train
        print(f"trained {args.steps} steps in {train_s:.0f}s ({train_s / args.steps:.2f} s/step)")
        with torch.no_grad():  # score exactly what gets saved: fp16 weights loaded back as fp32
            for t in bb.model.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.half().float())
        report = zero_shot_report(bb, args.seed)
        meta = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
                "threads": args.threads, "seed": args.seed,
                "pairs": len(pre.examples), "final_loss": sum(losses[-25:]) / len(losses[-25:]),
                "train_seconds": round(train_s, 1), "zero_shot_val": report}
        sizes = save_assets(bb, config, Path(tdir), args.out, meta)
    total = sum(sizes.values())
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items())
          + f"; total {total / 1e6:.2f} MB")
    print(f"done in {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
