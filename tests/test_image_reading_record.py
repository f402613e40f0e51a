"""An adapter records how its images were read (``base.image_reading``): at their own aspect as the processor reads
them ("native", LLaVA-NeXT's and Idefics3's default) or squashed to one square (``native_aspect(False)``), and
``load_pretrained`` reads them so again (review 202: a square adapter was read back at the native aspect, other
pixels and token counts, without a word). One that records neither was saved before this version: read on squares,
with a warning. Tiny LLaVA-NeXT, CPU."""

from __future__ import annotations

import json

import pytest
import test_llava_next

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.io.layout import AdapterFileError
from mtl_lora_vl.io.pretrained import load_pretrained


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return test_llava_next.build(tmp_path_factory.mktemp("next"))[2]


def _saved(folder, out, native: bool):
    bb = load_backbone(f"hf:{folder}")
    if not native:
        bb.native_aspect(False)
    model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    return mlv.save_adapter(model, out, base={"backbone": f"hf:{folder}"})


@pytest.mark.parametrize("native", [True, False])
def test_an_adapter_is_read_back_on_the_images_it_was_trained_on(folder, tmp_path, native):
    out = _saved(folder, tmp_path / "ad", native)
    base = json.loads((out / "mtl_lora_config.json").read_text())["base"]
    assert base["image_reading"] == ("native" if native else "square")
    back = load_pretrained(out, heads=False).backbone
    assert back.needs_image_sizes is native and back.resize.mode == ("anyres" if native else "squash")


def test_an_adapter_from_before_the_record_is_read_on_squares_with_a_warning(folder, tmp_path):
    out = _saved(folder, tmp_path / "ad", native=False)
    cfg = out / "mtl_lora_config.json"
    doc = json.loads(cfg.read_text())
    del doc["base"]["image_reading"]
    cfg.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="does not record how its images were read"):
        back = load_pretrained(out, heads=False).backbone
    assert back.resize.mode == "squash"
    doc["base"]["image_reading"] = "tiles"
    cfg.write_text(json.dumps(doc))
    with pytest.raises(AdapterFileError, match="base.image_reading must be 'native' or 'square'"):
        load_pretrained(out, heads=False)
