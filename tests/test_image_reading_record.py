"""An adapter records how its images were read (``base.image_reading``): at their own aspect as the processor reads
them ("native", LLaVA-NeXT's and Idefics3's default) or squashed to one square (``native_aspect(False)``), and
``load_pretrained`` reads them so again (review 202: a square adapter was read back at the native aspect, other
pixels and token counts, without a word). One that records neither was saved before this version: read on squares,
with a warning. Tiny LLaVA-NeXT, CPU."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import test_llava_next
from idefics3_tiny import _num2words, save_tiny_idefics3  # noqa: F401 (an autouse fixture)
from PIL import Image

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.backbones.idefics3 import Idefics3Backbone
from mtl_lora_vl.backbones.llava_next import LlavaNextBackbone, LlavaOnevisionBackbone
from mtl_lora_vl.backbones.mistral3 import Mistral3Backbone
from mtl_lora_vl.cli.export import export_main
from mtl_lora_vl.io.layout import AdapterFileError
from mtl_lora_vl.io.pretrained import load_pretrained
from mtl_lora_vl.mtl_lora_model import unload


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
    with pytest.raises(AdapterFileError, match=r"image_reading must be one of \['native', 'square', 'processor'\]"):
        load_pretrained(out, heads=False)


def _reading(adapter) -> str | None:
    return json.loads((adapter / "mtl_lora_config.json").read_text())["base"].get("image_reading")


@pytest.fixture(scope="module")
def next_folder(folder):
    return folder


# Review 206 ---------------------------------------------------------------------------------------------------
def test_a_split_adapter_exported_over_an_unsplitting_processor_keeps_splitting(tmp_path):
    """A native (split) Idefics3 adapter exported with --backbone pointing at a copy of the model whose processor
    has do_image_splitting off: load_pretrained splits (as recorded), but the merged folder's processor is the
    copy's, unsplit: 4 image tokens per picture where the task was trained on 52 (3 x 4 crops and the global)."""
    from transformers import AutoProcessor

    split = save_tiny_idefics3(tmp_path / "split")
    nosplit = save_tiny_idefics3(tmp_path / "nosplit", splitting=False)
    bb = load_backbone(f"hf:{split}")
    model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1))
    ad = mlv.save_adapter(model, tmp_path / "ad", base={"backbone": f"hf:{split}"})
    assert _reading(ad) == "native"
    assert export_main(["--adapter", str(ad), "--task", "a", "--format", "merged", "--backbone", f"hf:{nosplit}",
                        "--out", str(tmp_path / "merged")]) == 0
    prompt = f"{bb.image_token} question: what colour is the circle ? answer:"
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    ids = AutoProcessor.from_pretrained(tmp_path / "merged")(images=[img], text=[prompt])["input_ids"][0]
    trained = bb.lm_collator()([prompt], image_sizes=[(48, 64)])["input_ids"][0].tolist()
    assert ids.count(bb.image_token_id) == trained.count(bb.image_token_id) == 52



def test_an_adapter_trained_on_a_bare_llava_next_is_read_back_at_its_own_aspect(next_folder, tmp_path):
    """README's own loop: LlavaNextForConditionalGeneration + its processor (each picture at its own aspect),
    mlv.attach, save_adapter(base={"backbone": "hf:DIR"}). Nothing is recorded, so load_pretrained / eval --adapter
    read it on the 64 x 64 square with a warning that it was 'saved before this version'."""
    from transformers import LlavaNextForConditionalGeneration

    model = mlv.attach(LlavaNextForConditionalGeneration.from_pretrained(str(next_folder)),
                       mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    ad = mlv.save_adapter(model, tmp_path / "ad", base={"backbone": f"hf:{next_folder}"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = load_pretrained(ad, heads=False).backbone
    assert not [w for w in caught if "saved before this version" in str(w.message)]
    assert back.needs_image_sizes and back.resize.mode == "anyres"



def _square_adapter(folder, out):
    bb = load_backbone(f"hf:{folder}")
    bb.native_aspect(False)
    return mlv.save_adapter(mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2)), out,
                            base={"backbone": f"hf:{folder}"})


def test_load_adapter_on_a_backbone_that_reads_otherwise_warns(next_folder, tmp_path):
    """load_adapter(bb.model, square_adapter) on a native backbone said nothing (review 206): the backbone read at
    its own aspect, and a save after it recorded "native". It names the call that reads as the adapter was trained."""
    sq = _square_adapter(next_folder, tmp_path / "sq")
    bb = load_backbone(f"hf:{next_folder}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mlv.load_adapter(bb.model, sq, is_trainable=True)
    assert any("call backbone.native_aspect(False)" in str(w.message) for w in caught)


def test_an_adapter_loaded_on_a_bare_model_and_saved_again_keeps_its_record(next_folder, tmp_path):
    """load_adapter(bare HF model, native_adapter) then save_adapter: the record is dropped, so the re-saved
    adapter is read on the square (with the 'saved before this version' warning) by load_pretrained."""
    from transformers import LlavaNextForConditionalGeneration

    bb = load_backbone(f"hf:{next_folder}")
    native = mlv.save_adapter(mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2)), tmp_path / "n",
                              base={"backbone": f"hf:{next_folder}"})
    assert _reading(native) == "native"
    model = mlv.load_adapter(LlavaNextForConditionalGeneration.from_pretrained(str(next_folder)), native,
                             is_trainable=True)
    again = mlv.save_adapter(model, tmp_path / "again", base={"backbone": f"hf:{next_folder}"})
    assert _reading(again) == "native"



def test_a_split_adapter_on_a_processor_that_cannot_split_names_the_record(tmp_path):
    """The recorded "native" on a processor whose splitting cannot be followed (do_resize off): the message says
    'images are read unsplit' (they are not: the load fails) and 'point at it with --backbone' (the model is
    there; its processor is what changed). It should name base.image_reading and the processor field."""
    split = save_tiny_idefics3(tmp_path / "split")
    bb = load_backbone(f"hf:{split}")
    ad = mlv.save_adapter(mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1)), tmp_path / "ad",
                          base={"backbone": f"hf:{split}"})
    cfg = json.loads((split / "processor_config.json").read_text())
    cfg["image_processor"]["do_resize"] = False
    (split / "processor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterFileError) as e:
        load_pretrained(ad, heads=False)
    msg = str(e.value)
    assert "base.image_reading 'native'" in msg and "Restore the processor files" in msg
    assert "images are read unsplit" not in msg and "--backbone" not in msg
    shutil.rmtree(tmp_path / "split")


# Review 211 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reading", ["native", "square"])
def test_another_familys_base_is_named_not_an_attribute_error(folder, tmp_path, reading):
    """A LLaVA-NeXT adapter loaded with --backbone naming a model of another family (the built-in LLaVA, or a
    Qwen2-VL): the recorded reading was applied before the family check, and "native" died with AttributeError:
    'HFVLMBackbone' object has no attribute 'native_aspect' instead of the check's message."""
    ad = _saved(folder, tmp_path / "ad", native=reading == "native")
    with pytest.raises(AdapterFileError,
                       match=r"made for a model of family llava_next .*backbone='builtin-llava' given"):
        load_pretrained(ad, heads=False, backbone="builtin-llava")


def test_a_lora_export_of_a_square_adapter_says_how_its_images_were_read(folder, tmp_path, caplog):
    """export_lora of a square adapter said nothing (save_merged warns): LLaVA-NeXT's processor, given to the base
    model the PEFT LoRA is loaded onto, reads pictures at their own aspect, not as the task was trained."""
    bb = load_backbone(f"hf:{folder}")
    bb.native_aspect(False)
    model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    with caplog.at_level("WARNING"):
        out = mlv.export_lora(model, ["a", "b"], tmp_path / "peft", format="peft")
    assert "native_aspect(False)" in (out / "README.md").read_text() and "read on one square" in caplog.text
    # the adapter's own family only (review 274): it named Idefics3's do_image_splitting and three other families
    assert "LLaVA-NeXT's processor reads pictures at their own aspect only" in caplog.text
    assert not any(w in caplog.text for w in ("do_image_splitting", "Idefics3", "OneVision", "Mistral")), caplog.text
    caplog.clear()
    bb.native_aspect(True)
    with caplog.at_level("WARNING"):
        mlv.export_lora(model, "a", tmp_path / "native", format="peft")
    assert "read on one square" not in caplog.text


# Review 215 ---------------------------------------------------------------------------------------------------
def test_a_lora_export_of_a_square_idefics3_adapter_names_its_own_processor_only(tmp_path, caplog):
    """The note named every square-reading family's processor (review 274); an Idefics3 adapter's says
    do_image_splitting=False, and nothing of LLaVA-NeXT, LLaVA-OneVision or Mistral 3."""
    bb = load_backbone(f"hf:{save_tiny_idefics3(tmp_path / 'idefics3')}", image_reading="square")
    model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1))
    with caplog.at_level("WARNING"):
        mlv.export_lora(model, "a", tmp_path / "lora", format="plain")
    assert "read on one square" in caplog.text and "do_image_splitting=False" in caplog.text
    assert not any(w in caplog.text for w in ("LLaVA", "Mistral", "own aspect")), caplog.text


def test_unload_takes_the_loaded_reading_off_a_bare_model(next_folder, tmp_path):
    """A square adapter loaded onto a bare LLaVA-NeXT, unloaded, then a native one loaded: the square stayed, so the
    native adapter was warned about ('call backbone.native_aspect(True)', with no backbone) and a save recorded it
    square."""
    from transformers import LlavaNextForConditionalGeneration

    sq = _square_adapter(next_folder, tmp_path / "sq")
    native = _saved(next_folder, tmp_path / "native", native=True)
    bare = unload(mlv.load_adapter(LlavaNextForConditionalGeneration.from_pretrained(str(next_folder)), sq))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mlv.load_adapter(bare, native, is_trainable=True)
    assert not [w for w in caught if "native_aspect" in str(w.message)]
    assert _reading(mlv.save_adapter(bare, tmp_path / "again", base={"backbone": f"hf:{next_folder}"})) == "native"


def test_a_backbone_made_on_a_bare_model_reads_as_its_loaded_adapter(next_folder, tmp_path):
    """load_adapter(bare LLaVA-NeXT / Idefics3, square adapter), then Backbone.from_model on it: the backbone read at
    its own aspect (anyres tiles, crops), and a save after it recorded "native" for the square-trained adapter (a
    Qwen2-VL backbone made so takes the adapter's image area)."""
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration
    from transformers import LlavaNextForConditionalGeneration as LlavaNext

    split = save_tiny_idefics3(tmp_path / "split")
    for cls, backbone, folder in ((LlavaNext, LlavaNextBackbone, next_folder),
                                  (Idefics3ForConditionalGeneration, Idefics3Backbone, split)):
        sq = _square_adapter(folder, tmp_path / f"sq-{backbone.__name__}")
        bare = mlv.load_adapter(cls.from_pretrained(str(folder)), sq, is_trainable=True)
        bb = backbone.from_model(bare, AutoProcessor.from_pretrained(folder))
        assert bb.resize.mode == "squash" and not bb.needs_image_sizes, backbone.__name__
        again = mlv.save_adapter(bare, tmp_path / f"again-{backbone.__name__}", base={"backbone": f"hf:{folder}"})
        assert _reading(again) == "square"
        # a model without an adapter: the processor's reading
        assert backbone.from_model(cls.from_pretrained(str(folder)),
                                   AutoProcessor.from_pretrained(folder)).resize.mode == "anyres"


def test_a_merged_export_of_a_square_adapter_is_warned_in_each_familys_words(tmp_path, caplog):
    """fit_processor_files("square") of the families whose processor never reads a picture on one square (LLaVA-NeXT,
    LLaVA-OneVision, Mistral 3) warns, naming the family's processor; "native" and no reading say nothing (helper
    265: one shared warning, each family's words kept)."""
    tail = "processor does: used with its processor, the merged model reads pictures at their own aspect, not as its " \
           "task was trained"
    said = {LlavaNextBackbone: "read on the square canvas (native_aspect(False)), which no LlavaNext ",
            LlavaOnevisionBackbone: "read on the square canvas (native_aspect(False)), which no LlavaOnevision ",
            Mistral3Backbone: "squashed to one square (--image-reading square, native_aspect(False)), which no "
                              "Mistral3 (Pixtral) "}
    for cls, words in said.items():
        caplog.clear()
        with caplog.at_level("WARNING"):
            cls.fit_processor_files(tmp_path, reading="square")
        assert caplog.messages == [f"{tmp_path}: the adapter's images were {words}{tail}"], cls.__name__
        caplog.clear()
        with caplog.at_level("WARNING"):
            cls.fit_processor_files(tmp_path, reading="native")
            cls.fit_processor_files(tmp_path, max_pixels=1024)
        assert not caplog.messages, cls.__name__


def test_a_merged_export_of_a_square_adapter_names_the_export_not_its_temporary_folder(next_folder, tmp_path, caplog):
    """save_merged of a square-read LLaVA-NeXT adapter warned naming ``OUT/.merged.XXXX.tmp``, the folder the export
    is written in before it is renamed to OUT (helper 506's walk): a folder that no longer exists when read."""
    from transformers import LlavaNextForConditionalGeneration

    sq = _square_adapter(next_folder, tmp_path / "sq")
    model = mlv.load_adapter(LlavaNextForConditionalGeneration.from_pretrained(str(next_folder)), sq)
    out = tmp_path / "merged"
    with caplog.at_level("WARNING"):
        mlv.save_merged(model, "a", out, source_dir=next_folder)
    said = [m for m in caplog.messages if "the adapter's images were" in m]
    assert said and all(m.startswith(f"{out}: ") for m in said), said
    assert not any(".tmp" in m for m in said), said
