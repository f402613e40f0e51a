"""Tiny backbones and built-in-world splits for the task, sampler and loader tests (CPU, no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mtl_lora_vl.backbones import Backbone, build_open_clip, build_word_tokenizer
from mtl_lora_vl.data import world

CONTEXT = 20
IMAGE = 32


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows left-padded with 0 (as for generation) and their attention mask."""
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    return ids, mask


def world_words() -> list[str]:
    """Every word the built-in world and the built-in task templates use."""
    words = ["a", "an", "the", "answer", "is", "photo", "of", "large", "small", "object", "objects"]
    words += [*world.SHAPES, *world.COLOR_NAMES, *world.NUMBER_WORDS, *world.vqa_answers()]
    for kind in ("retrieval", "vqa", "classification"):
        for ex in world.build_split(kind, "train", n=40, seed=0).examples:
            words += [ex.text or "", *ex.captions, *ex.answers]
    return words


def _vision(coca: bool) -> dict:
    cfg = {"image_size": IMAGE, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}
    if coca:
        cfg.update(attentional_pool=True, attn_pooler_heads=2, output_tokens=True)
    return cfg


def tiny_backbone(tmp: Path, coca: bool = False) -> Backbone:
    """A freshly initialised 1-layer open_clip CLIP (or CoCa) with a word-level tokenizer."""
    tok_dir = Path(tmp) / "tok"
    if not (tok_dir / "tokenizer.json").is_file():
        build_word_tokenizer(world_words(), tok_dir, context_length=CONTEXT)
    cfg = _config(tok_dir, coca)
    bb = build_open_clip(cfg, tokenizer_dir=tok_dir, name="tiny-coca" if coca else "tiny-clip")
    if coca and hasattr(bb.model.text_decoder, "text_projection"):
        # open_clip leaves the decoder's output projection uninitialised (torch.empty) in a fresh CoCa.
        torch.nn.init.normal_(bb.model.text_decoder.text_projection, std=32 ** -0.5)
    bb.model.eval()
    return bb


def tiny_backbone_dir(folder: Path, coca: bool = False) -> Path:
    """:func:`tiny_backbone` as an open_clip local directory (config, weights, tokenizer) for
    ``--backbone open_clip:DIR`` in a subprocess."""
    from safetensors.torch import save_file

    folder = Path(folder)
    torch.manual_seed(0)
    bb = tiny_backbone(folder, coca=coca)
    for f in (folder / "tok").iterdir():
        f.replace(folder / f.name)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": _config(folder, coca), "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return folder


def _config(tok_dir: Path, coca: bool) -> dict:
    vocab = len(json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"])
    text = {"context_length": CONTEXT, "vocab_size": vocab, "width": 32, "heads": 2, "layers": 1}
    if coca:
        text.update(embed_cls=True, output_tokens=True)
        return {"embed_dim": 32, "vision_cfg": _vision(True), "text_cfg": text,
                "multimodal_cfg": {"context_length": CONTEXT, "vocab_size": vocab, "width": 32, "heads": 2,
                                   "layers": 1}}
    text.update(pool_type="eos", eos_id=2)
    return {"embed_dim": 32, "vision_cfg": _vision(False), "text_cfg": text}
