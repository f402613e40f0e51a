"""Idefics3 / SmolVLM never generate the crop tags their processor writes (``<row_r_col_c>``), beside the image
placeholder and its ``<fake_token_around_image>`` / ``<global-img>`` (helper 257)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from idefics3_tiny import _num2words, tiny_idefics3_backbone  # noqa: F401  (SmolVLM's processor needs num2words)
from PIL import Image
from test_generative_tasks import _attach
from vlm_checks import bias_head, spy_generate

import mtl_lora_vl as mlv
from mtl_lora_vl.data.anyres import pad_images
from mtl_lora_vl.data.images import to_uint8_tensor


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("h257")


@pytest.mark.parametrize("smolvlm", [False, True], ids=["idefics3", "smolvlm"])
@pytest.mark.parametrize("split", [True, False], ids=["split", "unsplit"])
def test_generate_never_writes_crop_tags(dirs, smolvlm, split):
    """Before: a model leaning to a crop tag wrote it at every step (``<row_1_col_1>`` x 4 as the caption). After:
    the tags the processor writes for its largest grid (Idefics3's processor also names its tokenizer's 6 x 6) are
    suppressed, split or not, and greedy decoding chooses what the unbiased model chooses."""
    bb = tiny_idefics3_backbone(dirs, smolvlm)
    bb.native_aspect(split)
    tok = bb.processor.tokenizer
    tags = [f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)]   # the processor's grid: 4 x 4
    if not smolvlm:
        tags += ["<row_6_col_6>"]   # Idefics3Processor.row_col_ids: every tag its tokenizer holds
    tag_ids = torch.tensor(tok.convert_tokens_to_ids(tags))
    assert set(tag_ids.tolist()) <= set(bb._banned_ids())
    assert tok.convert_tokens_to_ids("\n") not in bb._banned_ids()   # the rows' newline is text
    _attach(bb, ("a", "b"), std=0.3)
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 150), (50, 50)]]
    if split:
        canvas, sizes = pad_images([to_uint8_tensor(p, bb.resize) for p in pictures])
        images, kw = bb.preprocess_uint8(canvas), {"image_sizes": list(sizes)}
    else:
        images, kw = torch.randn(2, 3, bb.image_size, bb.image_size), {}
    prompts = [bb.image_token + " caption:"] * 2
    seen = spy_generate(bb)
    with torch.no_grad(), mlv.route(bb.model, [0, 1]):
        plain = bb.generate(images, max_len=4, prompts=prompts, **kw)
    for tid in (int(tag_ids[0]), int(tag_ids[-1])):
        h = bias_head(bb, tid)
        try:
            with torch.no_grad(), mlv.route(bb.model, [0, 1]):
                got = bb.generate(images, max_len=4, prompts=prompts, **kw)
            assert not torch.isin(seen["new"], tag_ids).any(), tok.convert_ids_to_tokens(seen["new"][0])
            assert got == plain
        finally:
            h.remove()


@pytest.mark.parametrize("smolvlm", [False, True], ids=["idefics3", "smolvlm"])
def test_texts_holding_a_crop_tag_are_refused_at_start_up(dirs, smolvlm):
    """A crop tag is one token of the tokenizer (added, not marked special), so a class name or answer holding it was
    accepted: trained as that image marker, and as a target generate never writes (helper 268). Refused when the kind
    is built, as '<image>' is, naming the task, the text and the tag."""
    import dataclasses

    from mtl_lora_vl.data import world
    from mtl_lora_vl.data.records import Split
    from mtl_lora_vl.tasks import build_kind, load_spec

    bb = tiny_idefics3_backbone(dirs, smolvlm)
    base, classes = load_spec("caption_cls"), world.build_split("classification", "train", n=6, seed=0)
    build_kind(base, classes, bb)   # the world's own names pass
    # the tokenizer lowercases, and reads <ROW_1_COL_1> as the (normalized) crop tag: a literal search missed it
    # (review 274); '<IMAGE>' is no token there (the special tokens are matched as written), so it stays accepted
    upper = dataclasses.replace(base, options={**base.options, "class_names": ["red <IMAGE> circle",
                                                                              *world.class_names()[1:]]})
    build_kind(upper, classes, bb)
    for bad, tag in (("red <row_1_col_1> circle", "<row_1_col_1>"), ("red <image> circle", "<image>"),
                     ("red <ROW_1_COL_1> circle", "<row_1_col_1>")):
        spec = dataclasses.replace(base, options={**base.options, "class_names": [bad, *world.class_names()[1:]]})
        with pytest.raises(ValueError, match=rf"task 'caption_cls': the target 'a large {bad}' of class '{bad}' .* "
                                             rf"holds '{tag}', a special token.*rename the class"):
            build_kind(spec, classes, bb)
    vqa = load_spec("vqa")
    train = world.build_split("vqa", "train", n=6, seed=0)
    bad_row = dataclasses.replace(train.examples[0], answers=("<row_2_col_3>",))
    with pytest.raises(ValueError, match=r"task 'vqa': training example .* holds '<row_2_col_3>'"):
        build_kind(vqa, Split([bad_row, *train.examples[1:]]), bb)


@pytest.mark.parametrize("smolvlm", [False, True], ids=["idefics3", "smolvlm"])
def test_a_marker_the_tokenizer_splits_bans_none_of_its_pieces(tmp_path, monkeypatch, smolvlm):
    """A tokenizer without ``<global-img>`` as a token of its own writes it as text ('<', 'global', '-', 'img', '>'):
    every one of those pieces was banned, so generate could never write '<', '-', '>' or the words (helper 270).
    Only the markers that are one token are banned."""
    import idefics3_tiny
    from vl_tiny import world_words

    from mtl_lora_vl.backbones import load_backbone

    monkeypatch.setattr(idefics3_tiny, "IDEFICS3_SPECIALS", [t for t in idefics3_tiny.IDEFICS3_SPECIALS
                                                             if t != "<global-img>"])
    words = [*world_words(), "<global-img>"]   # its pieces are words of the vocabulary
    folder = idefics3_tiny.save_tiny_idefics3(tmp_path / "split_marker", smolvlm, words=words)
    bb = load_backbone(f"hf:{folder}")
    bb.native_aspect(False)
    tok = bb.processor.tokenizer
    pieces = tok("<global-img>", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(pieces) == ["<", "global", "-", "img", ">"]
    banned = bb._banned_ids()
    assert not set(pieces) & set(banned), tok.convert_ids_to_tokens(banned)
    assert {bb.image_token_id, tok.convert_tokens_to_ids("<fake_token_around_image>")} <= set(banned)
    assert "<global-img>" not in bb.marker_texts() and "<" not in bb.marker_texts()
    seen = spy_generate(bb)
    h = bias_head(bb, pieces[1])
    try:
        images = torch.randn(2, 3, bb.image_size, bb.image_size)
        bb.generate(images, max_len=3, prompts=[bb.image_token + " caption:"] * 2)
    finally:
        h.remove()
    assert (seen["new"] == pieces[1]).all(), tok.convert_ids_to_tokens(seen["new"][0])


@pytest.mark.parametrize("smolvlm", [False, True], ids=["idefics3", "smolvlm"])
def test_a_crop_tag_past_the_processors_grid_is_banned_and_refused(dirs, smolvlm):
    """The tokenizer holds 6 x 6 crop tags, the processor's grid is 4 x 4; SmolVLM's processor lists no tags, so
    ``<row_6_col_6>`` was neither banned in generate (a model leaning to it wrote it at every step) nor refused in a
    task's texts (helper 310). Every tag the tokenizer holds is now both, for either family."""
    import dataclasses

    from mtl_lora_vl.data import world
    from mtl_lora_vl.tasks import build_kind, load_spec

    bb = tiny_idefics3_backbone(dirs, smolvlm)
    bb.native_aspect(False)
    tok = bb.processor.tokenizer
    tag = "<row_6_col_6>"
    tid = tok.convert_tokens_to_ids(tag)
    assert tid in bb._banned_ids() and tag in bb.marker_texts()
    _attach(bb, ("a", "b"), std=0.3)
    seen = spy_generate(bb)
    h = bias_head(bb, tid)
    try:
        with torch.no_grad(), mlv.route(bb.model, [0, 1]):
            bb.generate(torch.randn(2, 3, bb.image_size, bb.image_size), max_len=3, prompts=[bb.image_token] * 2)
    finally:
        h.remove()
    assert not (seen["new"] == tid).any(), tok.convert_ids_to_tokens(seen["new"][0])
    base, classes = load_spec("caption_cls"), world.build_split("classification", "train", n=6, seed=0)
    bad = f"red {tag} circle"
    spec = dataclasses.replace(base, options={**base.options, "class_names": [bad, *world.class_names()[1:]]})
    with pytest.raises(ValueError, match=rf"task 'caption_cls': .* holds '{tag}', a special token"):
        build_kind(spec, classes, bb)
