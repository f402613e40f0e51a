"""``load_backbone(image_reading=...)``: a backbone that reads each image either at its own aspect or on one square
(LLaVA-NeXT, LLaVA-OneVision, Idefics3 / SmolVLM) reads them as asked. Backbones that read images one way refuse
the option. Tiny models from configs, CPU."""

from __future__ import annotations

import json

import pytest
import test_llava_next
import test_llava_onevision
from idefics3_tiny import _num2words, save_tiny_idefics3  # noqa: F401 (an autouse fixture)
from qwen_tiny import save_tiny_qwen2vl

from mtl_lora_vl.backbones import BackboneError, load_backbone

BUILDERS = {"llava_next": lambda out: test_llava_next.build(out)[2],
            "llava_onevision": lambda out: test_llava_onevision.build(out)[2],
            "idefics3": save_tiny_idefics3}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_load_backbone_reads_images_as_asked(family, tmp_path):
    folder = BUILDERS[family](tmp_path / family)
    assert load_backbone(f"hf:{folder}").resize.mode == "anyres"   # their default: the processor's own reading
    square = load_backbone(f"hf:{folder}", image_reading="square")
    assert square.resize.mode == "squash" and not square.needs_image_sizes
    assert square.model._mtl_image_reading == "square"   # what save_adapter records
    row = square.lm_collator()([f"{square.image_token} caption:"])["input_ids"][0].tolist()
    assert row.count(square.image_token_id) == square.num_image_tokens
    if family == "idefics3":
        assert square.processor.image_processor.do_image_splitting is False
    native = load_backbone(f"hf:{folder}", image_reading="native")
    assert native.resize.mode == "anyres" and native.needs_image_sizes


def test_backbones_that_read_images_one_way_refuse_it_by_name(tmp_path):
    qwen = save_tiny_qwen2vl(tmp_path / "qwen")
    for spec in ("builtin", "builtin-llava", f"hf:{qwen}"):
        with pytest.raises(BackboneError, match=r"image_reading 'square' \(--image-reading\) applies to backbones "
                                                r"that can read .*reads images one way only: leave the option out"):
            load_backbone(spec, image_reading="square")
    folder = save_tiny_idefics3(tmp_path / "idefics3")
    with pytest.raises(BackboneError, match=r"image_reading 'tiles' \(--image-reading\): must be one of "
                                            r"\['native', 'square'\]"):
        load_backbone(f"hf:{folder}", image_reading="tiles")
    # a processor whose splitting cannot be followed exactly (do_resize off): unsplit squares only
    path = folder / "processor_config.json"
    cfg = json.loads(path.read_text())
    cfg["image_processor"]["do_resize"] = False
    path.write_text(json.dumps(cfg))
    with pytest.raises(BackboneError, match=r"image_reading 'native' \(--image-reading\): .*can be read unsplit "
                                            r"only; leave the option out, or give --image-reading square"):
        load_backbone(f"hf:{folder}", image_reading="native")
