"""The Qwen2-VL backbone class (--backbone hf:DIR of a tiny Qwen2-VL / Qwen2.5-VL directory with its processor):
loading, the device-side patches against the processor's, per-row losses, mixed-task routes, routed generate,
cached candidate scores against the full computation (M-RoPE positions), the refusals, and the train and eval
commands end to end."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from qwen_tiny import QWEN_SPECIALS, save_tiny_qwen2vl, tiny_qwen2vl_backbone
from test_generative_tasks import _attach
from vlm_checks import (
    assert_lm_loss_per_row,
    assert_mixed_lm_loss_per_task,
    assert_own_size_generate_per_task,
    assert_own_size_loss_per_task,
    assert_routed_generate_per_task,
    assert_train_and_eval_commands,
    cached_and_full_scores,
    loader_images,
    one_image_token_short,
    own_size,
    pictures,
    prompts,
)

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import BackboneError, Qwen2VLBackbone, load_backbone
from mtl_lora_vl.backbones.base import GENERATE, GRAD_CHECKPOINTING, LM_LOGITS
from mtl_lora_vl.backbones.qwen2_vl import patchify, qwen_image_side
from mtl_lora_vl.data.images import ImageError, to_uint8_tensor
from mtl_lora_vl.data.resize import ImageResize


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("qwen")


@pytest.fixture(params=[False, True], ids=["qwen2", "qwen2.5"])
def bb(request, dirs):
    return tiny_qwen2vl_backbone(dirs, request.param)


def _adapt(bb, tasks=("a", "b")):
    return _attach(bb, tasks, std=0.3)


def _plain_inputs(bb, images, ids):
    """What the processor gives for these rows: its patches, grid and mm_token_type_ids."""
    side = bb.image_size // 8
    return dict(pixel_values=patchify(images, 8, 2, 2), image_grid_thw=torch.tensor([[1, side, side]] * len(images)),
                mm_token_type_ids=(ids == bb.image_token_id).int())


def test_loads_from_a_directory_with_its_processor(bb):
    assert type(bb) is Qwen2VLBackbone and bb.family == "qwen2_vl"
    assert bb.capabilities == {LM_LOGITS, GENERATE, GRAD_CHECKPOINTING}
    assert bb.image_token == "<|image_pad|>" and bb.image_size == 32 and bb.num_image_tokens == 4
    assert bb.resize.mode == "native" and bb.resize.size == 32 and bb.resize.factor == 16
    assert (bb.resize.min_pixels, bb.resize.max_pixels) == (32 * 32, 32 * 32)   # the processor's
    tok = bb.processor.tokenizer
    vs, ve, img, _ = (tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS)
    row = bb.lm_collator()([f"{bb.image_token} caption:"])["input_ids"][0].tolist()
    at = row.index(vs)
    assert row[at:at + 6] == [vs, img, img, img, img, ve]


def test_the_side_fits_the_processors_pixels():
    assert qwen_image_side(28, 56 * 56, 28 * 28 * 1280) == 448           # the released processors: 256 tokens
    assert qwen_image_side(16, 32 * 32, 32 * 32) == 32
    assert qwen_image_side(28, 56 * 56, 300 * 300) == 280                 # below max_pixels, a multiple of 28
    assert qwen_image_side(28, 500 * 500, None) == 504


def _pil_processor(bb):
    """The family's image processor on PIL's resampling (``Qwen2VLImageProcessorPil``), with the backbone's own."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ip = bb.processor.image_processor
    return Qwen2VLImageProcessorPil(size={"shortest_edge": 32 * 32, "longest_edge": 32 * 32}, patch_size=ip.patch_size,
                                    merge_size=ip.merge_size, temporal_patch_size=ip.temporal_patch_size,
                                    image_mean=ip.image_mean, image_std=ip.image_std)


def test_sizes_are_the_processors_smart_resize(bb):
    """Each image keeps its aspect: its size is the Qwen processor's smart_resize of its own sides (the tiny
    processor's bounds, and the released ones' within the package's 448² budget)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    for h in range(8, 200, 7):
        for w in range(8, 200, 11):
            assert bb.resize.resized_size(w, h) == smart_resize(h, w, 16, 1024, 1024)[::-1], (h, w)
    released = ImageResize(448, mode="native", factor=28, min_pixels=56 * 56, max_pixels=448 * 448)
    for h, w in [(480, 640), (640, 480), (375, 500), (1080, 1920), (50, 3000), (28, 28), (10, 10), (448, 448)]:
        assert released.resized_size(w, h) == smart_resize(h, w, 28, 56 * 56, 448 * 448)[::-1], (h, w)
    assert released.resized_size(640, 480) == (504, 364)   # 18 x 13 merged patches: 234 tokens, aspect ~kept
    with pytest.raises(ImageError, match="image <PIL image>: .*aspect ratio must be smaller than 200.*crop it first"):
        to_uint8_tensor(Image.new("RGB", (402, 2)), bb.resize)


def test_device_patches_equal_the_processors(bb):
    """Images of three aspects, resized in the worker, put on one canvas and normalised on the device, cut into
    patches: exactly what the Qwen processor (on PIL's resampling) makes of the original pictures, grids and
    all; one size for the batch: one reshape, the same patches."""
    pics = pictures([(48, 40), (30, 64), (90, 30)])
    images, sizes = loader_images(bb, pics)
    assert sizes == [(32, 16), (16, 32), (48, 16)] and images.shape == (3, 3, 48, 32)
    mine = bb._vision_inputs(images, sizes)
    theirs = _pil_processor(bb)(images=pics, return_tensors="pt")
    torch.testing.assert_close(mine["pixel_values"], theirs["pixel_values"], atol=1e-5, rtol=1e-5)
    assert mine["image_grid_thw"].tolist() == theirs["image_grid_thw"].tolist() == [[1, 4, 2], [1, 2, 4], [1, 6, 2]]
    assert bb.processor.image_processor(images=pics)["image_grid_thw"].tolist() == [[1, 4, 2], [1, 2, 4], [1, 6, 2]]
    squares = pictures([(48, 48), (20, 20)], seed=1)
    images, sizes = loader_images(bb, squares)
    mine = bb._vision_inputs(images, sizes)
    theirs = _pil_processor(bb)(images=squares, return_tensors="pt")
    torch.testing.assert_close(mine["pixel_values"], theirs["pixel_values"], atol=1e-5, rtol=1e-5)
    assert mine["image_grid_thw"].tolist() == [[1, 4, 4]] * 2
    torch.testing.assert_close(bb._vision_inputs(images)["pixel_values"], mine["pixel_values"])   # sizes None
    with pytest.raises(ValueError, match=r"sides are multiples of 16 \(patch 8 x merge 2\), got "
                                         r"40x48.*backbone.resize"):
        bb._vision_inputs(torch.zeros(1, 3, 40, 48))


def test_lm_loss_per_row_equals_each_row_alone_and_the_plain_model(bb):
    assert_lm_loss_per_row(bb, lambda images, ids: _plain_inputs(bb, images, ids))


def test_mixed_task_lm_loss_equals_each_task_alone(bb):
    _adapt(bb)
    assert_mixed_lm_loss_per_task(bb)


@pytest.mark.parametrize("beams", [1, 3])
def test_routed_generate_equals_each_task_alone(bb, beams):
    _adapt(bb)
    assert_routed_generate_per_task(bb, beams, lambda images, ids: _plain_inputs(bb, images, ids))


def test_cached_sequence_scores_equal_the_full_computation(bb):
    """One prefill, then all candidates from the cache: their M-RoPE positions continue each row's text after
    the image (1-D positions were off by up to 0.4 in log-probability, silently)."""
    _adapt(bb)
    cached, _, used = cached_and_full_scores(bb)
    images, p, cands, rows = used["images"], used["prompts"], used["candidates"], used["rows"]
    with torch.no_grad(), mlv.route(bb.model, [1, 0, 1]):
        per_token = bb.sequence_scores(images, p, cands, per_token=True)
    lengths = torch.tensor([[len(c) for c in r] for r in rows], dtype=cached.dtype)
    torch.testing.assert_close(per_token, cached / lengths)
    # and against the plain model on each full sequence, one at a time
    b, c = 2, 1
    one = bb.lm_collator()([p[b]], [cands[c]])
    with torch.no_grad(), mlv.route(bb.model, 1):
        logits = bb.model(input_ids=one["input_ids"], attention_mask=one["attention_mask"],
                          **_plain_inputs(bb, images[b:b + 1], one["input_ids"])).logits[0, :-1]
    labels = one["labels"][0, 1:]
    want = logits.log_softmax(-1)[labels != -100].gather(1, labels[labels != -100, None]).sum()
    torch.testing.assert_close(cached[b, c], want, atol=1e-4, rtol=1e-4)


def test_caption_logits_put_the_vision_tokens_around_the_image(bb):
    tokens = bb.lm_collator()(prompts(bb, 2), ["red", "blue"])["input_ids"][:, -4:]
    with torch.no_grad():
        logits = bb.caption_logits(torch.randn(2, 3, 32, 32), tokens)
    assert logits.shape == (2, 3, bb.vocab_size)


def test_a_wrong_image_token_count_is_refused(bb):
    ids, b = one_image_token_short(bb)
    with pytest.raises(BackboneError, match="row 0 of input_ids has 3 image tokens.*gives 4 features.*lm_collator"):
        bb.lm_loss(torch.randn(2, 3, 32, 32), ids, b["attention_mask"], b["labels"])
    with pytest.raises(BackboneError, match="image tokens do not match the image features.*lm_collator"):
        bb._forward(torch.randn(2, 3, 32, 32), ids, b["attention_mask"])


def test_a_missing_or_disagreeing_processor_is_refused(dirs, tmp_path):
    from transformers import AutoProcessor

    src = dirs / "tiny_qwen2vl"
    if not (src / "config.json").is_file():
        save_tiny_qwen2vl(src)
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((src / f).read_bytes())
    with pytest.raises(FileNotFoundError, match="no processor files.*processor.save_pretrained"):
        load_backbone(f"hf:{bare}")
    other = tmp_path / "merge1"   # a processor that merges 1 x 1: 16 tokens per image where the model fills 4
    proc = AutoProcessor.from_pretrained(str(src))
    proc.image_processor.merge_size = 1
    proc.save_pretrained(str(other))
    for f in ("config.json", "model.safetensors"):
        (other / f).write_bytes((src / f).read_bytes())
    with pytest.raises(BackboneError, match="expands '<\\|image_pad\\|>' to 16 tokens but the vision tower gives 4"):
        load_backbone(f"hf:{other}")


def test_train_and_eval_commands(dirs, tmp_path, capsys):
    folder = dirs / "tiny_qwen2vl"
    if not (folder / "config.json").is_file():
        save_tiny_qwen2vl(folder)
    assert_train_and_eval_commands(folder, tmp_path, capsys)


def test_a_directory_without_its_processor_names_its_own_processor_class(tmp_path):
    """A Qwen2-VL directory without its processor was told to save a LlavaProcessor(..., patch_size=...,
    vision_feature_select_strategy=...), which that model does not take."""
    folder = save_tiny_qwen2vl(tmp_path / "q")
    (folder / "processor_config.json").unlink(missing_ok=True)
    (folder / "preprocessor_config.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="no processor files") as e:
        load_backbone(f"hf:{folder}")
    assert "Qwen2VLProcessor" in str(e.value) and "LlavaProcessor" not in str(e.value)


# ------------------------------------------------------------------------------------------ images of their own sizes
SHAPES = [(48, 40), (30, 64), (90, 30), (40, 40)]   # (h, w) -> (32, 16), (16, 32), (48, 16), (32, 32)
TARGETS = ["red", "a blue square", "two", "a circle"]


def test_each_row_gets_its_images_tokens(bb):
    """A row's prompt holds as many image tokens as its image fills (h/16 · w/16), as the Qwen processor expands
    its placeholder for the same pictures."""
    images, sizes = loader_images(bb, pictures(SHAPES))
    p = prompts(bb, 4)
    ids = bb.lm_collator()(p, TARGETS, image_sizes=sizes)["input_ids"]
    counts = (ids == bb.image_token_id).sum(1).tolist()
    text = [f"<|vision_start|>{bb.image_token}<|vision_end|> caption:"] * 4
    theirs = _pil_processor(bb)(images=pictures(SHAPES), return_tensors="pt")["image_grid_thw"]
    assert counts == [2, 2, 3, 4] == [int(t * h * w) // 4 for t, h, w in theirs.tolist()]
    hf = bb.processor(text=text, images=pictures(SHAPES))["input_ids"]
    assert [row.count(bb.image_token_id) for row in hf] == counts
    with pytest.raises(ValueError, match="4 prompts hold 4 image placeholders but 3 image sizes"):
        bb.lm_collator()(p, TARGETS, image_sizes=sizes[:3])
    with pytest.raises(ValueError, match="20x32 pixels does not fill whole 16x16 image tokens.*backbone.resize"):
        bb.lm_collator()(p[:1], TARGETS[:1], image_sizes=[(20, 32)])


def test_rows_of_their_own_sizes_each_give_their_own_loss(bb):
    """Images of four sizes on one canvas: each row's loss is the row alone at its own size (the canvas's padding
    reaches nothing); under a mixed route each row gets its task's; without the sizes the rows are refused."""
    _adapt(bb)
    images, sizes = loader_images(bb, pictures(SHAPES))
    b = assert_own_size_loss_per_task(bb, images, sizes, TARGETS, [0, 1, 1, 0])
    with pytest.raises(BackboneError, match="row 0 of input_ids has 2 image tokens .* its image gives 6 features"):
        bb.lm_loss(images, **b)
    with pytest.raises(ValueError, match="image_sizes must give each of the 4 images its .* within the batch's 48x32"):
        bb.lm_loss(images, **b, image_sizes=[(64, 16)] * 4)


@pytest.mark.parametrize("beams", [1, 3])
def test_routed_generate_over_images_of_their_own_sizes(bb, beams):
    """Routed generate over a canvas of four sizes: each row's text is its task's, and the row's alone at its
    own size."""
    _adapt(bb)
    images, sizes = loader_images(bb, pictures(SHAPES))
    assert_own_size_generate_per_task(bb, images, sizes, [0, 1, 1, 0], beams)


def test_candidate_scores_over_images_of_their_own_sizes(bb):
    """Cached candidate scores over a canvas of four sizes equal the full computation and each row alone."""
    _adapt(bb)
    images, sizes = loader_images(bb, pictures(SHAPES))
    p = prompts(bb, 4)
    cands = ["red", "a blue square"]
    col = bb.lm_collator()
    rows = [[[*c, bb.eos_id] for c in col.continuation_ids([t] * 2, cands)] for t in col.prompt_texts(p)]
    with torch.no_grad(), mlv.route(bb.model, [1, 0, 0, 1]):
        cached = bb.sequence_scores(images, p, cands, image_sizes=sizes)
        full = bb._scores_full(images, p, rows, sizes)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
    with torch.no_grad(), mlv.route(bb.model, 0):
        one = bb.sequence_scores(own_size(images, sizes, 2), p[2:3], cands)
    torch.testing.assert_close(cached[2], one[0], atol=1e-4, rtol=1e-4)


def _jsonl_tasks(root):
    """VQA and captioning specs over JSONL rows of pictures of four aspects under ``root``."""
    import json

    for i, (h, w) in enumerate(SHAPES * 2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
    words = ["red", "blue", "green", "two"]
    caps = "".join(json.dumps({"image": f"{i}.png", "caption": f"a {words[i % 4]} circle"}) + "\n" for i in range(8))
    qa = "".join(json.dumps({"image": f"{i}.png", "question": "what colour is the circle?",
                             "answers": [words[i % 4]]}) + "\n" for i in range(8))
    (root / "caps.jsonl").write_text(caps)
    (root / "qa.jsonl").write_text(qa)
    specs = []
    for name, kind, file in (("shapes_vqa", "vqa", "qa.jsonl"), ("shapes_caps", "captioning", "caps.jsonl")):
        (root / f"{name}.toml").write_text(
            f'name = "{name}"\nkind = "{kind}"\n[data]\nformat = "jsonl"\n'
            + "".join(f'[data.{s}]\nfile = "{file}"\n' for s in ("train", "val", "test")))
        specs.append(str(root / f"{name}.toml"))
    return specs


def test_the_loader_keeps_each_images_size(bb, tmp_path):
    """The training loader's batch: each image at its own size on one canvas, ``image_sizes``, and each row's image
    tokens as its size gives; the step's loss is each row's at its own size."""
    from mtl_lora_vl.data.loader import MultiTaskLoader
    from mtl_lora_vl.data.readers import read_split
    from mtl_lora_vl.tasks import build_kind, load_spec

    spec = load_spec(_jsonl_tasks(tmp_path)[1])
    split = read_split("jsonl", tmp_path, file="caps.jsonl")
    kind = build_kind(spec, split, bb)
    batch = next(iter(MultiTaskLoader([kind], [split], bb, batch_size=8, steps=1)))
    sizes = batch["image_sizes"]
    assert sorted(set(sizes)) == [(16, 32), (32, 16), (32, 32), (48, 16)]
    assert batch["images"].shape == (8, 3, 48, 32) and batch["images"].dtype == torch.uint8
    for r, (h, w) in enumerate(sizes):
        assert (batch["lm"]["input_ids"][r] == bb.image_token_id).sum() == h * w // 256
        assert batch["images"][r, :, h:].sum() == 0 and batch["images"][r, :, :, w:].sum() == 0
    images = bb.preprocess_uint8(batch["images"])
    assert images.shape == (8, 3, 48, 32)   # not resized to the 32 x 32 square
    with torch.no_grad():
        loss = bb.lm_loss(images, **batch["lm"], image_sizes=sizes)
        r = sizes.index((48, 16))
        one = {k: v[r:r + 1, :int(batch["lm"]["attention_mask"][r].sum())] for k, v in batch["lm"].items()}
        torch.testing.assert_close(bb.lm_loss(own_size(images, sizes, r), **one)[0], loss[r], atol=1e-5, rtol=1e-5)


def test_a_canvas_is_converted_image_by_image(bb):
    """A 64 x 16 picture beside a 16 x 64 one share a 64 x 64 canvas: to_device (and the evaluation loader's
    to_floats) convert each image's own region only (the whole canvas in fp32 was 4x the images' pixels), the values
    those of the whole canvas's conversion, fp32 and bf16 alike; the padding, never read, is a black pixel's value
    even where a canvas holds something else there."""
    from mtl_lora_vl.data.anyres import pad_images
    from mtl_lora_vl.data.loader import to_device, to_floats

    g = torch.Generator().manual_seed(0)
    canvas, sizes = pad_images([torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
                                for h, w in [(64, 16), (16, 64)]])
    assert canvas.shape == (2, 3, 64, 64)
    dirty = canvas.clone()
    dirty[0, :, :, 16:] = dirty[1, :, 16:] = 255
    for dtype in (torch.float32, torch.bfloat16):
        whole = bb.preprocess_uint8(canvas, dtype)
        assert torch.equal(to_device({"images": canvas, "image_sizes": sizes}, "cpu", dtype, bb)["images"], whole)
        assert torch.equal(to_floats(bb, dirty, dtype, sizes), whole)
    assert torch.equal(to_floats(bb, canvas[:1, :, :, :16], torch.float32, sizes[:1]),
                       bb.preprocess_uint8(canvas[:1, :, :, :16]))   # (images that fill it: one conversion)
    with pytest.raises(ValueError, match=r"image_sizes \[\(64, 16\)\] do not fit a canvas of \(2, 3, 64, 64\)"):
        bb.preprocess_uint8(canvas, image_sizes=sizes[:1])


def test_train_and_eval_on_pictures_of_their_own_aspects(dirs, tmp_path, capsys):
    """train (VQA + captioning from JSONL files of four aspects) and eval of its adapter give the same scores."""
    import json

    from test_generative_tasks import assert_eval_repeats

    from mtl_lora_vl.cli import train_main

    folder = dirs / "tiny_qwen2vl"
    if not (folder / "config.json").is_file():
        save_tiny_qwen2vl(folder)
    out = tmp_path / "run"
    code = train_main(["--backbone", f"hf:{folder}", "--tasks", ",".join(_jsonl_tasks(tmp_path)), "--steps", "2",
                       "--batch-size", "8", "--workers", "0", "--warmup", "1", "--data-root", str(tmp_path),
                       "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "eval.json").read_text())
    assert set(result["tasks"]) == {"shapes_vqa", "shapes_caps"}
    assert_eval_repeats(out / "adapter", tmp_path / "ev", result, "--data-root", str(tmp_path))


def test_a_processor_of_another_patch_names_qwens_fields(tmp_path):
    """A processor whose patch_size differs from the model's was told to fix LLaVA's num_additional_image_tokens and
    vision_feature_select_strategy, fields a Qwen processor does not have (helper 154)."""
    import json

    folder = save_tiny_qwen2vl(tmp_path / "qwen")
    cfg = json.loads((folder / "processor_config.json").read_text())
    cfg["image_processor"]["patch_size"] = 4
    (folder / "processor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackboneError, match=r"patch_size \(now 4\) and merge_size \(now 2\) to the model's "
                                            r"vision_config.patch_size \(8\) and spatial_merge_size \(2\)") as e:
        load_backbone(f"hf:{folder}")
    assert "num_additional_image_tokens" not in str(e.value)


def _tiny_sized(tmp_path, **size):
    """A tiny Qwen2-VL directory whose processor's ``size`` is edited (``longest_edge``: its max_pixels)."""
    import json

    folder = save_tiny_qwen2vl(tmp_path / "sized")
    path = folder / "processor_config.json"
    cfg = json.loads(path.read_text())
    cfg["image_processor"]["size"].update(size)
    path.write_text(json.dumps(cfg))
    return folder


def test_a_processors_smaller_max_pixels_is_kept(tmp_path):
    """max_pixels 1100 (below 448²): the loader resizes within 1100 pixels as the processor does; it took the
    nominal square's 32² instead, so a 78x20 picture was 48x16 where the processor makes 64x16 (helper 156)."""
    bb = load_backbone(f"hf:{_tiny_sized(tmp_path, longest_edge=1100)}")
    assert bb.image_size == 32 and bb.resize.budget == 1100
    pic = pictures([(20, 78)])[0]
    assert bb.processor.image_processor(images=[pic])["image_grid_thw"].tolist() == [[1, 2, 8]]
    assert tuple(to_uint8_tensor(pic, bb.resize).shape[-2:]) == (16, 64)


def test_a_native_resize_never_makes_an_empty_side():
    """Without min_pixels a side shorter than factor / 2 rounded to 0 (400x12 -> 392x0) and the worker died with
    PIL's ValueError, not an ImageError the fallback replaces; at least one factor x factor block now (helper 156)."""
    r = ImageResize(448, mode="native", factor=28)
    for w, h in [(400, 12), (10, 10), (13, 600)]:
        nw, nh = r.resized_size(w, h)
        assert min(nw, nh) >= 28 and nw % 28 == nh % 28 == 0, (w, h, nw, nh)
    assert to_uint8_tensor(Image.new("RGB", (400, 12)), r).shape == (3, 28, 168)   # grown to one block's area


def test_a_token_mismatch_on_a_canvas_names_image_sizes(bb):
    """A canvas of images of their own sizes without image_sizes (and a first_label, so Hugging Face's own check
    speaks): the message named LLaVA's processor fields and 'fills 4 tokens' where rows hold 2, 2, 3, 4 (helper 156)."""
    images, sizes = loader_images(bb, pictures(SHAPES))
    b = bb.lm_collator()(prompts(bb, 4), TARGETS, image_sizes=sizes)
    with torch.no_grad(), pytest.raises(BackboneError, match=r"fills \(h/16\)·\(w/16\) tokens.*image_sizes=.*"
                                                             r"pad_images") as e:
        bb.lm_loss(images, **b, first_label=int((b["labels"] != -100).any(0).nonzero()[0]))
    assert "vision_feature_select_strategy" not in str(e.value)


def test_a_merged_directory_reads_images_within_the_training_bounds(tmp_path):
    """save_merged copied the processor's max_pixels (12.8 M pixels in the released ones) where training kept
    every image within 448²: a merged model was fed a 1000x800 picture as 3,100 image tokens where training used
    775. The merged processor's max_pixels is capped as the loader's (helper 156)."""
    from transformers import AutoProcessor

    bb = load_backbone(f"hf:{_tiny_sized(tmp_path, longest_edge=1_000_000)}")
    assert bb.resize.budget == 448 * 448
    model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1))
    out = mlv.save_merged(model, "a", tmp_path / "merged")
    w, h = bb.resize.resized_size(1000, 800)
    merged = AutoProcessor.from_pretrained(out).image_processor
    assert merged(images=pictures([(800, 1000)]))["image_grid_thw"].tolist() == [[1, h // 8, w // 8]]


def test_an_inner_adapted_models_merged_processor_and_lora_note_follow_the_whole_model(tmp_path, caplog):
    """Adapters on the inner Qwen2VLModel only (family "custom"): save_merged read the inner model's family and
    image record, so it left the processor's 1,000,000-pixel cap (a 1000x800 picture: 3,100 image tokens where
    training read 775) and export_lora gave no min_pixels / max_pixels note (helper 338)."""
    from transformers import AutoProcessor

    bb = load_backbone(f"hf:{_tiny_sized(tmp_path, longest_edge=1_000_000)}")
    targets = {"text": [r"language_model\.layers\.\d+\.self_attn\.[qv]_proj$"]}
    mlv.attach(bb.model.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1, targets=targets))
    out = mlv.save_merged(bb.model, "a", tmp_path / "merged")
    w, h = bb.resize.resized_size(1000, 800)
    merged = AutoProcessor.from_pretrained(out).image_processor
    assert merged(images=pictures([(800, 1000)]))["image_grid_thw"].tolist() == [[1, h // 8, w // 8]]
    lora = mlv.export_lora(bb.model, "a", tmp_path / "lora")
    assert f"max_pixels={448 * 448}" in (lora / "README.md").read_text()


def test_an_inner_adapted_models_adapter_records_the_whole_models_image_area(tmp_path):
    """Adapters on the inner Qwen2VLModel only: save_adapter read the inner model's image record (none), so the
    adapter recorded no image_min_pixels / image_max_pixels where training read within 1024 to 448² pixels (a
    1000x800 picture: 775 image tokens; the source processor's own 1,000,000-pixel cap reads it as 3,100), and
    load_adapter put no area on the model it loaded onto."""
    import json

    from mtl_lora_vl.backbones.image_record import image_record

    folder = _tiny_sized(tmp_path, longest_edge=1_000_000)
    targets = {"text": [r"language_model\.layers\.\d+\.self_attn\.[qv]_proj$"]}
    cfg = mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1, targets=targets)
    bb = load_backbone(f"hf:{folder}")
    mlv.attach(bb.model.model, cfg)
    out = mlv.save_adapter(bb.model, tmp_path / "adapter", base={"backbone": f"hf:{folder}"})
    base = json.loads((out / "mtl_lora_config.json").read_text())["base"]
    assert (base.get("image_min_pixels"), base.get("image_max_pixels")) == image_record(bb.model).bounds \
        == (1024, 448 * 448)
    again = load_backbone(f"hf:{folder}").model.model
    with warnings.catch_warnings():   # (the backbone's area, on its inner model too, is the adapter's)
        warnings.simplefilter("error")
        mlv.load_adapter(again, out)
    assert image_record(again).bounds == (1024, 448 * 448)


# ------------------------------------------------------------------------------------------ --image-max-pixels
def test_image_max_pixels_sets_the_area_within_the_processors_own(tmp_path):
    """load_backbone(image_max_pixels=N): images within N pixels (the processor's own max_pixels still bounds it),
    the nominal side and token count following; a backbone of fixed squares refuses it."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    folder = _tiny_sized(tmp_path, longest_edge=1_000_000)
    bb = load_backbone(f"hf:{folder}", image_max_pixels=4096)
    assert (bb.resize.budget, bb.image_size, bb.num_image_tokens) == (4096, 64, 16)
    assert bb.resize.resized_size(300, 200) == smart_resize(200, 300, 16, 1024, 4096)[::-1] == (64, 48)
    assert bb.lm_collator().layout.num_image_tokens == 16
    assert load_backbone(f"hf:{folder}").resize.budget == 448 * 448                      # the default cap
    with pytest.warns(UserWarning, match="image_max_pixels 4096 is above its processor's own max_pixels 2048; "
                                         "images are read within 2048 pixels"):
        assert load_backbone(f"hf:{_tiny_sized(tmp_path / 'p', longest_edge=2048)}",
                             image_max_pixels=4096).resize.budget == 2048                # the processor's is lower
    with pytest.raises(BackboneError, match="image_max_pixels 100 is below one 16x16 merged patch"):
        load_backbone(f"hf:{folder}", image_max_pixels=100)
    with pytest.raises(BackboneError, match=r"image_max_pixels 4096 \(--image-max-pixels\) applies to backbones that "
                                            "keep each image's own size.*builtin takes 64x64 images: leave the "
                                            "option out, or load a Qwen2-VL / Qwen2.5-VL model") as e:
        load_backbone("builtin", image_max_pixels=4096)
    assert "adapter" not in str(e.value)   # an adapter's recorded area is applied by load_pretrained, never here
    assert "--backbone" not in str(e.value)   # (a Python call gave no flag; the spec form hf:DIR is named)


def test_image_max_pixels_is_recorded_and_read_back(tmp_path, capsys):
    """train --image-max-pixels records it in the adapter's base; eval rebuilds the backbone with it (the same
    scores) and the merged export caps its processor at it."""
    import json

    from test_generative_tasks import assert_eval_repeats
    from transformers import AutoProcessor

    from mtl_lora_vl.cli import main, train_main
    from mtl_lora_vl.io import load_pretrained

    folder = _tiny_sized(tmp_path, longest_edge=1_000_000)
    out = tmp_path / "run"
    code = train_main(["--backbone", f"hf:{folder}", "--tasks", ",".join(_jsonl_tasks(tmp_path)), "--steps", "1",
                       "--batch-size", "8", "--workers", "0", "--warmup", "1", "--data-root", str(tmp_path),
                       "--image-max-pixels", "2048", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "adapter" / "mtl_lora_config.json").read_text())
    assert doc["base"]["image_max_pixels"] == 2048
    assert load_pretrained(out / "adapter", heads=False, data_root=tmp_path).backbone.resize.budget == 2048
    trained = json.loads((out / "eval.json").read_text())
    assert_eval_repeats(out / "adapter", tmp_path / "ev", trained, "--data-root", str(tmp_path))
    # without an adapter, eval takes the area too: the run's zero-shot scores (at the default 448² the pictures
    # are read larger); with an adapter it is the adapter's, so the option is refused
    from mtl_lora_vl.cli import eval_main

    tasks = ",".join(_jsonl_tasks(tmp_path))
    base = ["--backbone", f"hf:{folder}", "--tasks", tasks, "--data-root", str(tmp_path), "--batch-size", "8"]
    assert eval_main([*base, "--image-max-pixels", "2048", "--out", str(tmp_path / "zs"), "-q"]) == 0
    zero_shot = json.loads((tmp_path / "zs" / "eval.json").read_text())
    assert {t: r["details"]["zero_shot"] for t, r in zero_shot["tasks"].items()} == \
        {t: r["details"]["zero_shot"] for t, r in trained["tasks"].items()}
    assert zero_shot["backbone"]["image_max_pixels"] == 2048
    assert eval_main(["--adapter", str(out / "adapter"), "--image-max-pixels", "2048", "--data-root", str(tmp_path),
                      "--out", str(tmp_path / "ev2")]) == 2
    assert "the adapter records the image area its tasks were trained at" in capsys.readouterr().err
    assert main(["export", "--adapter", str(out / "adapter"), "--task", "shapes_caps", "--out",
                 str(tmp_path / "merged")]) == 0
    merged = AutoProcessor.from_pretrained(tmp_path / "merged").image_processor
    assert merged(images=pictures([(800, 1000)]))["image_grid_thw"].tolist() == [[1, 4, 6]]   # 32 x 48: within 2048
    doc["base"]["image_max_pixels"] = "lots"
    (out / "adapter" / "mtl_lora_config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="base.image_max_pixels must be a positive whole number.*got 'lots'"):
        load_pretrained(out / "adapter", heads=False, data_root=tmp_path)


def _train_small(args, capsys):
    from mtl_lora_vl.cli import train_main

    code = train_main(["--steps", "1", "--batch-size", "8", "--workers", "0", "--warmup", "1", *args])
    return code, capsys.readouterr().err


def _recorded_area(adapter, root):
    """The adapter's recorded image_max_pixels and the area load_pretrained rebuilds its backbone at."""
    import json

    from mtl_lora_vl.io import load_pretrained

    doc = json.loads((adapter / "mtl_lora_config.json").read_text())
    return (doc["base"].get("image_max_pixels"),
            load_pretrained(adapter, heads=False, data_root=root).backbone.resize.budget)


def test_extend_keeps_the_adapters_image_area(tmp_path, capsys):
    """--extend trains at the adapter's recorded area and records it again (the new adapter recorded nothing,
    so eval and export used 448² for every task); another --image-max-pixels is refused by name (it was ignored
    in training and recorded, so the old tasks were scored at an area they never saw) (helper 157)."""
    folder = _tiny_sized(tmp_path, longest_edge=1_000_000)
    vqa, caps = _jsonl_tasks(tmp_path)
    code, err = _train_small(["--backbone", f"hf:{folder}", "--tasks", vqa, "--data-root", str(tmp_path),
                              "--image-max-pixels", "2048", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    code, err = _train_small(["--extend", str(tmp_path / "a"), "--tasks", caps, "--data-root", str(tmp_path),
                              "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert _recorded_area(tmp_path / "b" / "adapter", tmp_path) == (2048, 2048)
    code, err = _train_small(["--extend", str(tmp_path / "a"), "--tasks", caps, "--data-root", str(tmp_path),
                              "--image-max-pixels", "4096", "--out", str(tmp_path / "c")], capsys)
    assert code != 0 and "the adapter's image area (image_max_pixels 2048)" in err and "--image-max-pixels 4096" in err


def test_save_merged_of_a_loaded_adapter_keeps_its_image_area(tmp_path, capsys):
    """load_pretrained rebuilds the backbone at the recorded 2048 pixels; save_merged from Python (no
    image_max_pixels=) capped the merged processor at 448² all the same: 775 tokens for a picture trained on as
    6 (helper 157)."""
    from transformers import AutoProcessor

    from mtl_lora_vl.io import load_pretrained

    folder = _tiny_sized(tmp_path, longest_edge=1_000_000)
    code, err = _train_small(["--backbone", f"hf:{folder}", "--tasks", _jsonl_tasks(tmp_path)[1], "--data-root",
                              str(tmp_path), "--image-max-pixels", "2048", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    lp = load_pretrained(tmp_path / "run" / "adapter", heads=False, data_root=tmp_path)
    merged = mlv.save_merged(lp.backbone.model, "shapes_caps", tmp_path / "merged")
    w, h = lp.backbone.resize.resized_size(1000, 800)
    grid = AutoProcessor.from_pretrained(merged).image_processor(images=pictures([(800, 1000)]))["image_grid_thw"]
    assert grid.tolist() == [[1, h // 8, w // 8]] == [[1, 4, 6]]


def test_a_merged_processor_without_a_max_pixels_field_is_capped(tmp_path):
    """An older-layout processor file (preprocessor_config.json) with neither max_pixels nor size: the merged
    processor took transformers' default (1,003,520 pixels) where training capped at 448² (helper 157)."""
    import json
    import shutil

    from transformers import AutoProcessor

    src = save_tiny_qwen2vl(tmp_path / "q")
    folder = tmp_path / "old"
    shutil.copytree(src, folder)
    fields = json.loads((folder / "processor_config.json").read_text()).pop("image_processor")
    fields.pop("size")
    (folder / "processor_config.json").unlink()
    (folder / "preprocessor_config.json").write_text(json.dumps({**fields, "processor_class": "Qwen2VLProcessor"}))
    bb = load_backbone(f"hf:{folder}")
    model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1))
    out = mlv.save_merged(model, "a", tmp_path / "merged")
    w, h = bb.resize.resized_size(1000, 800)
    grid = AutoProcessor.from_pretrained(out).image_processor(images=pictures([(800, 1000)]))["image_grid_thw"]
    assert grid.tolist() == [[1, h // 8, w // 8]]


def test_the_nominal_token_count_covers_wide_images(tmp_path):
    """A processor max_pixels (20000) that is not a square: a wide picture fills 78 image tokens where the
    nominal 128² square fills 64; the count the prompts' length checks use was 64 on a plain load (and 78 with
    --image-max-pixels 20000, the same bounds) (helper 158)."""
    folder = _tiny_sized(tmp_path, longest_edge=20000)
    plain, capped = load_backbone(f"hf:{folder}"), load_backbone(f"hf:{folder}", image_max_pixels=20000)
    w, h = plain.resize.resized_size(208, 96)
    assert (w // 16) * (h // 16) == 78 == plain.num_image_tokens == capped.num_image_tokens
    assert plain.lm_collator().layout.num_image_tokens == 78


def test_an_aspect_refusal_does_not_send_the_user_to_a_check_that_passes(bb, tmp_path, caplog):
    """A 450x2 picture decodes, but the native resize refuses it (aspect 225): the warning said
    'verify_image(path, decode=True) checks a file', which finds the file fine (helper 158)."""
    import logging

    from mtl_lora_vl.data.fallback import ImageFallback
    from mtl_lora_vl.data.images import ImageShapeError, verify_image
    from mtl_lora_vl.data.records import Example

    good, wide = tmp_path / "good.png", tmp_path / "wide.png"
    Image.new("RGB", (40, 40)).save(good)
    Image.new("RGB", (450, 2)).save(wide)
    assert verify_image(str(wide), decode=True) == (450, 2)
    examples = [Example(image=str(wide), image_id="w", text="a"), Example(image=str(good), image_id="g", text="b")]
    with caplog.at_level(logging.WARNING):
        row, _ = ImageFallback("t", examples, bb.resize).decode(0)
    assert row == 1 and "aspect ratio must be smaller than 200" in caplog.text and "verify_image" not in caplog.text
    with pytest.raises(ImageShapeError, match="example 'w': .*crop it first"):
        ImageFallback("t", examples, bb.resize, strict=True).decode(0)
