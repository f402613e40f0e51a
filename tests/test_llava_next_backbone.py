"""The LLaVA-NeXT and LLaVA-OneVision backbone classes (--backbone hf:DIR of a tiny directory with its processor):
every image read at one square pinpoint, its base view and tiles made on the device as the processor makes them of
that square; the collator's ids against the processor's, per-row losses, mixed-task routes (each row's five views
routed to its task), routed generate, cached candidate scores, the refusals, and the train and eval commands end to
end."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest
import test_llava_next
import test_llava_onevision
import torch
from llava_tiny import _word_tokenizer
from PIL import Image
from test_generative_tasks import _attach
from test_llava_next import PINPOINTS, SIDE
from vlm_checks import (
    assert_lm_loss_per_row,
    assert_mixed_lm_loss_per_task,
    assert_routed_generate_per_task,
    assert_train_and_eval_commands,
    cached_and_full_scores,
    one_image_token_short,
    pictures,
    prompts,
    square_images,
)

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import BackboneError, LlavaNextBackbone, LlavaOnevisionBackbone, load_backbone
from mtl_lora_vl.backbones.base import GENERATE, GRAD_CHECKPOINTING, LM_LOGITS
from mtl_lora_vl.backbones.llava_next import _processor_several_tokens
from mtl_lora_vl.family_anyres import llava_onevision_image

# Per family: its tiny directory's builder, backbone class and image tokens per 64-px canvas (LLaVA-NeXT: 16 base, 8 x 8
# grid, 8 newlines; OneVision under "anyres_max_2": the grid interpolated down to 5 x 5, 5 newlines)
FAMILIES = {"llava_next": (test_llava_next.build, LlavaNextBackbone, 88),
            "llava_onevision": (test_llava_onevision.build, LlavaOnevisionBackbone, 46)}


@pytest.fixture(scope="module", params=list(FAMILIES))
def folder(request, tmp_path_factory):
    return FAMILIES[request.param][0](tmp_path_factory.mktemp(request.param))[2]


@pytest.fixture
def bb(folder):
    return load_backbone(f"hf:{folder}")


def _plain(bb):
    """The model's own image inputs for the images (what the backbone gives it), for the checks against it."""
    return lambda images, ids: bb._vision_inputs(images)


def _squares(bb, n: int, seed: int = 0) -> tuple[list[Image.Image], torch.Tensor]:
    """``n`` random pictures of another aspect as the loader makes them (canvases) and as the device has them."""
    return square_images(bb, pictures([(48, 40 + 20 * i) for i in range(n)], seed), bb.square_resize)


def test_loads_from_a_directory_reading_images_at_a_square_pinpoint(bb):
    """Pinpoints 32x64, 64x32, 64x64 of 32-px tiles: 64-px canvases, 2 x 2 tiles, as many tokens as the processor
    counts for a 64 x 64 image."""
    _, cls, tokens = FAMILIES[bb.family]
    assert type(bb) is cls
    assert bb.capabilities == {LM_LOGITS, GENERATE, GRAD_CHECKPOINTING}
    assert (bb.image_size, bb.tile_size, bb.num_image_tokens) == (64, SIDE, tokens)
    assert bb.processor._get_num_multimodal_tokens(image_sizes=[[64, 64]])["num_image_tokens"] == [tokens]
    assert bb.resize.mode == "anyres" and bb.resize.size == 64 and bb.resize.anyres.interpolation == "bicubic"
    bb.native_aspect(False)   # the square canvas, kept reachable
    assert bb.resize.mode == "squash" and bb.resize.size == 64 and bb.resize.interpolation == "bicubic"
    assert bb.lm_collator().layout.anyres is None


def test_the_collators_ids_and_the_device_views_equal_the_processors(bb):
    """For a canvas, the processor (given that square) writes the collator's ids (plus the end token the test
    tokenizer appends); its tiles are the device's to float rounding and its base view to one 8-bit level (its
    fixed-point resize weights; without the per-pass rounding the base differed by 3.5 levels)."""
    squares, mine = _squares(bb, 3)
    for p in (f"{bb.image_token} caption:", f"question: what colour is the circle? {bb.image_token} answer:"):
        ours = bb.lm_collator()([p])["input_ids"][0].tolist()
        theirs = bb.processor(images=[squares[0]], text=[p], return_tensors="pt")["input_ids"][0].tolist()
        assert ours + [bb.processor.tokenizer.eos_token_id] == theirs
    theirs = bb.processor.image_processor(images=squares, return_tensors="pt")
    views = bb._vision_inputs(mine)
    assert views["pixel_values"].shape == theirs["pixel_values"].shape == (3, 5, 3, SIDE, SIDE)
    assert views["image_sizes"].tolist() == theirs["image_sizes"].tolist() == [[64, 64]] * 3
    torch.testing.assert_close(views["pixel_values"][:, 1:], theirs["pixel_values"][:, 1:], atol=1e-5, rtol=1e-5)
    level = 1 / 255 / min(bb.std)
    diff = (views["pixel_values"][:, 0] - theirs["pixel_values"][:, 0]).abs().max().item()
    assert diff <= level + 1e-5, diff / level
    if bb.resize.anyres.several_fill is None:   # LLaVA-NeXT tiles every image: an image of the tower's side is no input
        with pytest.raises(ValueError, match=r"expected images \(B, 3, 64, 64\)"):
            bb._vision_inputs(torch.zeros(1, 3, 32, 32))
    else:   # OneVision: the one view of an image of a row of several (a batch of them leaves their sizes out)
        assert bb._vision_inputs(torch.zeros(1, 3, 32, 32))["pixel_values"].shape == (1, 1, 3, 32, 32)


def test_lm_loss_per_row_equals_each_row_alone_and_the_plain_model(bb):
    assert_lm_loss_per_row(bb, _plain(bb))


def test_mixed_task_lm_loss_equals_each_task_alone(bb):
    """Each row's base view and four tiles take its task in the vision tower (five views per row)."""
    _attach(bb, ("a", "b"), std=0.1)
    assert_mixed_lm_loss_per_task(bb)


def test_a_batch_of_one_tasks_rows_routes_as_the_task(bb):
    """Ids all equal (a training batch whose rows share a task): each row's five views were refused by the tower's
    layers ('routed 2 task ids but the batch here has 10 samples') (helper 165)."""
    _attach(bb, ("a", "b"), std=0.1)
    b = bb.lm_collator()(prompts(bb, 2), ["red", "a blue square"])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with mlv.route(bb.model, "b"):
            want = bb.lm_loss(images, **b)
        with mlv.route(bb.model, [1, 1]):
            torch.testing.assert_close(bb.lm_loss(images, **b), want)


@pytest.mark.parametrize("beams", [1, 3])
def test_routed_generate_equals_each_task_alone(bb, beams):
    _attach(bb, ("a", "b"), std=0.1)
    assert_routed_generate_per_task(bb, beams, _plain(bb))


def test_cached_sequence_scores_equal_the_full_computation(bb):
    _attach(bb, ("a", "b"), std=0.1)
    cached_and_full_scores(bb)


def test_a_wrong_image_token_count_is_refused(bb):
    ids, b = one_image_token_short(bb)
    n = bb.num_image_tokens
    with pytest.raises(BackboneError, match=f"row 0 of input_ids has {n - 1} image tokens"
                                            f".*gives {n} features.*lm_coll"):
        bb.lm_loss(torch.randn(2, 3, 64, 64), ids, b["attention_mask"], b["labels"])


def test_llava_16s_canvas_and_token_count(tmp_path):
    """LLaVA-1.6's 336-px CLIP tower in 14-px patches and its pinpoints: a 672-px canvas of 2 x 2 tiles, 576 + 48·49
    = 2,928 tokens, as its processor counts a 672 x 672 image."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextImageProcessor,
        LlavaNextModel,
        LlavaNextProcessor,
    )

    pins = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    cfg = LlavaNextConfig(vision_config=CLIPVisionConfig(image_size=336, patch_size=14, num_hidden_layers=1),
                          text_config=LlamaConfig(num_hidden_layers=1), image_grid_pinpoints=pins)
    with torch.device("meta"):
        model = LlavaNextModel(cfg)
    side = LlavaNextBackbone._image_side(cfg, None, "x")
    assert side == 672 and LlavaNextBackbone._image_tokens(model, side) == 2928
    images = LlavaNextImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                     image_grid_pinpoints=pins)
    processor = LlavaNextProcessor(image_processor=images, tokenizer=_word_tokenizer(tmp_path, None), patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    said = processor._get_num_multimodal_tokens(image_sizes=[[672, 672]])
    assert said["num_image_tokens"] == [2928]


def test_llava_onevisions_canvas_and_token_count(tmp_path):
    """LLaVA-OneVision's 384-px SigLIP tower in 14-px patches, its 36 pinpoints and "anyres_max_9": a 1152-px canvas
    of 3 x 3 tiles (the largest grid it keeps whole; 2304 px would take 37 tower passes for features interpolated
    down to about as many tokens), 729 + 81·82 = 7,371 tokens, as its processor counts a 1152 x 1152 image; an image
    of a row of several is 729 + 1 = 730 (its base view), by the model and by the processor."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionModel,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    images = LlavaOnevisionImageProcessor()
    cfg = LlavaOnevisionConfig(vision_config=SiglipVisionConfig(image_size=384, patch_size=14, num_hidden_layers=1),
                               text_config=Qwen2Config(num_hidden_layers=1), vision_feature_select_strategy="full",
                               image_grid_pinpoints=images.image_grid_pinpoints, vision_aspect_ratio="anyres_max_9")
    with torch.device("meta"):
        model = LlavaOnevisionModel(cfg)
    side = LlavaOnevisionBackbone._image_side(cfg, None, "x")
    assert side == 1152 and LlavaOnevisionBackbone._image_tokens(model, side) == 7371
    tok = _word_tokenizer(tmp_path, None)
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    processor = LlavaOnevisionProcessor(image_processor=images, video_processor=LlavaOnevisionVideoProcessor(),
                                        tokenizer=tok, num_image_tokens=729, vision_feature_select_strategy="full",
                                        vision_aspect_ratio="anyres_max_9")
    assert processor._get_num_multimodal_tokens(image_sizes=[[1152, 1152]])["num_image_tokens"] == [7371]
    # an image of a row of several (nlvr's pair): its base view and a newline, by the model and by its processor
    assert llava_onevision_image(model, (side, side), tiled=False)[0] == _processor_several_tokens(processor) == 730


@pytest.mark.parametrize("aspect,side", [("anyres_max_9", 96), ("anyres_max_8", 96), ("anyres_max_4", 64),
                                         ("anyres_max_1", 32)])
def test_onevisions_canvas_is_the_largest_grid_it_keeps_whole(aspect, side):
    """The model shrinks a grid's features past 1.1·√N tiles a side: under "anyres_max_8" a 3 x 3 grid is kept whole
    (1.06), so the canvas is 96 px (a rule of at most N tiles took 64; helper 167)."""
    cfg = NS(vision_config=NS(image_size=32), vision_aspect_ratio=aspect,
             image_grid_pinpoints=[[32, 32], [64, 64], [96, 96], [128, 128], [32, 64]])
    assert LlavaOnevisionBackbone._image_side(cfg, None, "x") == side


def test_onevisions_aspect_ratio_must_name_its_tiles_and_be_the_processors(tmp_path):
    """'anyres' was refused as 'invalid literal for int()'; a processor of another vision_aspect_ratio loaded, and
    expanded a large picture to other counts than the model fills (helper 167)."""
    cfg = NS(vision_config=NS(image_size=32), vision_aspect_ratio="anyres", image_grid_pinpoints=[[64, 64]])
    with pytest.raises(BackboneError, match=r"vision_aspect_ratio 'anyres' is not of the form 'anyres_max_N'"):
        LlavaOnevisionBackbone._image_side(cfg, None, "x")
    from transformers import AutoProcessor

    folder = test_llava_onevision.build(tmp_path / "ov")[2]
    proc = AutoProcessor.from_pretrained(str(folder))
    proc.vision_aspect_ratio = "anyres_max_16"
    proc.save_pretrained(str(folder))
    with pytest.raises(BackboneError, match=r"vision_aspect_ratio 'anyres_max_16' is not the model's \(config\."
                                            r"vision_aspect_ratio 'anyres_max_2'\)"
                                            r".*vision_aspect_ratio='anyres_max_2'"):
        load_backbone(f"hf:{folder}")


def test_pinpoints_without_a_square_are_refused():
    cfg = NS(vision_config=NS(image_size=32), image_grid_pinpoints=[[32, 64], [64, 32], [48, 48]])
    with pytest.raises(BackboneError, match=r"hold no square of whole 32-px tiles.*\[64, 64\]"):
        LlavaNextBackbone._image_side(cfg, None, "x")
    assert PINPOINTS[-1] == [64, 64]


def test_a_processor_cutting_other_tiles_than_the_tower_takes_is_refused(folder, tmp_path):
    other = _with_processor(folder, tmp_path / "crop48", crop_size={"height": 48, "width": 48})
    with pytest.raises(BackboneError, match=r"\[32, 48\] px, but the vision tower takes 32 px.*crop_size="):
        load_backbone(f"hf:{other}")


def _with_processor(folder, out, **fields):
    """A copy of ``folder`` whose image processor has ``fields`` changed."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(str(folder))
    for k, v in fields.items():
        setattr(proc.image_processor, k, v)
    proc.save_pretrained(str(out))
    for f in ("config.json", "model.safetensors"):
        (out / f).write_bytes((folder / f).read_bytes())
    return out


@pytest.mark.parametrize("pins", [[[32, 64], [64, 32]], [*PINPOINTS, [96, 96]]], ids=["without", "beyond"])
def test_processor_pinpoints_other_than_the_models_are_refused(folder, tmp_path, pins):
    """Without the config's 64-px square the message named the processor's size ('makes 32x32 images where the
    vision tower takes 64x64'; the tower takes 32); with a 96-px square the config lacks, it loaded, and a merged
    export's processor tiled large squares 3 x 3 for a model that counts 2 x 2 (helper 166)."""
    with pytest.raises(BackboneError, match=r"image_grid_pinpoints .* are not the model's.*save the processor with "
                                            r"image_grid_pinpoints=\[\[32, 64\], \[64, 32\], \[64, 64\]\]"):
        load_backbone(f"hf:{_with_processor(folder, tmp_path / 'other', image_grid_pinpoints=pins)}")


@pytest.mark.parametrize("tower,strategy,fix", [("clip", "full", "default"), ("siglip", "default", "full")])
def test_a_tower_and_strategy_the_model_cannot_lay_out_are_refused(tmp_path, tower, strategy, fix):
    """A tile's features must be grid² (16 here): CLIP under "full" (17) and SigLIP under "default" (15) loaded, and
    the first forward failed inside transformers on a reshape (helper 166)."""
    test_llava_next.build(tmp_path, tower, strategy)
    with pytest.raises(BackboneError, match=rf"'{strategy}' gives \d+ features per tile"
                                            rf".*4 x 4 = 16; set it to '{fix}'"):
        load_backbone(f"hf:{tmp_path}")


def test_a_bilinear_base_view_is_within_one_level_at_llava_size():
    """resample=2: the bicubic's two rounded passes were 2 levels off the processor at 672 -> 336 (12% of values);
    one antialiased pass is within one (helper 166)."""
    from transformers import LlavaNextImageProcessor

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    processor = LlavaNextImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                        image_grid_pinpoints=[[672, 672]], resample=2)
    x = np.random.default_rng(0).integers(0, 256, (672, 672, 3), dtype=np.uint8)
    theirs = processor(images=[x], return_tensors="pt")["pixel_values"][:, 0]
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255 - m) / s
    bb = NS(mean=mean, std=std, image_size=672, tile_size=336, base_filter="bilinear", normalisers=lambda _: (m, s))
    assert ((LlavaNextBackbone._base_view(bb, pixels) - theirs) * s * 255).abs().max().item() <= 1 + 1e-3


def test_train_and_eval_commands(folder, tmp_path, capsys):
    assert_train_and_eval_commands(folder, tmp_path, capsys)
