"""Mistral 3 (tiny, from its config): the family row on the bare model -- default targets in the Pixtral tower and
the Mistral decoder, mixed-task routes (logits, greedy and beam generate, gradients) through the tower that packs
every image's patches into one sequence, images of different sizes, the projector when targets name it, the PEFT
export and the merged checkpoint; and the backbone class (--backbone hf:DIR, square images): the collator's ids and
the device pixels against the processor's, per-row losses, mixed-task routes, routed generate, cached candidate
scores, the train and eval commands."""

from __future__ import annotations

import pytest
import torch
from mistral3_tiny import IMAGE_TOKEN, inputs, save_tiny_mistral3, tiny_mistral3, tiny_mistral3_backbone
from test_generative_tasks import _attach
from vlm_checks import (
    assert_exported_peft_matches,
    assert_lm_loss_per_row,
    assert_merged_checkpoint_matches,
    assert_mixed_gradients_are_per_task_sums,
    assert_mixed_lm_loss_per_task,
    assert_mixed_route_per_task,
    assert_routed_generate_per_task,
    assert_train_and_eval_commands,
    cached_and_full_scores,
    perturb_adapters,
    pictures,
    square_images,
)

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import Mistral3Backbone
from mtl_lora_vl.families import find_family


def _adapted(method: str = "mtl_lora", targets=None):
    torch.manual_seed(0)
    m = tiny_mistral3().eval()
    cfg = mlv.MTLLoRAConfig(tasks=["a", "b"], method=method, r=4, **({"targets": targets} if targets else {}))
    mlv.attach(m, cfg)
    return perturb_adapters(m)


def test_default_targets_take_the_pixtral_layers_and_the_language_model():
    m = _adapted()
    info = m._mtl_lora
    assert find_family(m).name == info.family == "mistral3"
    linears = {n for n, mod in tiny_mistral3().named_modules() if isinstance(mod, torch.nn.Linear)}
    vision = {n for n in linears if ".vision_tower." in n}
    text = {n for n in linears if ".language_model." in n}
    assert len(vision) == 14 and len(text) == 14     # 2 layers: q k v o gate up down, in each tower
    assert {n for n, t in info.towers.items() if t == "image"} == vision
    assert {n for n, t in info.towers.items() if t == "text"} == text


@pytest.mark.parametrize("method", ["mtl_lora", "task_lora"])
def test_a_mixed_route_equals_each_task_alone(method):
    """Logits, greedy and 3-beam generate under route [0, 1]: the Pixtral tower reads both images as one sequence of
    (1, 32, 32); each image's patches take its row's task."""
    assert_mixed_route_per_task(_adapted(method), inputs(2), [0, 1])


def test_images_of_different_sizes_take_their_rows_task():
    """Pixtral reads each image at its own size (image_sizes): a 32 x 32 image (16 patches) and a 16 x 32 one (8)."""
    assert_mixed_route_per_task(_adapted(), inputs(2, sizes=[(32, 32), (16, 32)]), [1, 0])


def test_a_row_of_two_images_takes_its_task():
    """Row 0 holds two images (32 x 32 and 16 x 32), row 1 one: each image's patches take its row's task."""
    from mistral3_tiny import image_ids
    from vl_tiny import left_padded

    ids, mask = left_padded([[1, *image_ids(32, 32), *image_ids(16, 32), 20, 21], [1, *image_ids(32, 32), 22, 23, 24]])
    torch.manual_seed(4)
    x = dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(3, 3, 32, 32),
             image_sizes=torch.tensor([(32, 32), (16, 32), (32, 32)]))
    assert_mixed_route_per_task(_adapted(), x, [1, 0])


def test_host_image_counts_route_as_the_ids_without_reading_them(monkeypatch):
    """Each row's images from the host (host_image_counts: lm_loss(image_counts=), the loader's lm_image_counts):
    rows of two images of their own sizes and one route as counting the ids does, without reading them; counts
    that do not add up to the images are left for the ids' count."""
    from mistral3_tiny import image_ids
    from vl_tiny import left_padded

    from mtl_lora_vl import family_images
    from mtl_lora_vl.adapters.row_images import host_image_counts

    m = _adapted()
    ids, mask = left_padded([[1, *image_ids(32, 32), *image_ids(16, 32), 20, 21], [1, *image_ids(32, 32), 22, 23, 24]])
    x = dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(3, 3, 32, 32),
             image_sizes=torch.tensor([(32, 32), (16, 32), (32, 32)]))
    read, reads = family_images._token_counts, []
    with torch.no_grad(), mlv.route(m, [1, 0]):
        want = m(**x).logits
        monkeypatch.setattr(family_images, "_token_counts", lambda *a: reads.append(a) or read(*a))
        with host_image_counts(m, [2, 1]):
            torch.testing.assert_close(m(**x).logits, want)
        assert not reads
        with host_image_counts(m, [1, 1]):
            torch.testing.assert_close(m(**x).logits, want)
        assert len(reads) == 1


def test_images_encoded_before_the_call_one_per_row_of_their_own_sizes_run_under_a_mixed_route():
    """mm_encoder_outputs of a 32 x 32 and a 16 x 32 image, one per row: the count ignored image_sizes (as every
    image filled its canvas), read [1.33, 0.67] images and refused; counted by size they run, as their pixels do,
    and a row of two encoded images beside none is still refused."""
    m = _adapted()
    x = inputs(2, sizes=[(32, 32), (16, 32)])
    from mistral3_tiny import image_ids
    from vl_tiny import left_padded

    rest = {k: v for k, v in x.items() if k != "pixel_values"}
    with torch.no_grad(), mlv.route(m, [0, 1]):
        encoded = {"image": m.model.get_image_features(pixel_values=x["pixel_values"], image_sizes=x["image_sizes"],
                                                       return_dict=True)}
        torch.testing.assert_close(m(**rest, mm_encoder_outputs=encoded).logits, m(**x).logits)
        ids, mask = left_padded([[1, *image_ids(32, 32), *image_ids(16, 32), 20], [1, 21, 22]])
        with pytest.raises(mlv.RoutingError, match=r"\[2, 0\] images, and their features were made before the call"):
            m(input_ids=ids, attention_mask=mask, image_sizes=x["image_sizes"], mm_encoder_outputs=encoded)


def test_a_bare_model_gets_the_one_image_token_mend_at_attach():
    """A batch whose one image (16 x 16) makes one [IMG] token in all, beside a row without an image: transformers
    squeezed the projector's (1, D) features to (D,) and failed ('split_with_sizes expects split_sizes to sum exactly
    to 32') also on the bare attached model; attach installs the family's mend, so logits and generate under route
    [0, 1] equal each task alone. Unload takes the mend off (the model as it was); the inner model gets it too."""
    from mistral3_tiny import image_ids
    from vl_tiny import left_padded

    from mtl_lora_vl.family_images import pixtral_keep_one_row
    from mtl_lora_vl.mtl_lora_model import unload

    def mends(model):
        return sum(h is pixtral_keep_one_row for m in model.modules() for h in m._forward_hooks.values())

    ids, mask = left_padded([[1, *image_ids(16, 16), 20, 21], [1, 22, 23, 24, 25]])
    x = dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(1, 3, 32, 32, generator=torch.Generator()
             .manual_seed(3)), image_sizes=torch.tensor([(16, 16)]))
    m = _adapted()
    assert mends(m) == 1
    assert_mixed_route_per_task(m, x, [0, 1])
    unload(m)
    assert mends(m) == 0
    inner = mlv.attach(tiny_mistral3().model, mlv.MTLLoRAConfig(tasks=["a"], r=2, targets={"text": ["q_proj$"]}))
    assert mends(inner) == 1


def test_the_projector_when_targets_name_it():
    """The projector's patch merger and linear layers (every 4 patches one row) are routed image by image too."""
    m = _adapted(targets={"image": [r"multi_modal_projector\.(patch_merger\.merging_layer|linear_[12])$"]})
    assert len(m._mtl_lora.towers) == 3
    assert_mixed_route_per_task(m, inputs(3, sizes=[(32, 32), (16, 32), (32, 32)]), [0, 1, 1])


def test_mixed_gradients_equal_the_per_task_sum():
    m = _adapted()
    m.train()
    assert_mixed_gradients_are_per_task_sums(m, inputs(3), ("vision_tower", "language_model"))


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")   # PEFT 0.21 reads it
def test_peft_export_loads_with_the_same_outputs(tmp_path):
    pytest.importorskip("peft")
    m = _adapted()
    assert_exported_peft_matches(m, lambda: tiny_mistral3().eval(), tmp_path / "peft", inputs(2))


def test_a_merged_checkpoint_loads_with_from_pretrained_and_the_same_outputs(tmp_path):
    m = _adapted()
    assert_merged_checkpoint_matches(m, type(tiny_mistral3()), inputs(2), tmp_path / "merged",
                                     atol=1e-4)   # (fp32 rounding of W + ΔW)


# ------------------------------------------------------------------------------------------ the backbone
@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("mistral3")


@pytest.fixture
def bb(dirs):
    return tiny_mistral3_backbone(dirs)


def _plain_inputs(images, ids):
    """What the processor gives beside the ids: the pixels and each image's size."""
    return dict(pixel_values=images, image_sizes=torch.tensor([tuple(images.shape[-2:])] * images.shape[0]))


def test_loads_from_a_directory_with_its_processor(bb):
    assert type(bb) is Mistral3Backbone and bb.family == "mistral3"
    assert bb.image_token == IMAGE_TOKEN and bb.image_size == 32 and bb.num_image_tokens == 4
    assert bb.resize.mode == "native" and bb.resize.longest and bb.resize.size == 32   # each image at its own size
    assert bb.layout.token_side == 16 and not bb.needs_image_sizes
    bb.native_aspect(False)   # --image-reading square: today's squash
    assert bb.resize.mode == "squash" and bb.resize.size == 32 and bb.layout.token_side == 0
    assert set(bb.image_breaks) <= set(bb._banned_ids())   # [IMG_BREAK] / [IMG_END] never generated


def test_the_collators_ids_and_the_device_pixels_equal_the_processors(bb):
    """The prompt's ids ([IMG] rows ended by [IMG_BREAK], the last by [IMG_END]) and the loader's pixels equal what
    PixtralProcessor makes of the squares (--image-reading square)."""
    bb.native_aspect(False)
    squares, pixels = square_images(bb, pictures([(48, 40)] * 2))
    theirs = bb.processor(text=[f"{IMAGE_TOKEN} caption:"] * 2, images=squares, return_tensors="pt")
    mine = bb.lm_collator()([f"{bb.image_token} caption:"] * 2)
    assert mine["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert theirs["image_sizes"].tolist() == [[32, 32]] * 2
    torch.testing.assert_close(pixels, theirs["pixel_values"], atol=1e-5, rtol=1e-5)


def test_lm_loss_per_row_equals_each_row_alone_and_the_plain_model(bb):
    assert_lm_loss_per_row(bb, _plain_inputs)


def test_mixed_task_lm_loss_equals_each_task_alone(bb):
    _attach(bb, ("a", "b"), std=0.3)
    assert_mixed_lm_loss_per_task(bb)


@pytest.mark.parametrize("beams", [1, 3])
def test_routed_generate_equals_each_task_alone(bb, beams):
    _attach(bb, ("a", "b"), std=0.3)
    assert_routed_generate_per_task(bb, beams, _plain_inputs)


def test_cached_sequence_scores_equal_the_full_computation(bb):
    _attach(bb, ("a", "b"), std=0.3)
    cached_and_full_scores(bb)


def test_images_of_another_size_are_refused_by_name(bb):
    with pytest.raises(ValueError, match=r"16x24 pixels does not fill whole 16x16 image tokens.*backbone.resize"):
        bb.generate(torch.zeros(1, 3, 32, 32), max_len=2, image_sizes=[(16, 24)])
    bb.native_aspect(False)
    with pytest.raises(ValueError, match="takes whole 32x32 images"):
        bb.generate(torch.zeros(1, 3, 32, 32), max_len=2, image_sizes=[(16, 32)])


def test_train_and_eval_commands(dirs, tmp_path, capsys):
    folder = dirs / "tiny_mistral3"
    if not (folder / "config.json").is_file():
        save_tiny_mistral3(folder)
    assert_train_and_eval_commands(folder, tmp_path, capsys)


def test_host_image_sizes_are_taken_only_where_they_fit_the_tower_or_projector_call():
    """The backbone's host copy of ``image_sizes`` gives each image's patch rows without reading the call's (one
    read per image before): taken where it has the call's images and fits the tower's canvas (or adds up to the
    projector's patches); else the call's sizes are read (one read). Routed logits are the same with it."""
    from mtl_lora_vl.adapters.row_images import host_image_counts
    from mtl_lora_vl.family_images import pixtral_image_rows

    m = _adapted()
    tower, projector = m.model.vision_tower, m.model.multi_modal_projector
    pixels, sizes = torch.zeros(2, 3, 32, 32), torch.tensor([(32, 32), (16, 32)])
    call = {"image_sizes": sizes}
    assert pixtral_image_rows((pixels,), call, tower, host={"image_sizes": [(32, 32), (16, 16)]}) == [16, 4]
    for wrong in ([(32, 32)], [(48, 32), (16, 32)]):   # one image short; larger than the canvas: the call's own
        assert pixtral_image_rows((pixels,), call, tower, host={"image_sizes": wrong}) == [16, 8]
    assert pixtral_image_rows((pixels,), {}, tower, host={"image_sizes": [(32, 32), (16, 32)]}) == [16, 16]   # canvas
    features = torch.zeros(24, 32)
    assert pixtral_image_rows((features, sizes), {}, projector, host={"image_sizes": [(16, 32), (32, 32)]}) == [8, 16]
    assert pixtral_image_rows((features, sizes), {}, projector, host={"image_sizes": [(16, 16), (32, 32)]}) == [16, 8]

    x = inputs(sizes=[(32, 32), (16, 32)])
    with torch.no_grad(), mlv.route(m, [0, 1]):
        read = m(**x).logits
        with host_image_counts(m, None, {"image_sizes": [(32, 32), (16, 32)]}):
            assert torch.equal(m(**x).logits, read)
