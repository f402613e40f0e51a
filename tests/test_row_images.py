"""Each row's images counted under a mixed-task route, on every VLM family (adapters/row_images.py): the vision
tower gets the images without their rows, so a row with two images beside a row with none sent the second image
through the other row's task, silently (row 0 differed from its task alone by 0.57 on a tiny LLaVA, 0.29 on a
tiny Idefics3). That was refused; now each row's images take its task (test_several_images.py for every family),
whether the inputs come by keyword or by position, as ids or embeddings, to the whole model or its inner one, and
what cannot be routed is refused."""

from __future__ import annotations

import copy
import re

import idefics3_tiny
import pytest
import torch
from conftest import tiny_llava, tiny_paligemma
from gemm_rounding import assert_close_at_scale
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.modeling_outputs import BaseModelOutputWithPooling
from vlm_checks import perturb_adapters

import mtl_lora_vl as mlv


def _adapted(model):
    return perturb_adapters(mlv.attach(model.eval(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=4)))


def _assert_per_task(model, call, ids=(0, 1)):
    """``call()`` under route(model, ids) gives each row what its task alone gives (and the tasks differ)."""
    with torch.no_grad():
        with mlv.route(model, list(ids)):
            mixed = call()
        alone = []
        for t in "ab":
            with mlv.route(model, t):
                alone.append(call())
    # At scale: a mixed route runs the image path image by image, alone it runs the batch -- other GEMM shapes, whose
    # rounding MKL picks by CPU (up to 8.9e-4 of the logits' scale on an AVX-512 machine: Idefics3's split crops);
    # a row on the wrong task is 0.3-0.7 off.
    assert_close_at_scale(mixed, torch.stack([alone[t][i] for i, t in enumerate(ids)]))
    assert (alone[0] - alone[1]).abs().max() > 1e-3


def _rows(first: list[int], second: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(first), len(second))
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate((first, second)):   # left-padded
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    return ids, mask


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_two_images_in_one_row_and_none_in_the_other_take_row_0s_task(family):
    model = _adapted(tiny_llava() if family == "llava" else tiny_paligemma())
    image = [95] * 16
    ids, mask = _rows([1, 5, *image, *image, 7], [1, 9, 10, 11])
    pixels = torch.randn(2, 3, 32, 32)
    _assert_per_task(model, lambda: model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits)
    # by position: LLaVA's and PaliGemma's forward(input_ids, pixel_values, attention_mask, ...)
    _assert_per_task(model, lambda: model(ids, pixels, mask).logits)


def test_idefics3_rows_are_counted_too():
    from idefics3_tiny import FAKE, GLOBAL, IMG, N_IMAGE, SIDE, tiny_idefics3

    model = _adapted(tiny_idefics3())
    image = [FAKE, GLOBAL, *[IMG] * N_IMAGE, FAKE]
    ids, mask = _rows([1, 5, *image, *image, 7], [1, 9, 10, 11])
    pixels = torch.zeros(2, 2, 3, SIDE, SIDE)   # row 0's two images; row 1's padding (all zero)
    pixels[0] = torch.randn(2, 3, SIDE, SIDE)
    _assert_per_task(model, lambda: model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits)


@pytest.mark.parametrize("family", ["llava", "paligemma", "idefics3"])
def test_rows_given_as_inputs_embeds_are_counted_too(family):
    """inputs_embeds instead of input_ids: the models find the image tokens by their embedding; the count read
    nothing and let row 0's second image through task b (0.59 / 0.65 / 0.34 off)."""
    if family == "idefics3":
        from idefics3_tiny import FAKE, GLOBAL, IMG, N_IMAGE, SIDE, tiny_idefics3

        model, image = _adapted(tiny_idefics3()), [FAKE, GLOBAL, *[IMG] * N_IMAGE, FAKE]
        pixels = torch.zeros(2, 2, 3, SIDE, SIDE)
        pixels[0] = torch.randn(2, 3, SIDE, SIDE)
        one = torch.randn(2, 1, 3, SIDE, SIDE)
    else:
        model, image = _adapted(tiny_llava() if family == "llava" else tiny_paligemma()), [95] * 16
        pixels = one = torch.randn(2, 3, 32, 32)
    ids, mask = _rows([1, 5, *image, *image, 7], [1, 9, 10, 11])
    embeds = model.get_input_embeddings()(ids)
    _assert_per_task(model, lambda: model(inputs_embeds=embeds, attention_mask=mask, pixel_values=pixels).logits)
    ids1, mask1 = _rows([1, 5, *image, 7], [1, 9, *image, 10])
    e1 = model.get_input_embeddings()(ids1)
    _assert_per_task(model, lambda: model(inputs_embeds=e1, attention_mask=mask1, pixel_values=one).logits)


def test_a_call_without_a_route_that_runs_no_adapter_is_not_refused():
    """Adapters on the vision tower only: a text-only call needs no route (no adapter runs), as before 331123b;
    the check asked the router for a route first and refused it ('no task was given')."""
    model = mlv.attach(tiny_llava().eval(), mlv.MTLLoRAConfig(
        tasks=["a", "b"], r=4, targets={"image": [r"vision_tower.*\.(q|k|v|out)_proj$"]}))
    ids = torch.randint(0, 90, (2, 8))
    with torch.no_grad():
        assert model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape == (2, 8, 96)


@pytest.mark.parametrize("sizes", [[(64, 96), (64, 96)], [(16, 64), (32, 32)]])
def test_idefics3_split_images_take_their_rows_task(tmp_path, sizes):
    """The released processors split each image into crops (each an image to the model: rows of 13 and 13, or 5 and
    17 of them). A mixed route over them was refused, naming do_image_splitting=False; each row's crops now take
    its task."""
    import numpy as np
    from idefics3_tiny import save_tiny_idefics3
    from PIL import Image
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    folder = save_tiny_idefics3(tmp_path / "tiny", splitting=True)
    processor = AutoProcessor.from_pretrained(str(folder))
    rng = np.random.default_rng(0)
    images = [[Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))] for h, w in sizes]
    batch = processor(text=["<image> a", "<image> b"], images=images, return_tensors="pt", padding=True)
    model = _adapted(Idefics3ForConditionalGeneration.from_pretrained(str(folder)))
    check = model._mtl_lora.row_check[1]
    seen = []
    h = model.model.vision_model.register_forward_pre_hook(lambda m, a: seen.append(check.current()))
    _assert_per_task(model, lambda: model(**batch).logits)
    h.remove()
    assert seen[0] == ([13, 13] if sizes[0] == sizes[1] else [5, 17])


def test_qwen_rows_without_vision_start_are_counted_by_their_image_tokens(tmp_path):
    """Prompts holding only <|image_pad|> (the processor expands it and the model runs them) hold one image per
    row, but a mixed route was refused with 'the rows hold [0, 0] images': the count read <|vision_start|> only.
    Now each row's image tokens are matched to the images' token counts from image_grid_thw (helper 145)."""
    import numpy as np
    from PIL import Image
    from qwen_tiny import save_tiny_qwen2vl
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    folder = save_tiny_qwen2vl(tmp_path / "q")
    processor = AutoProcessor.from_pretrained(str(folder))
    processor.tokenizer.padding_side = "left"
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((16, 64), (32, 32))]
    x = dict(processor(images=images, text=["<|image_pad|> a b", "<|image_pad|> c"], return_tensors="pt",
                       padding=True))
    model = _adapted(Qwen2VLForConditionalGeneration.from_pretrained(str(folder)))
    with torch.no_grad():
        alone = []
        for t in ("a", "b"):
            with mlv.route(model, t):
                alone.append(model(**x).logits)
        with mlv.route(model, [0, 1]):
            mixed = model(**x).logits
        assert not torch.allclose(alone[0], alone[1])
        assert (alone[0] - alone[1]).abs().max() > 1e-3   # the tasks differ by far more than the rounding below
        # the image path image by image (mixed) against the batch (alone): 7.1e-4 of the scale on an AVX-512 CPU
        assert_close_at_scale(mixed, torch.stack([alone[0][0], alone[1][1]]))


def test_idefics3_backbone_leaves_the_callers_processor_splitting(tmp_path):
    """Idefics3Backbone.from_model turned splitting off on the processor object the caller passed (and keeps): it
    sets its own copy (split by default, as the processor; off for unsplit squares)."""
    from idefics3_tiny import save_tiny_idefics3
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    from mtl_lora_vl.backbones.idefics3 import Idefics3Backbone

    folder = save_tiny_idefics3(tmp_path / "tiny", splitting=True)
    processor = AutoProcessor.from_pretrained(str(folder))
    backbone = Idefics3Backbone.from_model(Idefics3ForConditionalGeneration.from_pretrained(str(folder)).eval(),
                                           processor, "tiny")
    assert processor.image_processor.do_image_splitting is True
    assert backbone.processor is not processor and backbone.processor.image_processor.do_image_splitting is True
    backbone.native_aspect(False)
    assert processor.image_processor.do_image_splitting is True
    assert backbone.processor.image_processor.do_image_splitting is False


def test_a_call_to_the_inner_multimodal_model_is_counted_too():
    """The check sat on the outer ...ForConditionalGeneration: calling its inner model (LlavaModel) directly let
    row 0's second image through task b."""
    model = _adapted(tiny_llava())
    image = [95] * 16
    ids, mask = _rows([1, 5, *image, *image, 7], [1, 9, 10, 11])
    pixels = torch.randn(2, 3, 32, 32)
    _assert_per_task(model, lambda: model.model(input_ids=ids, attention_mask=mask,
                                                pixel_values=pixels).last_hidden_state)


@pytest.mark.parametrize("family,embeds", [("llava", False), ("llava", True), ("paligemma", False)])
@pytest.mark.parametrize("beams", [1, 2])   # (PaliGemma's generate takes no inputs_embeds)
def test_generate_with_two_images_in_one_row_and_none_in_the_other(family, beams, embeds):
    model = _adapted(tiny_llava() if family == "llava" else tiny_paligemma())
    image = [95] * 16
    ids, mask = _rows([1, 5, *image, *image, 7], [1, 9, 10, 11])
    text = {"inputs_embeds": model.get_input_embeddings()(ids)} if embeds else {"input_ids": ids}
    pixels = torch.randn(2, 3, 32, 32)
    kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, num_beams=beams, pad_token_id=0,
              eos_token_id=None, output_scores=True, return_dict_in_generate=True)
    _assert_per_task(model, lambda: torch.stack(model.generate(**text, attention_mask=mask, pixel_values=pixels,
                                                               **kw).scores, 1).view(2, beams, 3, -1))


TARGETS = {"image": [r"(vision_tower|vision_model).*layers\.\d+\.self_attn\.(q|k|v|out)_proj$"],
           "text": [r"language_model.*\.(q|v)_proj$"]}


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_attach_on_the_inner_model_counts_each_rows_images(family):
    torch.manual_seed(0)
    inner = (tiny_llava() if family == "llava" else tiny_paligemma()).eval().model
    model = perturb_adapters(mlv.attach(inner, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4, targets=TARGETS)))
    image = [95] * 16
    ids = torch.tensor([[1, 5, *image, *image, 7], [0] * 31 + [1, 9, 10, 11]])
    mask = (torch.arange(35) >= torch.tensor([[0], [31]])).long()
    pixels = torch.randn(2, 3, 32, 32)
    _assert_per_task(model, lambda: model(input_ids=ids, attention_mask=mask, pixel_values=pixels).last_hidden_state)


@pytest.mark.parametrize("family", ["llava", "paligemma", "qwen2_vl"])
def test_images_encoded_before_the_forward_are_counted_too(family):
    """mm_encoder_outputs (images encoded before the call, as generate passes them to the prefill): the check found
    no pixel values and let a row holding two encoded images beside one holding none run under a mixed route. They
    were encoded under the caller's route, not routed by their rows: refused."""
    if family == "qwen2_vl":
        from qwen_tiny import IMG_TOK, VE, VS, tiny_qwen2vl

        model, image = _adapted(tiny_qwen2vl()), [VS, *[IMG_TOK] * 4, VE]
        vision = {"pixel_values": torch.randn(32, 384), "image_grid_thw": torch.tensor([[1, 4, 4]] * 2)}
    else:
        model, image = _adapted(tiny_llava() if family == "llava" else tiny_paligemma()), [95] * 16
        vision = {"pixel_values": torch.randn(2, 3, 32, 32)}
    ids, mask = _rows([1, 5, *image, *image, 7], [1, 9, 10, 11])
    with torch.no_grad():
        with mlv.route(model, "a"):
            encoded = {"image": model.model.get_image_features(**vision, return_dict=True)}
        with mlv.route(model, [0, 1]), pytest.raises(mlv.RoutingError, match=r"\[2, 0\] images, and their features "
                                                                               "were made before the call"):
            model(input_ids=ids, attention_mask=mask, mm_encoder_outputs=encoded)
        ids1, mask1 = _rows([1, 5, *image, 7], [1, 9, *image, 10])
        with mlv.route(model, [0, 1]):   # one image per row: routed
            model(input_ids=ids1, attention_mask=mask1, mm_encoder_outputs=encoded)


@pytest.mark.parametrize("counts", [[2, 2], [1, 0, 1], [1, 1]])
def test_idefics3_images_encoded_before_the_forward_are_counted_by_image_not_by_row(counts):
    """Idefics3's get_image_features gives one pooler_output item per row (its images' features flattened): counted
    as one image each, rows of [2, 2] encoded images ran under a mixed route as one per row (row 1's images encoded
    under task a: 0.61 off its task b) and [1, 0, 1] went unchecked (12 tokens over 3 items). Counted by the tower's
    output (one per image) they are refused as LLaVA's are; one per row still runs, as its pixels do."""
    from test_several_images import several_images

    model, x = _adapted(idefics3_tiny.tiny_idefics3()), several_images("idefics3", counts)
    ids = [0, 1, 0][:len(counts)]
    rest = {k: v for k, v in x.items() if k != "pixel_values"}
    with torch.no_grad():
        with mlv.route(model, ids if counts == [1, 1] else "a"):
            encoded = {"image": model.model.get_image_features(pixel_values=x["pixel_values"], return_dict=True)}
        with mlv.route(model, ids):
            if counts != [1, 1]:
                refused = re.escape(f"{counts} images, and their features were made before")
                with pytest.raises(mlv.RoutingError, match=refused):
                    model(**rest, mm_encoder_outputs=encoded)
                return
            torch.testing.assert_close(model(**rest, mm_encoder_outputs=encoded).logits, model(**x).logits)


@pytest.mark.parametrize("family", ["llava", "paligemma", "idefics3"])
def test_chunked_prefill_with_one_image_per_row_runs_under_a_mixed_route(family):
    """generate(prefill_chunk_size=...) passes each prefill chunk its placeholders' features flattened into ONE item
    (transformers' _slice_mm_encoder_output), so counting items as images read [0.5, 0.5] images per row and refused
    a legitimate mixed-route generate (it ran before mm_encoder_outputs were counted)."""
    from conftest import llava_inputs

    torch.manual_seed(0)
    if family == "idefics3":
        import idefics3_tiny

        base, x = idefics3_tiny.tiny_idefics3(), idefics3_tiny.inputs(2)
    else:
        base, x = (tiny_llava() if family == "llava" else tiny_paligemma()), llava_inputs(2)
    model = _adapted(base)
    kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0, prefill_chunk_size=8)
    with torch.no_grad():
        with mlv.route(model, [0, 1]):
            mixed = model.generate(**x, **kw)
        for i, t in enumerate("ab"):
            with mlv.route(model, t):
                alone = model.generate(**x, **kw)
            assert torch.equal(mixed[i], alone[i])


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_two_images_flattened_into_one_item_are_refused(family):
    """One feature item holding row 0's two images (row 1: none) ran under a mixed route once a single item was
    taken for 'cannot tell' (for generate's chunked prefill); the routed generate now marks its own prefill as
    checked instead, and a direct forward is counted (helper 114)."""
    model = _adapted(tiny_llava() if family == "llava" else tiny_paligemma())
    image = [95] * 16
    ids, mask = _rows([1, 5, *image, *image, 7], [1, 9, 10, 11])
    with torch.no_grad():
        with mlv.route(model, [0, 1]):   # what a caller encoding the batch's images under the batch's route does
            feats = model.model.get_image_features(pixel_values=torch.randn(2, 3, 32, 32), return_dict=True)
        po = feats.pooler_output
        flat = [torch.cat([f.reshape(-1, f.shape[-1]) for f in po])]   # one item (as _slice_mm_encoder_output makes)
        encoded = {"image": BaseModelOutputWithPooling(pooler_output=flat)}
        with mlv.route(model, [0, 1]), pytest.raises(mlv.RoutingError, match=r"\[1, 0\] images, and their features "
                                                                               "were made before the call"):
            model(input_ids=ids, attention_mask=mask, mm_encoder_outputs=encoded)


class _Raise(StoppingCriteria):
    def __call__(self, input_ids, scores, **kwargs):
        raise RuntimeError("stop here")


class _CopyModel(StoppingCriteria):
    def __init__(self, model):
        self.model, self.copies = model, []

    def __call__(self, input_ids, scores, **kwargs):
        self.copies.append(copy.deepcopy(self.model))   # e.g. a callback snapshotting the model mid-generate
        return torch.ones(input_ids.shape[0], dtype=torch.bool)


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_the_forward_count_is_back_after_a_generate_that_raised_and_in_a_copy_made_during_generate(family):
    """The routed generate counts its inputs and turns the forward's count off around its call; a generate that
    raises must turn it back on (left off, a later forward's tower read row 0's second image as row 1's), and a copy
    of the model made meanwhile must not keep it off."""
    model = _adapted(tiny_llava() if family == "llava" else tiny_paligemma())
    image = [95] * 16
    one_each, mask1 = _rows([1, 5, *image, 7], [1, 9, *image, 10])
    two_none, mask2 = _rows([1, 5, *image, *image, 7], [1, 9, 10, 11])
    pixels = torch.randn(2, 3, 32, 32)
    copier = _CopyModel(model)
    with torch.no_grad(), mlv.route(model, [0, 1]):
        with pytest.raises(RuntimeError, match="stop here"):
            model.generate(input_ids=one_each, attention_mask=mask1, pixel_values=pixels, max_new_tokens=2,
                           do_sample=False, stopping_criteria=StoppingCriteriaList([_Raise()]))
        model.generate(input_ids=one_each, attention_mask=mask1, pixel_values=pixels, max_new_tokens=1,
                       do_sample=False, stopping_criteria=StoppingCriteriaList([copier]))
    check = model._mtl_lora.row_check[1]
    assert not check.checked and not check._counts
    _assert_per_task(model, lambda: model(input_ids=two_none, attention_mask=mask2, pixel_values=pixels).logits)
    (other,) = copier.copies
    _assert_per_task(other, lambda: other(input_ids=two_none, attention_mask=mask2, pixel_values=pixels).logits)


def test_llava_rows_of_two_and_three_images_take_their_rows_task():
    """Rows holding 2 and 3 images were refused, with a crop-splitting hint that did not apply (helper 148)."""
    torch.manual_seed(0)
    m = _adapted(tiny_llava())
    ids = torch.randint(0, 90, (2, 16 * 5 + 4))
    ids[0, :32] = 95              # two images' tokens in row 0
    ids[1, :48] = 95              # three in row 1
    x = dict(input_ids=ids, pixel_values=torch.randn(5, 3, 32, 32), attention_mask=torch.ones_like(ids))
    _assert_per_task(m, lambda: m(**x).logits)


def test_qwen_row_counts_read_the_device_once(monkeypatch):
    """The per-row image count of a Qwen2-VL mixed forward reads its grid and token counts in one transfer (a GPU
    wait each), and counts an image per row, or a row with two."""
    from types import SimpleNamespace

    from mtl_lora_vl.family_images import qwen_row_images

    cfg = SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=2), image_token_id=9,
                          vision_start_token_id=7)
    model = SimpleNamespace(config=cfg, forward=lambda input_ids, pixel_values, image_grid_thw: None)
    grid = torch.tensor([[1, 4, 2], [1, 2, 2], [1, 2, 2]])   # 2, 1 and 1 image tokens
    ids = torch.tensor([[9, 9, 0], [9, 9, 1]])
    calls = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: calls.append(1) or real(self))
    out = qwen_row_images(model, (), {"input_ids": ids, "pixel_values": torch.zeros(1), "image_grid_thw": grid})
    assert out == [1, 2] and len(calls) == 1
    cfg.video_token_id = 8   # and videos: both kinds' grids and tokens in the same one read, counted apart
    ids = torch.tensor([[9, 9, 8, 8, 8, 0], [9, 9, 8, 8, 8, 8]])
    videos = {"pixel_values_videos": torch.zeros(1), "video_grid_thw": torch.tensor([[3, 2, 2], [2, 4, 2]])}
    out = qwen_row_images(model, (), {"input_ids": ids, "pixel_values": torch.zeros(1), "image_grid_thw": grid,
                                      **videos})
    assert out == [2, 3] and len(calls) == 2
    assert out.calls == [("image", [8, 4, 4], [1, 2]), ("video", [12, 16], [1, 1])]


def test_gemma3s_inner_model_attached_on_its_own_counts_each_rows_images():
    """Review 210: Gemma3Model was missing from families.INNER_MODELS, so adapted on its own it got no row count:
    under route [a, b] row 0's second image went through task b, silently (3.66 off its task alone, whose outputs
    differ from the other's by 3.53)."""
    from gemma3_tiny import BOI_ID, EOI_ID, IMG_ID, N_IMAGE, NL_ID, tiny_gemma3
    from vl_tiny import left_padded

    torch.manual_seed(0)
    model = perturb_adapters(mlv.attach(tiny_gemma3().eval().model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4,
                                                                                       targets=TARGETS)))
    image = [NL_ID, BOI_ID, *[IMG_ID] * N_IMAGE, EOI_ID, NL_ID]
    ids, mask = left_padded([[1, *image, *image, 5, 6], [1, 7, 8, 9]])
    x = dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(2, 3, 32, 32),
             token_type_ids=(ids == IMG_ID).long())
    _assert_per_task(model, lambda: model(**x).last_hidden_state)


def test_every_family_that_counts_rows_images_names_its_inner_model():
    """Each family with run-time hooks (row counts, a packed tower) lists its inner multimodal model, so that the
    inner model adapted on its own is routed as the whole model is."""
    from mtl_lora_vl.families import FAMILIES, INNER_MODELS

    hooked = {f.name for f in FAMILIES if f.row_images or f.packed_tower}
    assert hooked == {name for _, name in INNER_MODELS}
    for fam in FAMILIES:
        for ref in fam.classes if fam.name in hooked else ():
            module, _, name = ref.rpartition(".")
            inner = f"{module}.{name.replace('ForConditionalGeneration', 'Model')}"
            assert (inner, fam.name) in INNER_MODELS, inner
