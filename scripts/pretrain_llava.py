#!/usr/bin/env python
"""Pretrain the built-in tiny LLaVA: a Hugging Face ``LlavaForConditionalGeneration`` on the built-in world.

    python scripts/pretrain_llava.py --threads 2          # ~13 CPU-minutes (7 minutes on two threads; the asset's)
    python scripts/pretrain_llava.py --steps 20 --n-pretrain 200 --eval-scenes 20 --out /tmp/llava   # a quick try
    python scripts/pretrain_llava.py --evaluate assets/builtin_llava     # re-score a saved model
    python scripts/pretrain_llava.py --clip /tmp/clip --out /tmp/llava  # from a CLIP rebuilt by pretrain_backbone.py

The model is a CLIP vision tower (64 px, patch 8, 4 x 128: the built-in CLIP's image tower from
``assets/builtin_clip``, or ``--clip DIR``'s, mapped into ``CLIPVisionModel`` and kept frozen unless ``--vision-lr`` >
0; its last layer's 64 patch features feed the projector), LLaVA's two-layer projector and a small Llama language
model (3 x 160, tied embeddings) over a word-level vocabulary (the built-in CLIP's words plus every word of
the world's splits and of the prompts below). With the tower frozen its features are computed once, and a
step trains only the projector and the language model.

Training data come from the world's **pretraining split only**: each scene's simple captions and generic
questions about the same scene whose answers those captions state (colour, shape, count, existence and
position by default; several phrasings each). Relation questions ("is the red circle left of the blue
square?") are left out by default (``DEFAULT_KINDS``; ``--instruction-types`` chooses): the VQA task asks
them, so the built-in LLaVA meets one question type zero-shot that its instruction data never had, as real
VLMs meet a benchmark's own question types, and adaptation has that to learn (relations are still in the
captions). With every kind pretrained, the model left VQA no room at all (zero-shot 0.507, adapted 0.500 on
the LLaVA job's test questions). The VQA and captioning task splits are never trained on; they
are only read for the vocabulary and for the final zero-shot evaluation. A training row packs several
single-turn examples about one image behind one shared image prefix, so that the 64 image tokens are paid
for once per several supervised answers::

    <s> <image>*64 | question: what color is the circle? answer: red </s> | caption: a red circle </s> | ...

An attention mask lets each turn see only the prefix and itself, and its positions restart after the
prefix, so every turn is trained exactly as the single-turn prompt it is at inference and no turn can read
another's answer. The loss covers only answer and caption tokens and their ``</s>`` (labels -100 on
prompts and padding).

At inference a prompt is one turn (the fixed prompt format, see ``PROMPTS``)::

    "<image> question: {question} answer:"        "<image> caption:"

The processor expands ``<image>`` to the 64 image tokens and adds ``<s>``; generation stops at ``</s>``.

The script ends with greedy zero-shot generation on the world's ``vqa`` and ``captioning`` val splits
(VQA accuracy overall and per question type, next to chance and a per-type majority answer; BLEU-4 and
CIDEr, next to a constant caption and to the model's own captions of other images), then writes
``assets/builtin_llava/``: ``config.json``, ``generation_config.json``, ``model.safetensors`` (fp16 on
disk; ``config.json`` says float32 so that ``from_pretrained`` loads fp32 on a CPU), the processor and
tokenizer files, and ``pretrain.json`` (settings, prompt format and the numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:   # _parse_checks.py beside this script (loaded from elsewhere too)
    sys.path.insert(0, str(HERE))

from _parse_checks import Parser, at_least, refusing  # noqa: E402

# the kinds' table, not the instructions' writer: the parser lists them without the world's renderer (PIL)
from mtl_lora_vl.data.instruction_kinds import DEFAULT_KINDS, INSTRUCTION_TYPES, KNOWN_KINDS, PHRASINGS  # noqa: E402,F401
from mtl_lora_vl.families import OPEN_CLIP_CONFIG  # noqa: E402
from mtl_lora_vl.training.schedule import cosine_with_warmup  # noqa: E402

IMAGE_SIZE = 64
PATCH_SIZE = 8
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2       # CLS dropped ("default" feature selection)
PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE)             # ids 0..4
PROMPTS = {"vqa": "<image> question: {question} answer:", "captioning": "<image> caption:"}
TURNS = {"vqa": "question: {question} answer:", "captioning": "caption:"}
CLIP_DIR = REPO / "assets" / "builtin_clip"
#: What --out may hold from an earlier run: the model's and processor's save_pretrained files (by transformers
#: version) and pretrain.json; an earlier output holding anything else is not replaced.
LLAVA_FILES = ("config.json", "generation_config.json", "model.safetensors", "pretrain.json", "processor_config.json",
               "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "chat_template.json", "chat_template.jinja")


def instruction_kinds(instruction_types: str) -> tuple[str, ...]:
    """The kinds ``--instruction-types`` names, in its order."""
    return tuple(k.strip() for k in instruction_types.split(",") if k.strip())


def unknown_kinds(flag: str, instruction_types: str) -> str | None:
    """What is wrong with ``--instruction-types`` (a kind not known, or none), or None: refused as it is parsed."""
    kinds = instruction_kinds(instruction_types)
    unknown = [k for k in kinds if k not in KNOWN_KINDS]
    if unknown or not kinds:
        return f"{flag}: unknown or no kinds {unknown}; choose from {','.join(KNOWN_KINDS)}"
    return None


def finite(flag: str, value: float) -> str | None:
    """A negative rate trains by gradient ascent; inf writes a NaN asset (refused as it is parsed)."""
    return None if 0 <= value < math.inf else f"{flag} must be finite and >= 0, got {value}"


def build_parser() -> argparse.ArgumentParser:
    """The options, read before torch is imported (below): ``--help`` and a mistyped flag answer at once."""
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=800, help="optimizer steps (default 800)", **at_least(1))
    ap.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)", **at_least(1))
    ap.add_argument("--turns", type=int, default=8, help="turns per image and step: one caption + "
                                                         "questions (default 8)", **at_least(1))
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of projector and LM (default 2e-3)",
                    **refusing(finite))
    ap.add_argument("--vision-lr", type=float, default=0.0,
                    help="peak learning rate of the vision tower; 0 (the default) keeps the built-in "
                         "CLIP's tower frozen", **refusing(finite))
    ap.add_argument("--instruction-types", default=",".join(DEFAULT_KINDS),
                    help="comma-separated kinds of generic question to pretrain on (default "
                         f"{','.join(DEFAULT_KINDS)}; known: {','.join(KNOWN_KINDS)})", **refusing(unknown_kinds))
    ap.add_argument("--feature-layer", type=int, default=-1,
                    help="vision tower layer whose patch features feed the projector (default -1, the last)")
    ap.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay on matrices (default 0.05)",
                    **refusing(finite))
    ap.add_argument("--hidden", type=int, default=160, help="language model width (default 160)", **at_least(1))
    ap.add_argument("--layers", type=int, default=3, help="language model layers (default 3)", **at_least(1))
    ap.add_argument("--heads", type=int, default=4, help="language model attention heads (default 4)", **at_least(1))
    ap.add_argument("--intermediate", type=int, default=448, help="language model MLP width (default 448)",
                    **at_least(1))
    ap.add_argument("--clip", type=Path, default=CLIP_DIR, metavar="DIR",
                    help="the open_clip CLIP whose image tower, words and image normalisation the LLaVA starts from "
                         "(default assets/builtin_clip; e.g. one rebuilt by pretrain_backbone.py --out DIR)")
    ap.add_argument("--no-clip-init", action="store_true",
                    help="start the vision tower from random weights (needs --vision-lr > 0 to train it)")
    ap.add_argument("--n-pretrain", type=int, default=None, help="pretraining scenes (default: the world's split)",
                    **at_least(1))
    ap.add_argument("--eval-scenes", type=int, default=None, help="val scenes to evaluate (default: all)",
                    **at_least(1))
    ap.add_argument("--eval-every", type=int, default=0,
                    help="also evaluate (on --eval-scenes) every this many steps while training "
                         "(default: only at the end)",
                    **at_least(0, "{flag} must be >= 0 (0: only at the end), got {value}"))
    ap.add_argument("--seed", type=int, default=None,
                    help="world and training seed (default 0; with --evaluate, the one the model was trained with)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)", **at_least(1))
    ap.add_argument("--out", type=Path, default=REPO / "assets" / "builtin_llava",
                    help="where to write the model (default assets/builtin_llava)")
    ap.add_argument("--evaluate", type=Path, default=None, metavar="DIR",
                    help="only evaluate a saved model directory on the val splits and update its pretrain.json")
    return ap


if __name__ == "__main__":   # --help and an option error answer here, before the imports below (torch: seconds)
    build_parser().parse_args()

import torch  # noqa: E402

from mtl_lora_vl.data import instructions, world  # noqa: E402
from mtl_lora_vl.io.atomic import atomic_dir, atomic_file, check_asset_dir  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Generic instructions from a pretraining scene
# --------------------------------------------------------------------------------------------------


def instruction_words() -> list[str]:
    """Every word the instructions and their turns can use."""
    return instructions.instruction_words() + list(TURNS.values())


def turns_about(ex, rng: random.Random, turns: int,
                kinds: Sequence[str] = INSTRUCTION_TYPES) -> list[tuple[str, str]]:
    """``turns`` (prompt, answer) turns about one pretraining example, in random order: one caption and
    distinct generic questions of ``kinds``, of distinct kinds as far as the scene allows."""
    kinds = list(kinds)
    rng.shuffle(kinds)
    out = [(TURNS["captioning"], rng.choice(ex.captions))]
    asked: set[str] = set()
    for kind in kinds * 3:          # every kind once first, then again while turns are left
        if len(out) >= turns:
            break
        qa = instructions.instruction(kind, ex.image, rng)
        if qa is not None and qa[0] not in asked:
            asked.add(qa[0])
            out.append((TURNS["vqa"].format(question=qa[0]), qa[1]))
    rng.shuffle(out)
    return out


# --------------------------------------------------------------------------------------------------
# Vocabulary, tokenizer and processor
# --------------------------------------------------------------------------------------------------


def clip_words(clip_dir: Path) -> list[str]:
    """The built-in CLIP's word vocabulary (its special tokens left out), so both built-ins read the same words."""
    path = clip_dir / "tokenizer.json"
    if not path.is_file():
        return []
    vocab = json.loads(path.read_text())["model"]["vocab"]
    return [w for w in vocab if not (w.startswith("<") and w.endswith(">"))]


def clip_vision_size(clip_dir: Path) -> tuple[int, int]:
    """(width, layers) of the image tower of the open_clip CLIP in ``clip_dir`` -- the LLaVA's vision tower gets its
    shape -- checking that its images, patches and heads are the ones this script builds; (128, 4), the built-in
    CLIP's, where the folder holds no config (--no-clip-init without a CLIP)."""
    path = clip_dir / OPEN_CLIP_CONFIG
    if not path.is_file():
        return 128, 4
    v = json.loads(path.read_text())["model_cfg"]["vision_cfg"]
    got = (v.get("image_size"), v.get("patch_size"), v.get("head_width", 64))
    if got != (IMAGE_SIZE, PATCH_SIZE, 32):
        raise ValueError(f"--clip {clip_dir}: its image tower takes {got[0]} px images in {got[1]} px patches with "
                         f"{got[2]}-wide heads; this script builds the LLaVA's for {IMAGE_SIZE} px, {PATCH_SIZE} px "
                         "patches and 32-wide heads (the built-in CLIP's): give a CLIP made by pretrain_backbone.py")
    return int(v["width"]), int(v["layers"])


def build_tokenizer(words: Sequence[str], model_max_length: int):
    """A word-level ``PreTrainedTokenizerFast``: ``<pad> <s> </s> <unk> <image>`` (ids 0-4), then the sorted
    distinct lower-cased words. Text is NFD-normalised, accent-stripped, lower-cased and split at whitespace
    and punctuation; ``<s>`` is prepended (no ``</s>``: prompts are continued by generation); decoding joins
    words with spaces. Padding on the left, for batched generation."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    pre = pre_tokenizers.Whitespace()
    found = {piece for w in words for piece, _ in pre.pre_tokenize_str(normalizer.normalize_str(str(w))) if piece}
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in sorted(found - set(SPECIAL_TOKENS)):
        vocab[w] = len(vocab)
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)   # joins words with single spaces
    tok.post_processor = TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                            special_tokens=[(BOS, vocab[BOS])])
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE}, model_max_length=model_max_length,
        padding_side="left", clean_up_tokenization_spaces=False)


def build_processor(tokenizer, mean: Sequence[float], std: Sequence[float]):
    """LlavaProcessor: CLIP image processing at 64 px with the built-in CLIP's mean/std, ``<image>`` expanded to
    (64/8)^2 + 1 - 1 = 64 tokens (the CLS feature is dropped by the "default" feature selection)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": IMAGE_SIZE}, resample=3, do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[float(m) for m in mean], image_std=[float(s) for s in std],
        do_convert_rgb=True)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          image_token=IMAGE)


def clip_mean_std(clip_dir: Path) -> tuple[list[float], list[float]]:
    """The built-in CLIP's normalisation (its preprocess_cfg), or the rendered images' statistics' usual values."""
    path = clip_dir / OPEN_CLIP_CONFIG
    if path.is_file():
        cfg = json.loads(path.read_text())["preprocess_cfg"]
        return list(cfg["mean"]), list(cfg["std"])
    return [0.934, 0.926, 0.923], [0.121, 0.127, 0.136]


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def build_model(vocab_size: int, *, hidden: int, layers: int, heads: int, intermediate: int,
                max_positions: int, feature_layer: int = -1, vision_width: int = 128, vision_layers: int = 4):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=vision_width, intermediate_size=4 * vision_width,
                              num_hidden_layers=vision_layers, num_attention_heads=max(1, vision_width // 32),
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3, hidden_act="gelu",
                              layer_norm_eps=1e-5, projection_dim=vision_width)
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=max_positions, rms_norm_eps=1e-5, tie_word_embeddings=True,
                       pad_token_id=SPECIAL_TOKENS.index(PAD), bos_token_id=SPECIAL_TOKENS.index(BOS),
                       eos_token_id=SPECIAL_TOKENS.index(EOS), initializer_range=0.02)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=SPECIAL_TOKENS.index(IMAGE),
                         image_seq_length=NUM_IMAGE_TOKENS, projector_hidden_act="gelu",
                         vision_feature_select_strategy="default", vision_feature_layer=feature_layer,
                         multimodal_projector_bias=True, tie_word_embeddings=True)
    model = LlavaForConditionalGeneration(config)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = text.bos_token_id, text.eos_token_id, text.pad_token_id
    gc.do_sample, gc.max_new_tokens = False, 32
    return model


def load_clip_vision(model, clip_dir: Path) -> int:
    """Copy the built-in open_clip CLIP's image tower into the HF CLIP vision tower; returns tensors copied.

    open_clip ``visual.*`` -> HF ``vision_model.*``: conv1 -> patch embedding, positional embedding, ln_pre ->
    pre_layrnorm, each resblock's packed in_proj -> q/k/v, out_proj, ln_1/ln_2 -> layer_norm1/2, c_fc/c_proj ->
    fc1/fc2, ln_post -> post_layernorm (the projection ``proj`` has no HF vision counterpart and is dropped).
    """
    from safetensors.torch import load_file

    src = {k[len("visual."):]: v.float() for k, v in load_file(str(clip_dir / "model.safetensors")).items()
           if k.startswith("visual.")}
    tower = model.model.vision_tower
    vm = getattr(tower, "vision_model", tower)        # transformers 4.x nests the layers one level deeper
    width = model.config.vision_config.hidden_size
    dst: dict[str, torch.Tensor] = {
        "embeddings.class_embedding": src["class_embedding"],
        "embeddings.patch_embedding.weight": src["conv1.weight"],
        "embeddings.position_embedding.weight": src["positional_embedding"],
        "pre_layrnorm.weight": src["ln_pre.weight"], "pre_layrnorm.bias": src["ln_pre.bias"],
        "post_layernorm.weight": src["ln_post.weight"], "post_layernorm.bias": src["ln_post.bias"],
    }
    for i in range(model.config.vision_config.num_hidden_layers):
        s, d = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        w, b = src[s + "attn.in_proj_weight"], src[s + "attn.in_proj_bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            dst[d + f"self_attn.{name}.weight"] = w[j * width:(j + 1) * width]
            dst[d + f"self_attn.{name}.bias"] = b[j * width:(j + 1) * width]
        pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
        for a, c in pairs.items():
            dst[d + c + ".weight"] = src[s + a + ".weight"]
            dst[d + c + ".bias"] = src[s + a + ".bias"]
    own = vm.state_dict()
    bad = [k for k, v in dst.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"built-in CLIP image tower does not fit the LLaVA vision tower: {bad[:5]}")
    missing = set(own) - set(dst) - {"embeddings.position_ids"}
    if missing:
        raise ValueError(f"vision tower weights not covered by the built-in CLIP: {sorted(missing)[:5]}")
    vm.load_state_dict(dst, strict=False)
    return len(dst)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def render_cache(examples: Sequence, log: Callable[[str], None] = print) -> torch.Tensor:
    """Render every example's scene once into a ``(N, 3, 64, 64)`` uint8 tensor, as the loaders do."""
    from mtl_lora_vl.data.images import stack_uint8

    t0 = time.perf_counter()
    out = stack_uint8([ex.image for ex in examples], IMAGE_SIZE)
    log(f"rendered {len(examples)} images in {time.perf_counter() - t0:.1f}s")
    return out


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, rescaled and normalised exactly as the saved image processor does."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (images.float() / 255 - m) / s


def encode_turns(tokenizer, turns: Sequence[tuple[str, str]]) -> tuple[list[int], list[int], list[int]]:
    """One row holding several single-turn examples about one image that share the image prefix::

        <s> <image>*64 | question: q1 answer: a1 </s> | caption: c </s> | question: q2 answer: a2 </s> ...

    Returns token ids, labels (-100 except on each answer and its ``</s>``) and segment ids (0 for the
    prefix, k for the k-th turn). :func:`collate` turns the segments into an attention mask under which a
    turn sees only the prefix and itself, and into positions that restart after the prefix, so each turn is
    trained exactly as the single-turn prompt it becomes at inference, and no turn can read another's answer.
    """
    bos, eos, img = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IMAGE)
    ids = [bos] + [img] * NUM_IMAGE_TOKENS
    labels = [-100] * len(ids)
    segments = [0] * len(ids)
    enc = tokenizer([t for turn in turns for t in turn], add_special_tokens=False)["input_ids"]
    for k in range(0, len(enc), 2):
        prompt, answer = enc[k], enc[k + 1] + [eos]
        ids += prompt + answer
        labels += [-100] * len(prompt) + answer
        segments += [k // 2 + 1] * (len(prompt) + len(answer))
    return ids, labels, segments


def collate(rows: Sequence[tuple[list[int], list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-pad rows of :func:`encode_turns` to the longest. Returns input ids, a boolean ``(B, 1, L, L)``
    attention mask (causal, and a turn attends to the prefix and to itself only; padding attends to the
    prefix and to padding, so no row is empty), position ids (the prefix counts from 0, every turn continues
    from the end of the prefix) and labels (-100 on padding)."""
    n = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    seg = torch.full((len(rows), n), -1, dtype=torch.long)
    for i, (a, b, c) in enumerate(rows):
        ids[i, : len(a)] = torch.tensor(a)
        labels[i, : len(b)] = torch.tensor(b)
        seg[i, : len(c)] = torch.tensor(c)
    causal = torch.ones((n, n), dtype=torch.bool).tril()
    mask = causal & ((seg.unsqueeze(1) == 0) | (seg.unsqueeze(1) == seg.unsqueeze(2)))
    prefix = int((seg[0] == 0).sum())
    positions = torch.zeros_like(ids)
    for i in range(len(rows)):
        for k in seg[i].unique().tolist():
            where = (seg[i] == k).nonzero().squeeze(1)
            start = 0 if k == 0 else prefix
            positions[i, where] = torch.arange(start, start + where.numel())
    return ids, mask.unsqueeze(1), positions, labels


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def train(model, tokenizer, examples: Sequence, images: torch.Tensor, mean, std, *, steps: int,
          batch_size: int, turns: int, lr: float, vision_lr: float, weight_decay: float, seed: int,
          kinds: Sequence[str] = INSTRUCTION_TYPES, log_every: int = 25, eval_every: int = 0,
          eval_fn: Callable[[], None] | None = None, log: Callable[[str], None] = print) -> list[float]:
    """Train ``model`` on packed turns about the pretraining images: projector and language model at ``lr``,
    the vision tower at ``vision_lr``, or frozen when ``vision_lr`` is 0 (its features are then computed once
    for every image, which makes a step much cheaper)."""
    frozen = vision_lr == 0
    tower = model.model.vision_tower
    if frozen:
        tower.requires_grad_(False)
        cache = vision_features(model, images, mean, std, log=log)
    groups: dict[str, list] = {"vision": [], "decay": [], "no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("model.vision_tower."):
            groups["vision"].append(p)
        elif p.ndim >= 2 and "embed" not in name:
            groups["decay"].append(p)
        else:
            groups["no_decay"].append(p)
    opt = torch.optim.AdamW([
        {"params": groups["vision"], "lr": vision_lr, "weight_decay": weight_decay, "base": vision_lr},
        {"params": groups["decay"], "lr": lr, "weight_decay": weight_decay, "base": lr},
        {"params": groups["no_decay"], "lr": lr, "weight_decay": 0.0, "base": lr},
    ], betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, steps // 20)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    n = len(examples)
    pad_id = tokenizer.pad_token_id
    img_id = tokenizer.convert_tokens_to_ids(IMAGE)
    embed = model.get_input_embeddings()
    model.train()
    losses: list[float] = []
    order = torch.randperm(n, generator=gen).tolist()
    pos = 0
    t0 = time.perf_counter()
    lr_at = cosine_with_warmup(warmup, steps, floor=0.05)   # the package's schedule, down to 5 % of the peak
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = g["base"] * lr_at(step)
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen).tolist(), 0
        idx = order[pos: pos + batch_size]
        pos += batch_size
        rows = [encode_turns(tokenizer, turns_about(examples[i], rng, turns, kinds)) for i in idx]
        ids, mask, positions, labels = collate(rows, pad_id)
        if frozen:
            feats = model.model.multi_modal_projector(cache[idx]).flatten(0, 1)
        else:
            feats = model.model.get_image_features(pixel_values=normalise(images[idx], mean, std)).pooler_output
            feats = torch.cat(list(feats), dim=0)
        embeds = embed(ids).masked_scatter((ids == img_id).unsqueeze(-1), feats)
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        losses.append(out.loss.item())
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            el = time.perf_counter() - t0
            recent = losses[-log_every:]
            log(f"step {step + 1}/{steps}  loss {sum(recent) / len(recent):.3f}  "
                f"{el / (step + 1):.2f} s/step  {el:.0f}s")
        if eval_fn is not None and eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            model.eval()
            eval_fn()
            model.train()
    model.eval()
    tower.requires_grad_(True)
    return losses


@torch.no_grad()
def vision_features(model, images: torch.Tensor, mean, std, batch: int = 250,
                    log: Callable[[str], None] = print) -> torch.Tensor:
    """The vision tower's selected features (``vision_feature_layer``, CLS dropped) of every uint8 image, as
    ``get_image_features`` computes them before the projector: ``(N, 64, width)``."""
    t0 = time.perf_counter()
    cfg = model.config
    if not isinstance(cfg.vision_feature_layer, int) or cfg.vision_feature_select_strategy != "default":
        raise ValueError("feature caching expects one vision_feature_layer and the 'default' selection")
    tower = model.model.vision_tower
    was_training = tower.training
    tower.eval()
    out = []
    for i in range(0, images.shape[0], batch):
        hs = tower(normalise(images[i:i + batch], mean, std), output_hidden_states=True).hidden_states
        out.append(hs[cfg.vision_feature_layer][:, 1:])
    tower.train(was_training)
    log(f"vision features of {images.shape[0]} images (frozen tower) in {time.perf_counter() - t0:.0f}s")
    return torch.cat(out)


# --------------------------------------------------------------------------------------------------
# Zero-shot evaluation on the world's vqa and captioning val splits (greedy generation)
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(model, processor, images: Sequence, prompts: Sequence[str], batch: int = 64,
             max_new_tokens: int = 24) -> list[str]:
    """Greedy answers for (PIL image, prompt) pairs, decoded without special tokens."""
    out: list[str] = []
    for i in range(0, len(prompts), batch):
        enc = processor(images=list(images[i:i + batch]), text=list(prompts[i:i + batch]), padding=True,
                        return_tensors="pt")
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        new = gen[:, enc["input_ids"].shape[1]:]
        out.extend(t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True))
    return out


def evaluate(model, processor, seed: int, n_scenes: int | None = None) -> dict:
    """Zero-shot VQA accuracy (overall, per type, chance, majority-per-type) and captioning BLEU-4/CIDEr
    (with a constant-caption and a wrong-image baseline) on the world's val splits."""
    from mtl_lora_vl.metrics import caption_scores, normalize_answer, vqa_accuracy

    report: dict = {}
    vqa = world.build_split("vqa", "val", n=n_scenes, seed=seed).examples
    imgs = {ex.image_id: ex.image.render(IMAGE_SIZE) for ex in vqa}
    preds = generate(model, processor, [imgs[ex.image_id] for ex in vqa],
                     [PROMPTS["vqa"].format(question=ex.text) for ex in vqa], max_new_tokens=6)
    answer_sets = {"color": set(world.COLOR_NAMES), "shape": set(world.SHAPES), "existence": {"yes", "no"},
                   "relation": {"yes", "no"}, "count": {str(i) for i in range(world.MAX_OBJECTS + 1)}}
    for ex in vqa:      # a question type this table does not know: chance over the answers seen
        answer_sets.setdefault(ex.question_type, set()).add(normalize_answer(ex.meta["answer"]))
    majority = {t: Counter(normalize_answer(ex.meta["answer"])
                           for ex in vqa if ex.question_type == t).most_common(1)[0][0]
                for t in {ex.question_type for ex in vqa}}
    per: dict[str, list[tuple[float, float, float]]] = {}
    for ex, p in zip(vqa, preds):
        t = ex.question_type
        chance = sum(vqa_accuracy(a, ex.answers) for a in answer_sets[t]) / len(answer_sets[t])
        per.setdefault(t, []).append((vqa_accuracy(p, ex.answers), chance, vqa_accuracy(majority[t], ex.answers)))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    allv = [v for vs in per.values() for v in vs]
    report["vqa"] = {
        "accuracy": mean([v[0] for v in allv]), "chance": mean([v[1] for v in allv]),
        "majority_per_type": mean([v[2] for v in allv]), "questions": len(vqa),
        "per_type": {t: {"accuracy": mean([v[0] for v in vs]), "chance": mean([v[1] for v in vs]),
                         "majority": mean([v[2] for v in vs]), "n": len(vs)} for t, vs in sorted(per.items())},
        "examples": [{"q": ex.text, "pred": p, "answer": ex.meta["answer"]} for ex, p in list(zip(vqa, preds))[:8]],
    }

    cap = world.build_split("captioning", "val", n=n_scenes, seed=seed).examples
    preds = generate(model, processor, [ex.image.render(IMAGE_SIZE) for ex in cap],
                     [PROMPTS["captioning"]] * len(cap), max_new_tokens=32)
    refs = {ex.image_id: list(ex.captions) for ex in cap}
    ids = [ex.image_id for ex in cap]
    scores = caption_scores(dict(zip(ids, preds)), refs)
    constant = Counter(preds).most_common(1)[0][0]
    shifted = dict(zip(ids, preds[1:] + preds[:1]))     # each image gets another image's caption
    report["captioning"] = {
        **scores, "images": len(cap),
        "constant_caption": constant, "constant_baseline": caption_scores(dict.fromkeys(ids, constant), refs),
        "wrong_image_baseline": caption_scores(shifted, refs),
        "distinct_captions": len(set(preds)),
        "examples": [{"pred": p, "refs": list(ex.captions)[:2]} for ex, p in list(zip(cap, preds))[:6]],
    }
    return report


def print_report(report: dict, log: Callable[[str], None] = print, brief: bool = False) -> None:
    v = report["vqa"]
    if brief:
        c = report["captioning"]
        log(f"  eval: vqa {v['accuracy']:.3f} ("
            + ", ".join(f"{t} {d['accuracy']:.2f}" for t, d in v["per_type"].items())
            + f"); captioning BLEU-4 {c['bleu4']:.3f} CIDEr {c['cider']:.3f}")
        return
    log(f"zero-shot vqa (val, {v['questions']} questions): accuracy {v['accuracy']:.3f}  "
        f"(chance {v['chance']:.3f}, majority answer per type {v['majority_per_type']:.3f})")
    for t, d in v["per_type"].items():
        log(f"  {t:10s} {d['accuracy']:.3f}  (chance {d['chance']:.3f}, majority {d['majority']:.3f}, n={d['n']})")
    c = report["captioning"]
    log(f"zero-shot captioning (val, {c['images']} images): BLEU-4 {c['bleu4']:.3f}  CIDEr {c['cider']:.3f}  "
        f"({c['distinct_captions']} distinct captions)")
    log(f"  constant caption {c['constant_caption']!r}: BLEU-4 {c['constant_baseline']['bleu4']:.3f}  "
        f"CIDEr {c['constant_baseline']['cider']:.3f}")
    log(f"  another image's caption: BLEU-4 {c['wrong_image_baseline']['bleu4']:.3f}  "
        f"CIDEr {c['wrong_image_baseline']['cider']:.3f}")
    for e in c["examples"][:3]:
        log(f"  e.g. {e['pred']!r}  refs {e['refs']}")


# --------------------------------------------------------------------------------------------------
# Writing the asset
# --------------------------------------------------------------------------------------------------


def save_asset(model, processor, out: Path, meta: dict) -> dict[str, int]:
    """Write the model (fp16 weights; config dtype float32), the processor and ``pretrain.json`` into a
    temporary sibling folder, then swap it into ``out`` (only a new or empty folder or an earlier asset)."""
    out = out.resolve()
    check_asset_dir(out, "pretrain.json", "settings", "--out", own=LLAVA_FILES)
    with atomic_dir(out, overwrite=True, what="--out") as tmp:   # swapped in whole, in one step where it can be
        model.half().save_pretrained(tmp)
        model.float()
        processor.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        for c in (cfg, cfg.get("text_config", {}), cfg.get("vision_config", {})):
            if "dtype" in c:
                c["dtype"] = "float32"
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        tok_path = tmp / "tokenizer_config.json"        # the class name both transformers 4.x and 5.x know
        tok_cfg = json.loads(tok_path.read_text())
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        tok_path.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")
        (tmp / "pretrain.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {p.name: p.stat().st_size for p in sorted(out.iterdir())}


def evaluate_saved(path: Path, seed: int | None, n_scenes: int | None, threads: int) -> int:
    """Evaluate a saved model directory as it loads for users, and store the numbers in its pretrain.json: on the
    val splits of the seed it was trained with unless ``seed`` says another (then they are only printed)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.set_num_threads(threads)
    meta_path = path / "pretrain.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    trained_with = (meta.get("settings") or {}).get("seed", 0) if isinstance(meta, dict) else 0
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    t0 = time.perf_counter()
    report = evaluate(model, processor, trained_with if seed is None else seed, n_scenes)
    print_report(report)
    if meta is None:   # not this script's asset: a pretrain.json made here would let --out replace it
        print(f"not stored: {path} has no pretrain.json (it is not an asset this script wrote)")
        return 0
    if seed is not None and seed != trained_with:
        print(f"not stored: scored on seed {seed}'s val splits; {meta_path} records a model of seed {trained_with}")
        return 0
    meta.update(zero_shot_val=report, eval_seconds=round(time.perf_counter() - t0, 1),
                eval_scenes=n_scenes)   # None: the whole val split
    with atomic_file(meta_path, overwrite=True, what="pretrain.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"updated {meta_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)   # (counts, rates and kinds out of range refused there: after training otherwise)
    if args.evaluate is not None:
        ignored = sorted(f"--{k.replace('_', '-')}" for k, v in vars(args).items()   # parsed: abbreviations too
                         if k not in ("evaluate", "seed", "eval_scenes", "threads") and v != ap.get_default(k))
        if ignored:
            ap.error(f"--evaluate only evaluates a saved model; {', '.join(ignored)} would be ignored")
        if not (args.evaluate / "config.json").is_file():
            ap.error(f"--evaluate {args.evaluate}: not a saved model directory (no config.json)")
        return evaluate_saved(args.evaluate, args.seed, args.eval_scenes, args.threads)
    args.seed = 0 if args.seed is None else args.seed
    if args.hidden % (2 * args.heads):
        ap.error(f"--hidden ({args.hidden}) must be a multiple of --heads ({args.heads}) with an even head size "
                 f"(rotary embeddings), got a head size of {args.hidden / args.heads:g}")
    if args.no_clip_init and args.vision_lr == 0:
        ap.error("--no-clip-init with --vision-lr 0 ships a random, frozen vision tower; give --vision-lr > 0")
    if not args.no_clip_init and not all((args.clip / f).is_file() for f in ("model.safetensors", "tokenizer.json",
                                                                              OPEN_CLIP_CONFIG)):
        ap.error(f"the vision tower starts from the CLIP in {args.clip}, which is not built there; build one in a "
                 "new folder first: python scripts/pretrain_backbone.py --out NEW_DIR, then pass --clip NEW_DIR (or "
                 "pass --no-clip-init with --vision-lr > 0)")
    try:
        vision_width, vision_layers = clip_vision_size(args.clip)
    except ValueError as e:
        ap.error(str(e))
    if not -(vision_layers + 1) <= args.feature_layer <= vision_layers:   # hidden states: the embeddings, each layer
        ap.error(f"--feature-layer must be in [{-(vision_layers + 1)}, {vision_layers}] for a {vision_layers}-layer "
                 f"vision tower, got {args.feature_layer}")
    try:  # before training, not at the save
        check_asset_dir(args.out, "pretrain.json", "settings", "--out", own=LLAVA_FILES)
    except OSError as e:
        ap.error(str(e))
    kinds = instruction_kinds(args.instruction_types)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    pre = world.build_split("pretrain", "train", n=args.n_pretrain, seed=args.seed).examples
    if not pre or any(not ex.captions for ex in pre):
        raise SystemExit("the world's pretraining split is empty or has examples without captions")
    print(f"pretraining split: {len(pre)} images")
    words = clip_words(args.clip) + world.all_texts(args.seed) + instruction_words()
    tokenizer = build_tokenizer(words, model_max_length=256)
    mean, std = clip_mean_std(args.clip)
    processor = build_processor(tokenizer, mean, std)
    model = build_model(len(tokenizer), hidden=args.hidden, layers=args.layers, heads=args.heads,
                        intermediate=args.intermediate, max_positions=256, feature_layer=args.feature_layer,
                        vision_width=vision_width, vision_layers=vision_layers)
    clip_init = not args.no_clip_init
    if clip_init:
        print(f"vision tower from the CLIP in {args.clip}: {load_clip_vision(model, args.clip)} tensors")
    n_params = sum(p.numel() for p in model.parameters())
    parts = {k: sum(p.numel() for p in m.parameters()) for k, m in (
        ("vision", model.model.vision_tower), ("projector", model.model.multi_modal_projector),
        ("language", model.model.language_model))}
    print(f"vocabulary {len(tokenizer)} tokens; {n_params / 1e6:.2f} M params "
          + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in parts.items()))

    images = render_cache(pre)
    t_train, cpu_train = time.perf_counter(), time.process_time()
    losses = train(model, tokenizer, pre, images, mean, std, steps=args.steps, batch_size=args.batch_size,
                   turns=args.turns, lr=args.lr, vision_lr=args.vision_lr, weight_decay=args.weight_decay,
                   seed=args.seed, kinds=kinds, eval_every=args.eval_every,
                   eval_fn=lambda: print_report(evaluate(model, processor, args.seed, args.eval_scenes), brief=True))
    train_s, train_cpu = time.perf_counter() - t_train, time.process_time() - cpu_train
    print(f"trained {args.steps} steps in {train_s:.0f}s ({train_s / args.steps:.2f} s/step; "
          f"{train_cpu:.0f} CPU-seconds)")
    with torch.no_grad():   # evaluate exactly what gets saved: fp16 weights loaded back as fp32
        for p in model.parameters():
            p.copy_(p.half().float())
    t_eval = time.perf_counter()
    report = evaluate(model, processor, args.seed, args.eval_scenes)
    print_report(report)
    eval_s = time.perf_counter() - t_eval
    meta = {
        "prompts": PROMPTS,
        "notes": ("Prompts are single turns; the processor expands <image> to 64 image tokens and prepends <s>; "
                  "greedy generation stops at </s>. Decoded text has words and punctuation separated by spaces."),
        "settings": {"steps": args.steps, "batch_size": args.batch_size, "turns": args.turns, "lr": args.lr,
                     "vision_lr": args.vision_lr, "instruction_types": list(kinds),
                     "weight_decay": args.weight_decay, "seed": args.seed,
                     "feature_layer": args.feature_layer,
                     "threads": args.threads, "clip_init": clip_init, "pretrain_images": len(pre),
                     "vision_width": vision_width, "vision_layers": vision_layers,
                     "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                     "intermediate": args.intermediate, "vocab_size": len(tokenizer)},
        "params": {"total": n_params, **parts},
        "final_loss": sum(losses[-25:]) / len(losses[-25:]),
        "train_seconds": round(train_s, 1), "train_cpu_seconds": round(train_cpu, 1), "eval_seconds": round(eval_s, 1),
        "zero_shot_val": report, "eval_scenes": args.eval_scenes,   # None: the whole val split
    }
    sizes = save_asset(model, processor, args.out, meta)
    total = sum(sizes.values())
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items())
          + f"; total {total / 1e6:.2f} MB")
    print(f"done in {time.perf_counter() - t_start:.0f}s (training {train_s:.0f}s, evaluation {eval_s:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
