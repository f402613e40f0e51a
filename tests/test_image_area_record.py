"""Qwen2-VL's image area (``base.image_max_pixels``) kept across the Python API as the CLI keeps it (review 211): an
adapter saved from a backbone loaded with ``image_max_pixels`` records it, a bare model it is loaded onto carries it
into ``save_merged`` and a second ``save_adapter``, and a backbone that reads another area is warned about. Tiny
Qwen2-VL, CPU."""

from __future__ import annotations

import json
import warnings

import pytest
from test_qwen2vl_backbone import _tiny_sized
from vlm_checks import loader_images, pictures

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.backbones.image_record import image_record
from mtl_lora_vl.backbones.qwen2_vl import Qwen2VLBackbone
from mtl_lora_vl.cli.export import export_command
from mtl_lora_vl.io.layout import AdapterFileError
from mtl_lora_vl.io.pretrained import load_pretrained
from mtl_lora_vl.mtl_lora_model import unload


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _tiny_sized(tmp_path_factory.mktemp("qwen"), longest_edge=1_000_000)


def _adapter(folder, out, **base):
    bb = load_backbone(f"hf:{folder}", image_max_pixels=2048)
    model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1))
    return mlv.save_adapter(model, out, base={"backbone": f"hf:{folder}", **base})


def _area(adapter):
    return json.loads((adapter / "mtl_lora_config.json").read_text())["base"].get("image_max_pixels")


def _saved_before(adapter, asked=None):
    """``adapter``'s record as saved before the area read was recorded: no ``image_min_pixels``, ``image_max_pixels``
    the area asked for (None: none asked, the default)."""
    path = adapter / "mtl_lora_config.json"
    doc = json.loads(path.read_text())
    doc["base"].pop("image_min_pixels", None)
    doc["base"].pop("image_max_pixels", None)
    doc["base"].update({"image_max_pixels": asked} if asked else {})
    path.write_text(json.dumps(doc))
    return adapter


def test_an_adapter_saved_from_python_records_its_image_area(folder, tmp_path):
    """load_backbone(image_max_pixels=2048) and save_adapter: nothing was recorded, so load_pretrained read the
    adapter's pictures within 448² (a 300 x 200 picture: 228 image tokens where the task was trained on 6)."""
    ad = _adapter(folder, tmp_path / "ad")
    assert _area(ad) == 2048
    back = load_pretrained(ad, heads=False).backbone
    assert back.resize.budget == 2048 and back.resize.resized_size(300, 200) == (48, 32)


def test_a_bare_model_keeps_the_recorded_area_for_its_export_and_its_next_save(folder, tmp_path):
    """load_adapter(Qwen2VLForConditionalGeneration, adapter of 2048 pixels): save_merged capped the processor at
    448² (longest_edge 200704), a second save_adapter dropped the record and a backbone made on the model read 448²."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    ad = _adapter(folder, tmp_path / "ad", image_max_pixels=2048)   # (as train records it)
    bare = mlv.load_adapter(Qwen2VLForConditionalGeneration.from_pretrained(str(folder)), ad, is_trainable=True)
    merged = AutoProcessor.from_pretrained(mlv.save_merged(bare, "a", tmp_path / "merged")).image_processor
    assert merged(images=pictures([(800, 1000)]))["image_grid_thw"].tolist() == [[1, 4, 6]]   # 32 x 48: in 2048
    assert _area(mlv.save_adapter(bare, tmp_path / "again", base={"backbone": f"hf:{folder}"})) == 2048
    bb = Qwen2VLBackbone.from_model(bare, AutoProcessor.from_pretrained(folder))   # a backbone made on it reads so
    assert bb.resize.budget == 2048


def test_load_adapter_on_a_backbone_of_another_area_warns(folder, tmp_path):
    """load_adapter(bb.model, adapter of 2048 pixels) on a backbone loaded at the default area said nothing: its
    pictures were read at up to 448², other token counts than the task's."""
    ad = _adapter(folder, tmp_path / "ad", image_max_pixels=2048)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mlv.load_adapter(load_backbone(f"hf:{folder}").model, ad)
    assert any("image_max_pixels=2048" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mlv.load_adapter(load_backbone(f"hf:{folder}", image_max_pixels=2048).model, ad)
    assert not [w for w in caught if "image_max_pixels" in str(w.message)]


def test_a_peft_export_names_the_processors_max_pixels(folder, tmp_path, caplog):
    """export_lora (PEFT) of a 2048-pixel adapter said nothing: the base model's processor (12.8 M pixels as
    released) fed the LoRA'd model larger pictures than the task was trained on."""
    bb = load_backbone(f"hf:{folder}", image_max_pixels=2048)
    model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1))
    with caplog.at_level("WARNING"):
        out = mlv.export_lora(model, "a", tmp_path / "peft", format="peft")
    assert "max_pixels=2048" in (out / "README.md").read_text() and "max_pixels=2048" in caplog.text


# Review 215 ---------------------------------------------------------------------------------------------------
def test_another_familys_base_is_named_not_the_area(folder, tmp_path):
    """A 2048-pixel Qwen2-VL adapter loaded with --backbone of another family: the recorded area was applied before
    the family check, so the message was 'image_max_pixels 2048 (--image-max-pixels, ...) applies to backbones
    that keep each image's own size ...: leave the option out' -- an option nobody gave -- not the family's."""
    ad = _adapter(folder, tmp_path / "ad")
    with pytest.raises(AdapterFileError, match=r"made for a model of family qwen2_vl "
                                               r".*backbone='builtin-llava' given") as e:
        load_pretrained(ad, heads=False, backbone="builtin-llava")
    assert "--image-max-pixels" not in str(e.value)


def _area_warnings(model, adapter):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mlv.load_adapter(model, adapter)
    return [str(w.message) for w in caught if "base.image_max_pixels" in str(w.message)]


def test_the_area_warning_names_a_fix_that_exists_and_only_for_another_area(folder, tmp_path):
    """A default-area adapter on a backbone loaded with image_max_pixels=2048 was told to 'load the backbone with
    image_max_pixels=None'; an adapter trained with --image-max-pixels 200704 (448², the default) on a default
    backbone was warned about although both read the same area."""
    bb = load_backbone(f"hf:{folder}")
    default = mlv.save_adapter(mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1)),
                               tmp_path / "default", base={"backbone": f"hf:{folder}"})
    said = _area_warnings(load_backbone(f"hf:{folder}", image_max_pixels=2048).model, default)   # (now recorded)
    assert len(said) == 1 and "within 1024 to 200704 pixels" in said[0] and "within 1024 to 2048;" in said[0], said
    assert "image_max_pixels=200704" in said[0]
    explicit = mlv.save_adapter(mlv.attach(load_backbone(f"hf:{folder}", image_max_pixels=200704).model,
                                           mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1)),
                                tmp_path / "explicit", base={"backbone": f"hf:{folder}", "image_max_pixels": 200704})
    assert not _area_warnings(load_backbone(f"hf:{folder}").model, explicit)
    assert not _area_warnings(load_backbone(f"hf:{folder}", image_max_pixels=200704).model, default)
    old = _saved_before(default)   # an adapter saved before the area read was recorded: as then
    said = _area_warnings(load_backbone(f"hf:{folder}", image_max_pixels=2048).model, old)
    assert len(said) == 1 and "load the backbone without image_max_pixels" in said[0], said
    assert "image_max_pixels=None" not in said[0] and "within the default 200704" in said[0]
    assert not _area_warnings(load_backbone(f"hf:{folder}").model, _saved_before(explicit, 200704))


def test_unload_takes_the_loaded_area_off_a_bare_model(folder, tmp_path):
    """MTLLoRAModel.from_pretrained(bare Qwen2-VL, 2048-pixel adapter).unload(), then another adapter of the default
    area loaded onto the same model: the 2048 stayed, so it was warned about as 'this model's backbone' (there is
    none) and a save recorded image_max_pixels 2048 for the default-area adapter (which records its own 448² now). A
    backbone's own area stays."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    ad = _adapter(folder, tmp_path / "ad", image_max_pixels=2048)
    bb = load_backbone(f"hf:{folder}")
    default = mlv.save_adapter(mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1)),
                               tmp_path / "default", base={"backbone": f"hf:{folder}"})
    bare = mlv.MTLLoRAModel.from_pretrained(Qwen2VLForConditionalGeneration.from_pretrained(str(folder)), ad).unload()
    assert not _area_warnings(bare, default)
    assert _area(mlv.save_adapter(bare, tmp_path / "again", base={"backbone": f"hf:{folder}"})) == 200704   # its own
    merged = mlv.MTLLoRAModel.from_pretrained(Qwen2VLForConditionalGeneration.from_pretrained(str(folder)), ad)
    assert image_record(merged.merge_and_unload("a")).max_pixels == 2048   # the merged task's pictures: within 2048
    two = load_backbone(f"hf:{folder}", image_max_pixels=2048)
    unload(mlv.load_adapter(two.model, ad))
    assert image_record(two.model).max_pixels == 2048
    made = mlv.load_adapter(Qwen2VLForConditionalGeneration.from_pretrained(str(folder)), ad)
    Qwen2VLBackbone.from_model(made, AutoProcessor.from_pretrained(folder))   # the area is this backbone's now
    assert image_record(unload(made)).max_pixels == 2048


# Review 276 ---------------------------------------------------------------------------------------------------
def _read_on(adapter, proc):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bb = load_pretrained(adapter, heads=False, backbone=f"hf:{proc}").backbone
    return bb.resize.resized_size(300, 200), [str(w.message) for w in caught if "max_pixels" in str(w.message)]


def test_the_record_is_the_area_read_not_the_area_asked(folder, tmp_path):
    """Trained at --image-max-pixels 4096 on a processor capped at 2048, a 300 x 200 picture was read at 48 x 32 but
    4096 was recorded: loaded on a processor allowing 1M pixels it was read at 64 x 48 (12 tokens for 6), and on the
    training processor the 'above its processor's max_pixels' warning came back at every load. Nothing asked: nothing
    recorded, and the 1M processor read 304 x 192."""
    small = _tiny_sized(tmp_path / "small", longest_edge=2048)
    for asked in (4096, None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # (the training run's own warning, once)
            bb = load_backbone(f"hf:{small}", image_max_pixels=asked)
        model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1))
        ad = mlv.save_adapter(model, tmp_path / f"ad{asked}",
                              base={"backbone": f"hf:{small}", **({"image_max_pixels": asked} if asked else {})})
        base = json.loads((ad / "mtl_lora_config.json").read_text())["base"]
        assert (base["image_min_pixels"], base["image_max_pixels"]) == (1024, 2048)
        assert _read_on(ad, small) == ((48, 32), [])
        assert _read_on(ad, folder) == ((48, 32), [])
    assert _read_on(_saved_before(ad, 4096), folder)[0] == (64, 48)   # saved before: the area asked for, as then
    assert _read_on(ad, small)[0] == (48, 32)
    assert _read_on(_saved_before(ad), folder)[0] == (304, 192)


def test_a_bare_model_carries_the_area_read_to_its_backbone(folder, tmp_path):
    """An adapter read within 1024..2048 pixels, loaded onto a bare model of a 1M-pixel processor: a backbone made on
    it reads within 1024..2048, whatever that processor allows."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    small = _tiny_sized(tmp_path / "small", longest_edge=2048)
    ad = _adapter(small, tmp_path / "ad")
    bare = mlv.load_adapter(Qwen2VLForConditionalGeneration.from_pretrained(str(folder)), ad, is_trainable=True)
    assert image_record(bare).bounds == (1024, 2048)
    bb = Qwen2VLBackbone.from_model(bare, AutoProcessor.from_pretrained(folder))
    assert (bb.resize.min_pixels, bb.resize.budget, bb.resize.resized_size(300, 200)) == (1024, 2048, (48, 32))


def test_a_hand_edited_minimum_is_refused_by_name(folder, tmp_path):
    ad = _adapter(folder, tmp_path / "ad")
    path = ad / "mtl_lora_config.json"
    doc = json.loads(path.read_text())
    for low, high in ((4096, 2048), (0, 2048), (1024, None)):
        doc["base"].update(image_min_pixels=low, image_max_pixels=high)
        path.write_text(json.dumps(doc))
        with pytest.raises(AdapterFileError, match=r"base\.image_(min|max)_pixels"):
            load_pretrained(ad, heads=False)


def test_the_context_warning_counts_a_qwen_image_by_its_resized_size(folder, tmp_path, caplog):
    """warn_lm_context counted every Qwen2-VL image at the nominal square's tokens (4 within 1024 pixels here), but a
    1000 x 16 picture is resized to 240 x 16 (15 tokens): rows past the context by those 11 were not named (review
    276; released: 28 x 5000 within 3136 pixels fills 26 tokens for 4). Each image is counted at its resized size."""
    import logging

    from PIL import Image

    from mtl_lora_vl.data.readers import read_split
    from mtl_lora_vl.tasks import build_kind, load_spec

    bb = load_backbone(f"hf:{folder}", image_max_pixels=1024)
    w, h = bb.resize.resized_size(1000, 16)
    wide = (w // 16) * (h // 16)
    assert bb.num_image_tokens == 4 and wide > bb.num_image_tokens, (w, h)
    for i in range(2):
        Image.new("RGB", (1000, 16), (200, 10 * i, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps({"image": f"{i}.png", "caption": "a red bar"}) + "\n"
                                                 for i in range(2)))
    (tmp_path / "caps.toml").write_text('name = "caps"\nkind = "captioning"\n[data]\nformat = "jsonl"\n'
                                        + "".join(f'[data.{s}]\nfile = "caps.jsonl"\n'
                                                  for s in ("train", "val", "test")))
    split = read_split("jsonl", tmp_path, file="caps.jsonl")
    kind = build_kind(load_spec(str(tmp_path / "caps.toml")), split, bb)
    col = bb.lm_collator()
    prompt, target = kind.sample_lm(split.examples[0], 0)[:2]
    square = col([prompt], [target])["input_ids"].shape[1]
    cfg = bb.model.config.get_text_config()
    old = cfg.max_position_embeddings
    cfg.max_position_embeddings = square + 1     # the nominal count fits; the picture's own does not
    try:
        with caplog.at_level(logging.WARNING):
            kind.warn_lm_context(split.examples, bb)
    finally:
        cfg.max_position_embeddings = old
    assert "2 of its 2 training rows are longer than the language model's context" in caplog.text
    assert f"its {wide} image tokens" in caplog.text


# Helper 292 ---------------------------------------------------------------------------------------------------
def _read_alike(bb, exported) -> None:
    """transformers' own processor of ``exported`` (AutoProcessor, and on PIL's resampling the same pixels) reads a
    300 x 200, a 28 x 5000 and a 20 x 12 picture as ``bb`` does."""
    import torch
    from transformers import AutoProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    auto = AutoProcessor.from_pretrained(exported).image_processor
    pil = Qwen2VLImageProcessorPil.from_pretrained(exported)
    for hw in [(200, 300), (5000, 28), (12, 20)]:
        pic = pictures([hw])
        mine = bb._vision_inputs(*loader_images(bb, pic))
        assert auto(images=pic)["image_grid_thw"].tolist() == mine["image_grid_thw"].tolist(), hw
        torch.testing.assert_close(pil(images=pic, return_tensors="pt")["pixel_values"], mine["pixel_values"])


def test_a_merged_processor_reads_exactly_the_recorded_area(folder, tmp_path):
    """An adapter read within 1024..4096 pixels, merged from a base whose processor allows 256..2048: the export only
    lowered max_pixels (to 2048) and kept the source's minimum, so the merged processor read a 300 x 200 picture at
    48 x 32 (6 tokens where training read 64 x 48, 12), a 28 x 5000 at 592 x 16 for 848 x 16 and a 20 x 12 at 16 x 16
    for 48 x 32. It carries exactly the recorded min_pixels / max_pixels now, from Python and from the export
    command; a save_merged given image_max_pixels still caps the source's processor at it, as before."""
    small = _tiny_sized(tmp_path / "small", longest_edge=2048, shortest_edge=256)
    bb = load_backbone(f"hf:{folder}", image_max_pixels=4096)
    model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1))
    ad = mlv.save_adapter(model, tmp_path / "ad", base={"backbone": f"hf:{folder}", "image_max_pixels": 4096})
    read = load_pretrained(ad, heads=False, backbone=f"hf:{small}").backbone
    assert (read.resize.min_pixels, read.resize.budget, read.resize.resized_size(300, 200)) == (1024, 4096, (64, 48))
    merged = mlv.save_merged(read.model, "a", tmp_path / "merged")
    fields = json.loads((merged / "processor_config.json").read_text())["image_processor"]
    assert (fields["min_pixels"], fields["max_pixels"]) == (1024, 4096)
    assert (fields["size"]["shortest_edge"], fields["size"]["longest_edge"]) == (1024, 4096)
    _read_alike(read, merged)
    [cli] = export_command(["--adapter", str(ad), "--task", "a", "--backbone", f"hf:{small}",
                            "--out", str(tmp_path / "cli")])
    _read_alike(read, cli)
    capped = mlv.save_merged(read.model, "a", tmp_path / "capped", image_max_pixels=1_000_000)
    fields = json.loads((capped / "processor_config.json").read_text())["image_processor"]
    assert (fields["size"]["shortest_edge"], fields["max_pixels"]) == (256, 2048)   # the area asked for, as then


def test_a_lora_exports_note_names_the_exact_area(folder, tmp_path, caplog):
    """export_lora of an adapter read within 1024..4096 pixels said 'load the base model's processor with
    max_pixels=4096 at most' and nothing of the minimum: a base processor of 256..2048 kept so read a 20 x 12 picture
    at 16 x 16 (1 token for 6). The note names both bounds, and a processor loaded as it says reads as training did."""
    from transformers import AutoProcessor

    small = _tiny_sized(tmp_path / "small", longest_edge=2048, shortest_edge=256)
    bb = load_backbone(f"hf:{folder}", image_max_pixels=4096)
    model = mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1))
    with caplog.at_level("WARNING"):
        out = mlv.export_lora(model, "a", tmp_path / "peft", format="peft")
    note = (out / "README.md").read_text()
    assert "min_pixels=1024, max_pixels=4096" in note and "at most" not in note, note
    assert "min_pixels=1024, max_pixels=4096" in caplog.text
    proc = AutoProcessor.from_pretrained(small, min_pixels=1024, max_pixels=4096).image_processor
    for hw in [(200, 300), (5000, 28), (12, 20)]:
        mine = bb._vision_inputs(*loader_images(bb, pictures([hw])))
        assert proc(images=pictures([hw]))["image_grid_thw"].tolist() == mine["image_grid_thw"].tolist(), hw


def test_a_merged_export_on_a_processor_of_another_minimum_reads_the_adapters_pixels(tmp_path):
    """An adapter read within 256 to 4096 pixels, loaded on a processor of min_pixels 2048 (load_pretrained reads the
    recorded area there), then save_merged from that processor: the merged processor kept min_pixels 2048 and read a
    12x20 picture at 48x64 (12 image tokens) where the adapter read it at 16x16 (1 token)."""
    from transformers import AutoProcessor

    from mtl_lora_vl.data.images import to_uint8_tensor

    trained_on = _tiny_sized(tmp_path / "a", shortest_edge=256, longest_edge=4096)
    loaded_on = _tiny_sized(tmp_path / "b", shortest_edge=2048, longest_edge=1_000_000)
    bb = load_backbone(f"hf:{trained_on}")
    ad = mlv.save_adapter(mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1)), tmp_path / "ad",
                          base={"backbone": f"hf:{trained_on}"})
    pic = pictures([(12, 20)])[0]
    back = load_pretrained(ad, heads=False, backbone=f"hf:{loaded_on}").backbone
    read = tuple(to_uint8_tensor(pic, back.resize).shape[1:])
    assert read == tuple(to_uint8_tensor(pic, bb.resize).shape[1:]) == (16, 16)
    merged = AutoProcessor.from_pretrained(mlv.save_merged(back.model, "a", tmp_path / "m", source_dir=loaded_on))
    grid = merged.image_processor(images=[pic], return_tensors="pt")["image_grid_thw"][0].tolist()
    assert (grid[1] * 8, grid[2] * 8) == read   # (patch 8)


# Review 292 ---------------------------------------------------------------------------------------------------
def test_an_older_records_area_above_the_processors_names_the_record_not_the_option(folder, tmp_path):
    """An adapter saved before the area read was recorded (base.image_max_pixels 4096, asked for) loaded where the
    processor allows 2048: load_pretrained and a backbone made on a bare model were told 'Give --image-max-pixels
    2048 or less' -- an option nobody gave, and one eval --adapter refuses; the fix is the training processor."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    small = _tiny_sized(tmp_path / "p", longest_edge=2048)
    ad = _saved_before(_adapter(folder, tmp_path / "ad", backbone=f"hf:{small}"), 4096)

    def said(load):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            budget = load().resize.budget
        return budget, [str(w.message) for w in caught if "pixels" in str(w.message)]

    bare = mlv.load_adapter(Qwen2VLForConditionalGeneration.from_pretrained(str(small)), ad)
    for budget, messages in (said(lambda: load_pretrained(ad, heads=False).backbone),
                             said(lambda: Qwen2VLBackbone.from_model(bare, AutoProcessor.from_pretrained(small)))):
        assert budget == 2048 and len(messages) == 1, messages
        assert "--image-max-pixels" not in messages[0], messages[0]
        assert "trained reading images within 4096 pixels asked for (base.image_max_pixels" in messages[0]
        assert "this processor allows 2048" in messages[0]
        assert "Load the adapter on the processor it was trained with" in messages[0]


def test_a_records_area_above_the_backbones_processor_names_read_within_first(tmp_path):
    """load_adapter(bb.model) of an adapter read within 1024 to 4096 pixels, on a backbone whose processor allows
    2048: told to 'load the backbone with image_max_pixels=4096 (--image-max-pixels 4096)', which reads 1024 to
    2048 again (the processor's cap) and names an option eval --adapter refuses; read_within gives the area."""
    big, small = (_tiny_sized(tmp_path / name, longest_edge=edge) for name, edge in (("b", 1_000_000), ("s", 2048)))
    bb = load_backbone(f"hf:{big}", image_max_pixels=4096)
    ad = mlv.save_adapter(mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=1)), tmp_path / "ad",
                          base={"backbone": f"hf:{small}"})
    said = _area_warnings(load_backbone(f"hf:{small}").model, ad)
    assert len(said) == 1 and "within 1024 to 4096 pixels" in said[0] and "within 1024 to 2048;" in said[0], said
    assert "--image-max-pixels" not in said[0] and "call backbone.read_within(1024, 4096)" in said[0]
    assert "image_max_pixels=4096 where its processor's own min_pixels is 1024 and its max_pixels at least 4096" \
        in said[0]
    with pytest.warns(UserWarning, match="images are read within 2048 pixels"):   # what that option gives here
        assert load_backbone(f"hf:{small}", image_max_pixels=4096).resize.budget == 2048
