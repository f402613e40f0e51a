"""LLaVA-OneVision (tiny, from configs, with its own processor): the family row. As LLaVA-NeXT, each image reaches the
vision tower as a base view and a grid of tiles at its own aspect (anyres), but a large grid's features are
interpolated down (``vision_aspect_ratio``) and an image of a row of several (``batch_num_images``) is its base view
alone; so a mixed-task route sends each row's tiles to its task: logits, greedy and beam generate and gradients equal
each task alone; the PEFT export and the merged checkpoint give the same outputs. Videos reach the tower (and the
projector) in a call of their own, after the images': each call's tiles or frames are counted per row, so a mixed
route takes any mix of images and videos per row. (The backbone class: test_llava_next_backbone.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anyres_family import AnyresFamilyTests, adapted, fresh
from llava_tiny import PATCH, _word_tokenizer
from PIL import Image
from vlm_checks import assert_mixed_gradients_are_per_task_sums, assert_mixed_route_per_task, pictures

import mtl_lora_vl as mlv
from mtl_lora_vl.families import find_family, inner_family
from mtl_lora_vl.family_anyres import llava_onevision_image, llava_onevision_video_tokens
from mtl_lora_vl.family_images import llava_onevision_row_tiles

SIDE = 32
PINPOINTS = [[32, 64], [64, 32], [64, 64]]
SIZES = [(20, 60), (40, 40), (64, 24), (30, 50)]   # 3, 5, 3 and 3 tiles; (40, 40)'s 8 x 8 grid is interpolated to 5 x 5
ASPECT = "anyres_max_2"                            # (at most 2 tiles' features: 4 x 8 stays, 8 x 8 is cut down)


def build(out, tower: str = "clip", strategy: str = "default"):
    """A tiny LlavaOnevisionForConditionalGeneration (a CLIP or SigLIP tower of 32-px tiles, 8-px patches; Llama
    decoder) and its LlavaOnevisionProcessor (images and videos), saved under ``out`` and loaded back: (model class,
    processor, folder)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        SiglipVisionConfig,
    )

    tok = _word_tokenizer(out, None)
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIDE,
              patch_size=PATCH)
    vision = CLIPVisionConfig(**kw) if tower == "clip" else SiglipVisionConfig(**kw)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, max_position_embeddings=512, vocab_size=len(tok),
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text,
                               image_token_index=tok.convert_tokens_to_ids("<image>"),
                               video_token_index=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
                               vision_feature_select_strategy=strategy, image_grid_pinpoints=PINPOINTS,
                               vision_aspect_ratio=ASPECT)
    torch.manual_seed(0)
    LlavaOnevisionForConditionalGeneration(cfg).save_pretrained(str(out))
    LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": SIDE, "width": SIDE},
                                                     image_grid_pinpoints=PINPOINTS),
        video_processor=LlavaOnevisionVideoProcessor(size={"height": SIDE, "width": SIDE}), tokenizer=tok,
        num_image_tokens=(SIDE // PATCH) ** 2 + (tower == "clip"), vision_feature_select_strategy=strategy,
        vision_aspect_ratio=ASPECT).save_pretrained(str(out))
    processor = LlavaOnevisionProcessor.from_pretrained(str(out))
    processor.tokenizer.padding_side = "left"
    return LlavaOnevisionForConditionalGeneration, processor, out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(tmp_path_factory.mktemp("llava_onevision"))


WORDS = ["what colour is the circle", "describe", "how many", "caption"]


def batch(tiny, counts: list[int], seed: int = 0, nested: bool = False) -> dict:
    """The processor's batch for rows holding ``counts[r]`` pictures each (sizes from SIZES in turn); ``nested``: the
    pictures given as one list per row (the processor then writes ``batch_num_images``, and an image of a row of
    several is its base view alone)."""
    drawn = pictures([SIZES[i % len(SIZES)] for i in range(sum(counts))], seed)
    texts = [" ".join(["<image>"] * c + [WORDS[r % len(WORDS)]] * (r + 1)) for r, c in enumerate(counts)]
    if nested:
        starts = np.cumsum([0, *counts])
        drawn = [drawn[a:b] for a, b in zip(starts[:-1], starts[1:])]
    return dict(tiny[1](text=texts, images=drawn, return_tensors="pt", padding=True))


def video_batch(tiny, videos: list[int], pictures: list[int] | None = None, frames: int = 3, seed: int = 0) -> dict:
    """Rows holding ``videos[r]`` videos of ``frames`` frames (and ``pictures[r]`` pictures)."""
    rng = np.random.default_rng(seed)
    pictures = pictures or [0] * len(videos)
    clips = [rng.integers(0, 256, (frames, 40, 40, 3), dtype=np.uint8) for _ in range(sum(videos))]
    images = [Image.fromarray(rng.integers(0, 256, (*SIZES[i % len(SIZES)], 3), dtype=np.uint8))
              for i in range(sum(pictures))]
    texts = [" ".join(["<image>"] * p + ["<video>"] * v + [WORDS[r % len(WORDS)]] * (r + 1))
             for r, (v, p) in enumerate(zip(videos, pictures))]
    return dict(tiny[1](text=texts, videos=clips, images=images or None, return_tensors="pt", padding=True))



class TestLlavaOnevisionAnyres(AnyresFamilyTests):
    batch = staticmethod(batch)
    peft_readme_says = "reads each image as several tiles"


def test_the_family_row_takes_the_tower_up_to_the_feature_layer_and_the_language_model(tiny):
    m = adapted(tiny)
    info = m._mtl_lora
    assert find_family(m).name == info.family == "llava_onevision"
    assert inner_family(m.model).name == "llava_onevision"
    vision = [n for n, t in info.towers.items() if t == "image"]
    assert len(vision) == 12 and all(".vision_tower." in n for n in vision)
    assert any("language_model.layers.1.mlp.down_proj" in n for n in info.towers)


def test_tiles_per_row_are_the_processors(tiny):
    """Each row's image tokens matched to the images' token counts (the model's pack_image_features on meta tensors)
    give the processor's tiles (its unpadded tiles per image; an image of a row of several given per row: one)."""
    m = fresh(tiny)
    x = batch(tiny, [2, 0, 1])
    tiles = (x["pixel_values"].flatten(2) != 0).any(-1).sum(-1).tolist()   # per image, the padding tiles left out
    assert tiles == [3, 5, 3]
    assert llava_onevision_row_tiles(m.model, (), x) == [8, 0, 3]
    # (40, 40)'s 2 x 2 tiles: 16 base + 8 x 8 features + 8 newlines without the interpolation, 16 + 5 x 5 + 5 with it
    assert (x["input_ids"] == m.config.image_token_id).sum(-1).tolist() == [34 + 46, 0, 56]
    y = batch(tiny, [2, 0, 1], nested=True)
    assert y["batch_num_images"].tolist() == [2, 1]
    assert llava_onevision_row_tiles(m.model, (), y) == [2, 0, 3]
    assert (y["input_ids"] == m.config.image_token_id).sum(-1).tolist() == [2 * 17, 0, 56]


def test_each_images_count_is_packed_once_per_size_and_config(tiny, monkeypatch):
    """The count of an image's tokens packs meta features (the model's pack_image_features; (40, 40)'s tile grid
    interpolated down: ~5 ms of CPU), and ran on every mixed forward (6.5 ms of a 6.6 ms check for rows [2, 0, 1]):
    now once per model, size and config, a config edited (vision_aspect_ratio) counting afresh."""
    m = fresh(tiny)
    x = batch(tiny, [2, 0, 1])
    pack, calls = m.model.pack_image_features, []
    monkeypatch.setattr(m.model, "pack_image_features", lambda *a, **k: calls.append(1) or pack(*a, **k))
    assert llava_onevision_row_tiles(m.model, (), x) == [8, 0, 3] and len(calls) == 3
    assert llava_onevision_row_tiles(m.model, (), x) == [8, 0, 3] and len(calls) == 3
    big = (x["input_ids"] == m.config.image_token_id).sum(-1).tolist()
    monkeypatch.setattr(m.config, "vision_aspect_ratio", "anyres_max_9")   # (40, 40): no interpolation now
    assert llava_onevision_row_tiles(m.model, (), x) is not None and len(calls) == 6
    assert llava_onevision_image(m.model, (40, 40))[0] == 16 + 8 * 8 + 8 and big[0] == 34 + 46


def test_the_vision_aspect_ratio_the_call_encodes_by_is_counted(tiny, monkeypatch):
    """transformers (5.25) encodes generate's images by generate's ``vision_aspect_ratio`` (its get_image_features
    takes it), and its forward's by the config's (the forward takes the argument, and does not pass it on). Rows of
    [2, 0, 1] pictures under "anyres_max_9" (the processor too: (40, 40) fills 88 tokens, not 46) were counted by
    the config's "anyres_max_2", so a routed generate was refused ("the rows hold [2.75, 0, 0.25] images"); now
    each reading is tried, the config's first: greedy and 3-beam generate equal each task alone, and a forward given
    the argument (which the model does not use) still routes by the config's count."""
    m = adapted(tiny)
    assert llava_onevision_image(m.model, (40, 40), aspect="anyres_max_9")[0] == 16 + 8 * 8 + 8
    assert llava_onevision_image(m.model, (40, 40))[0] == 16 + 5 * 5 + 5   # (each aspect its own cache entry)
    y = {**batch(tiny, [2, 0, 1]), "vision_aspect_ratio": "anyres_max_9"}   # (ids of the config's counts)
    with torch.no_grad():
        alone = []
        for t in ("a", "b"):
            with mlv.route(m, t):
                alone.append(m(**y).logits)
        with mlv.route(m, [0, 1, 0]):
            torch.testing.assert_close(m(**y).logits, torch.stack([alone[0][0], alone[1][1], alone[0][2]]))
    monkeypatch.setattr(tiny[1], "vision_aspect_ratio", "anyres_max_9")
    x = batch(tiny, [2, 0, 1])
    assert (x["input_ids"] == m.config.image_token_id).sum(-1).tolist() == [34 + 88, 0, 56]
    assert llava_onevision_row_tiles(m.model, (), {**x, "vision_aspect_ratio": "anyres_max_9"}) == [8, 0, 3]
    L = x["input_ids"].shape[1]
    for beams in (1, 3):
        kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, num_beams=beams, pad_token_id=0,
                  eos_token_id=None, vision_aspect_ratio="anyres_max_9")
        with torch.no_grad():
            each = []
            for t in ("a", "b"):
                with mlv.route(m, t):
                    each.append(m.generate(**x, **kw)[:, L:])
            with mlv.route(m, [0, 1, 0]):
                routed = m.generate(**x, **kw)[:, L:]
        assert torch.equal(routed, torch.stack([each[t][i] for i, t in enumerate([0, 1, 0])])), beams


def test_a_reading_that_leaves_image_tokens_over_is_not_taken(tiny, monkeypatch):
    """Rows of a (40, 40) picture then a (20, 60) one under generate's "anyres_max_9": [88, 34] image tokens. The
    config's "anyres_max_2" reads the images as 46 and 34 tokens, both inside row 0's 88 (row 1's 34 left over), so
    it too held "every image whole" and, tried first, won: tiles [8, 0], row 1's picture through row 0's task (its
    routed greedy tokens not task b's). A reading is taken only where its images fill the rows' tokens exactly."""
    m = adapted(tiny)
    monkeypatch.setattr(tiny[1], "vision_aspect_ratio", "anyres_max_9")
    x = dict(tiny[1](text=["<image> describe", "<image> how many"], images=pictures([(40, 40), (20, 60)]),
                     return_tensors="pt", padding=True))
    assert (x["input_ids"] == m.config.image_token_id).sum(-1).tolist() == [88, 34]
    assert llava_onevision_row_tiles(m.model, (), {**x, "vision_aspect_ratio": "anyres_max_9"}) == [5, 3]
    L = x["input_ids"].shape[1]
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None,
              vision_aspect_ratio="anyres_max_9")
    with torch.no_grad():
        each = []
        for t in ("a", "b"):
            with mlv.route(m, t):
                each.append(m.generate(**x, **kw)[:, L:])
        with mlv.route(m, [0, 1]):
            routed = m.generate(**x, **kw)[:, L:]
    assert torch.equal(routed, torch.stack([each[0][0], each[1][1]]))


def test_images_given_per_row_are_routed_by_their_base_views(tiny):
    assert_mixed_route_per_task(adapted(tiny), batch(tiny, [2, 0, 1], nested=True), [0, 1, 0])


def test_rows_of_images_and_videos_take_their_rows_task(tiny):
    """Videos reach the tower and the projector in a call of their own, after the images': a mixed route over rows
    holding them was refused ('the rows hold [6, 8, 6] images, and they count the rows' video frames with their
    images' tiles'). Each call's tiles and frames are now counted per row (a PerCall), and each module of the image
    path takes its calls' counts in turn, so every row's logits, generated tokens (greedy and 3 beams) and gradients
    are its task's alone (float64)."""
    m = adapted(tiny, targets={"image": [r"vision_tower\..*\.(q|v)_proj$", r"multi_modal_projector\.linear_(1|2)$"],
                               "text": [r"language_model\..*\.(q|v)_proj$"]}).double()
    x = {k: v.double() if v.is_floating_point() else v for k, v in video_batch(tiny, [1, 0, 2], [1, 2, 0]).items()}
    counts = llava_onevision_row_tiles(m.model, (), x)
    assert counts == [6, 8, 6] and counts.calls == [("image", None, [3, 8, 0]), ("video", None, [3, 0, 6])]
    assert_mixed_route_per_task(m, x, [0, 1, 0])
    m.train()
    assert_mixed_gradients_are_per_task_sums(m, x, ("vision_tower", "multi_modal_projector", "language_model"))


def test_a_row_holding_part_of_a_video_is_refused_naming_the_videos(tiny):
    """Video tokens matched to each video's count (3 frames x 2 x 2 pooled features + a newline: 13): 19 and 7
    tokens for two videos hold 1 + 6/13 and 7/13 of them."""
    m = adapted(tiny)
    x = video_batch(tiny, [1, 1])
    vid, pad = m.config.video_token_id, m.config.text_config.pad_token_id
    assert (x["input_ids"] == vid).sum(-1).tolist() == [llava_onevision_video_tokens(m.model, 3)] * 2 == [13, 13]
    ids = torch.full((2, 21), pad)
    ids[0, :20], ids[1, 12:] = torch.tensor([5, *[vid] * 19]), torch.tensor([5, *[vid] * 7, 6])
    x.update(input_ids=ids, attention_mask=(ids != pad).long())
    with torch.no_grad(), mlv.route(m, [0, 1]), pytest.raises(
            mlv.RoutingError, match=r"(?s)rows hold \[1\.46\d*, 0\.53\d*\] videos.*in a call of their own"):
        m(**x)


def test_a_one_task_route_takes_videos(tiny):
    """Under one task the videos (and pictures beside them) run, and each task's adapters change them."""
    m = adapted(tiny)
    x = video_batch(tiny, [1, 2], [1, 0])
    kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, num_beams=3, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        out = {}
        for t in ("a", "b"):
            with mlv.route(m, t):
                out[t] = m(**x).logits
                assert m.generate(**x, **kw).shape == (2, x["input_ids"].shape[1] + 3)
    assert (out["a"] - out["b"]).abs().max() > 1e-3


def test_one_single_frame_video_per_row_routes_by_rows(tiny):
    """Rows holding one video of one frame each and no picture: the tower's video call has one frame per row, routed
    as the rows (the count, [1, 1, 1], lets it through)."""
    x = video_batch(tiny, [1, 1, 1], frames=1)
    assert llava_onevision_row_tiles(fresh(tiny).model, (), x) == [1, 1, 1]
    assert_mixed_route_per_task(adapted(tiny), x, [0, 1, 0])


def test_encoded_images_of_several_tiles_are_refused(tiny):
    m = adapted(tiny)
    x = batch(tiny, [2, 0])
    with torch.no_grad():
        with mlv.route(m, "a"):
            encoded = {"image": m.model.get_image_features(x["pixel_values"], x["image_sizes"], return_dict=True)}
        y = {k: v for k, v in x.items() if k != "pixel_values"}
        with mlv.route(m, [0, 1]), pytest.raises(mlv.RoutingError, match=r"\[2, 0\] images, and their features"):
            m(**y, mm_encoder_outputs=encoded)


def test_a_siglip_tower_with_full_features_is_counted(tmp_path):
    """LLaVA-OneVision's own setting: a SigLIP tower (no CLS position) under vision_feature_select_strategy="full"."""
    t = build(tmp_path, "siglip", "full")
    m = adapted(t)
    x = batch(t, [2, 0, 1])
    assert llava_onevision_row_tiles(m.model, (), x) == [8, 0, 3]
    assert_mixed_route_per_task(m, x, [0, 1, 0])
    assert_mixed_route_per_task(m, batch(t, [2, 0, 1], nested=True), [0, 1, 0])
