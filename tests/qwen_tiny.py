"""Tiny Qwen2-VL / Qwen2.5-VL from configs (no downloads): 2 layers, width 32, 8-px patches merged 2 x 2, so a
32 x 32 image is 16 patches and 4 image tokens."""
import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from vl_tiny import left_padded

IMG_TOK, VS, VE, VID = 95, 92, 93, 94
PATCH, MERGE, TPATCH = 8, 2, 2

def text_cfg():
    return dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})

def tiny_qwen2vl(v25=False):
    vis = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE,
               temporal_patch_size=TPATCH, mlp_ratio=2)
    ids = dict(image_token_id=IMG_TOK, video_token_id=VID, vision_start_token_id=VS, vision_end_token_id=VE)
    if v25:
        vis = dict(depth=2, hidden_size=32, out_hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH,
                   spatial_merge_size=MERGE, temporal_patch_size=TPATCH, window_size=32, fullatt_block_indexes=[1])
        cfg = Qwen2_5_VLConfig(vision_config=vis, text_config=text_cfg(), **ids)
        return Qwen2_5_VLForConditionalGeneration(cfg)
    cfg = Qwen2VLConfig(vision_config=vis, text_config=text_cfg(), **ids)
    return Qwen2VLForConditionalGeneration(cfg)

def inputs(n_img=2, side=32, text=6, seed=0, mm=True, ragged=False, sizes=None):
    """pixel_values as the Qwen2-VL image processor makes them: per image (t*h*w patches, C*T*P*P), image-major;
    image_grid_thw (n, 3); input_ids: [text.. VS, IMG*(h*w/4), VE, text..] per row, left-padded. ``sizes``: each
    image's (height, width) in pixels (default: n_img squares of ``side``)."""
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or [(side, side)] * n_img
    grids = [(hp // PATCH, wp // PATCH) for hp, wp in sizes]
    pv = torch.randn(sum(h * w for h, w in grids), 3 * TPATCH * PATCH * PATCH, generator=g)
    thw = torch.tensor([[1, h, w] for h, w in grids])
    rows = []
    for i, (h, w) in enumerate(grids):
        t = torch.randint(3, 90, (text + (3 * i if ragged else 0),), generator=g).tolist()
        rows.append(t[:2] + [VS] + [IMG_TOK] * (h * w // MERGE**2) + [VE] + t[2:])
    ids, mask = left_padded(rows)   # left-padded, as for generation
    out = dict(input_ids=ids, attention_mask=mask, pixel_values=pv, image_grid_thw=thw)
    if mm:
        out["mm_token_type_ids"] = (ids == IMG_TOK).int()
    return out

VIS = r"(^|\.)visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2|gate_proj|up_proj|down_proj))$"
MERGER = r"(^|\.)visual\.merger\.mlp\.(0|2)$"
TEXT = r"(^|\.)language_model\.(.*\.)?layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"


QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def save_tiny_qwen2vl(out, v25=False, words=None, seed=0, side=32, chat_template=None):
    """A tiny Qwen2-VL (``v25``: Qwen2.5-VL) directory at ``out`` with its processor: a word-level tokenizer over
    the built-in world's words plus Qwen's vision tokens, and an image processor whose min/max pixels make
    ``side`` x ``side`` (32: 16 patches, 4 image tokens) the backbone's square. ``chat_template``: the processor's
    (the tokenizer then also knows Qwen's ``<|im_start|>`` / ``<|im_end|>``)."""
    from pathlib import Path

    from llava_tiny import EXTRA_WORDS
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )
    from vl_tiny import world_words

    from mtl_lora_vl.backbones import build_word_tokenizer

    out = Path(out)
    build_word_tokenizer([*(words if words is not None else world_words()), *EXTRA_WORDS], out / "_tok",
                         context_length=64)
    tok = PreTrainedTokenizerFast.from_pretrained(str(out / "_tok"))
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS + (["<|im_start|>", "<|im_end|>"]
                                                                          if chat_template else [])})
    vs, ve, img, vid = (tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS)
    geometry = dict(patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TPATCH)
    pixels = {"shortest_edge": side * side, "longest_edge": side * side}
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(size=pixels, **geometry), tokenizer=tok,
                                 video_processor=Qwen2VLVideoProcessor(size=pixels, **geometry),
                                 chat_template=chat_template)
    text = {**text_cfg(), "vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id}
    vis = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE,
               temporal_patch_size=TPATCH, mlp_ratio=2)
    ids = dict(image_token_id=img, video_token_id=vid, vision_start_token_id=vs, vision_end_token_id=ve)
    torch.manual_seed(seed)
    if v25:
        vis = dict(depth=2, hidden_size=32, out_hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH,
                   spatial_merge_size=MERGE, temporal_patch_size=TPATCH, window_size=32, fullatt_block_indexes=[1])
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(vision_config=vis, text_config=text, **ids))
    else:
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(vision_config=vis, text_config=text, **ids))
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out


def tiny_qwen2vl_backbone(tmp, v25=False):
    """A loaded tiny Qwen2-VL (or Qwen2.5-VL) backbone from a directory under ``tmp`` (built once)."""
    from pathlib import Path

    from mtl_lora_vl.backbones import load_backbone

    folder = Path(tmp) / ("tiny_qwen25vl" if v25 else "tiny_qwen2vl")
    if not (folder / "config.json").is_file():
        save_tiny_qwen2vl(folder, v25)
    return load_backbone(f"hf:{folder}")
