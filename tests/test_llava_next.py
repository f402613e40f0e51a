"""LLaVA-NeXT (tiny, from configs, with its own processor): the family row. Each image reaches the vision tower as a
base view and a grid of tiles at its own aspect (anyres), so a mixed-task route must send each row's tiles to its
task: logits, greedy and beam generate and gradients equal each task alone, for rows of one, several or no images;
the PEFT export and the merged checkpoint give the same outputs. (The backbone class: test_llava_next_backbone.py.)"""

from __future__ import annotations

import pytest
import torch
from anyres_family import AnyresFamilyTests, adapted, fresh
from llava_tiny import PATCH, _word_tokenizer
from vlm_checks import assert_mixed_route_per_task, pictures

import mtl_lora_vl as mlv
from mtl_lora_vl.families import find_family
from mtl_lora_vl.family_anyres import llava_next_image
from mtl_lora_vl.family_images import llava_next_row_tiles

SIDE = 32
PINPOINTS = [[32, 64], [64, 32], [64, 64]]
SIZES = [(20, 60), (40, 40), (64, 24), (30, 50)]   # wide, square, tall: 3, 5, 3 and 3 tiles


def build(out, tower: str = "clip", strategy: str = "default"):
    """A tiny LlavaNextForConditionalGeneration (a CLIP or SigLIP tower of 32-px tiles, 8-px patches; Llama decoder)
    and its LlavaNextProcessor, saved under ``out`` and loaded back: (model class, processor, folder)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        SiglipVisionConfig,
    )

    tok = _word_tokenizer(out, None)
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIDE,
              patch_size=PATCH)
    vision = CLIPVisionConfig(**kw) if tower == "clip" else SiglipVisionConfig(**kw)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, max_position_embeddings=512, vocab_size=len(tok),
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = LlavaNextConfig(vision_config=vision, text_config=text,
                          image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                          vision_feature_select_strategy=strategy, image_grid_pinpoints=PINPOINTS)
    torch.manual_seed(0)
    LlavaNextForConditionalGeneration(cfg).save_pretrained(str(out))
    images = LlavaNextImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE},
                                     image_grid_pinpoints=PINPOINTS)
    LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy=strategy,
                       num_additional_image_tokens=1 if tower == "clip" else 0).save_pretrained(str(out))
    processor = LlavaNextProcessor.from_pretrained(str(out))
    processor.tokenizer.padding_side = "left"
    return LlavaNextForConditionalGeneration, processor, out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(tmp_path_factory.mktemp("llava_next"))


def batch(tiny, counts: list[int], seed: int = 0) -> dict:
    """The processor's batch for rows holding ``counts[r]`` pictures each (sizes from SIZES in turn)."""
    drawn = pictures([SIZES[i % len(SIZES)] for i in range(sum(counts))], seed)
    words = ["what colour is the circle", "describe", "how many", "caption"]
    texts = [" ".join(["<image>"] * c + [words[r % len(words)]] * (r + 1)) for r, c in enumerate(counts)]
    return dict(tiny[1](text=texts, images=drawn, return_tensors="pt", padding=True))



class TestLlavaNextAnyres(AnyresFamilyTests):
    batch = staticmethod(batch)
    peft_readme_says = "set_adapter('a')   # one task per call"


def test_the_family_row_takes_the_tower_up_to_the_feature_layer_and_the_language_model(tiny):
    m = adapted(tiny)
    info = m._mtl_lora
    assert find_family(m).name == info.family == "llava_next"
    vision = [n for n, t in info.towers.items() if t == "image"]
    assert len(vision) == 12 and all(".vision_tower." in n for n in vision)
    assert any("language_model.layers.1.mlp.down_proj" in n for n in info.towers)


def test_tiles_per_row_are_the_processors(tiny):
    """Each row's image tokens matched to the images' token counts (the model's arithmetic) give the processor's
    tiles: rows of 2, 0 and 1 pictures (3 + 5, none, 3 tiles)."""
    m = fresh(tiny)
    x = batch(tiny, [2, 0, 1])
    assert llava_next_row_tiles(m.model, (), x) == [8, 0, 3]
    assert x["pixel_values"].shape[:2] == (3, 5)   # (images, most tiles, ...): padded tiles dropped by the model


def test_each_images_count_is_made_once_per_size_strategy_and_config(tiny, monkeypatch):
    """An image's count (the model's grid shape, meta unpadding and patch count: ~30 us of CPU per distinct size,
    most of it config reads) ran on every mixed forward: 120 of a 130-us check for four sizes. Now once per model,
    size, strategy and config, a config edited (image_grid_pinpoints) counting afresh."""
    import transformers.models.llava_next.modeling_llava_next as modeling

    m = fresh(tiny)
    x = batch(tiny, [2, 0, 1])
    unpad, calls = modeling.unpad_image, []
    monkeypatch.setattr(modeling, "unpad_image", lambda *a: calls.append(1) or unpad(*a))
    assert llava_next_row_tiles(m.model, (), x) == [8, 0, 3] and len(calls) == 3
    assert llava_next_row_tiles(m.model, (), x) == [8, 0, 3] and len(calls) == 3
    assert llava_next_image(m.model, (20, 60), "default") == (16 + 2 * 9, 3) and len(calls) == 3   # (the config's)
    monkeypatch.setattr(m.config, "image_grid_pinpoints", [[64, 64]])   # every image on 2 x 2 tiles now
    assert llava_next_row_tiles(m.model, (), x) is not None and len(calls) == 6
    assert llava_next_image(m.model, (40, 40)) == (16 + 8 * 8 + 8, 5) and llava_next_image(m.model, (20, 60))[1] == 5


def test_a_row_holding_part_of_an_image_and_encoded_images_are_refused(tiny):
    m = adapted(tiny)
    x = batch(tiny, [2, 0])
    ids = x["input_ids"].clone()
    image = tiny[1].tokenizer.convert_tokens_to_ids("<image>")
    first = (ids[0] == image).nonzero()[0].item()
    ids[1, :5] = image                        # row 1 takes 5 image tokens of row 0's first image
    ids[0, first:first + 5] = 7
    x1 = {**x, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        with mlv.route(m, [0, 1]), pytest.raises(mlv.RoutingError, match=r"rows hold \[1\.\d+, 0\.\d+\] images"):
            m(**x1)
        with mlv.route(m, "a"):
            encoded = {"image": m.model.get_image_features(x["pixel_values"], x["image_sizes"], return_dict=True)}
        y = {k: v for k, v in x.items() if k not in ("pixel_values",)}
        with mlv.route(m, [0, 1]), pytest.raises(mlv.RoutingError, match=r"\[2, 0\] images, and their features"):
            m(**y, mm_encoder_outputs=encoded)


def test_a_siglip_tower_with_full_features_is_counted(tmp_path):
    """A tower without a CLS position (SigLIP) under vision_feature_select_strategy="full": the count took grid² + 1
    tokens for a tile's base view where the model has grid², and refused every mixed route as rows holding 0.97 and
    1.006 images, one image per row included (helper 163)."""
    t = build(tmp_path, "siglip", "full")
    m = adapted(t)
    assert_mixed_route_per_task(m, batch(t, [1, 1]), [0, 1])
    assert_mixed_route_per_task(m, batch(t, [2, 0, 1]), [0, 1, 0])


def test_image_sizes_given_as_a_list_are_counted(tiny):
    """The model takes image_sizes as a list of [h, w]; the mixed route's count failed on it ('list' object has no
    attribute 'cpu') (helper 163)."""
    x = batch(tiny, [2, 0, 1])
    assert_mixed_route_per_task(adapted(tiny), {**x, "image_sizes": x["image_sizes"].tolist()}, [0, 1, 0])
