"""Gemma 3 (tiny, from configs): the family row, mixed-task routes through the SigLIP tower and the Gemma 3
decoder (logits, greedy and beam generate, gradients), the PEFT export and the merged checkpoint on the bare model;
and the backbone class (--backbone hf:DIR): the collator's ids and the device pixels against the processor's,
per-row losses, mixed-task routes, routed generate, cached candidate scores, the train and eval commands."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from gemma3_tiny import IMAGE_TOKEN, inputs, save_tiny_gemma3, tiny_gemma3, tiny_gemma3_backbone
from PIL import Image
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
    prompts,
    square_images,
)

import mtl_lora_vl as mlv
import mtl_lora_vl.backbones.base as base_module
import mtl_lora_vl.backbones.hf_vlm as hf_vlm_module
from mtl_lora_vl.backbones import Gemma3Backbone
from mtl_lora_vl.backbones.base import GENERATE, GRAD_CHECKPOINTING, LM_LOGITS
from mtl_lora_vl.backbones.spec import parse_spec
from mtl_lora_vl.families import family_named, find_family


def _adapted(method: str = "mtl_lora", seed: int = 0):
    torch.manual_seed(seed)
    m = tiny_gemma3().eval()
    mlv.attach(m, mlv.MTLLoRAConfig(tasks=["a", "b"], method=method, r=4))
    return perturb_adapters(m)


# ------------------------------------------------------------------------------------------ the bare model
def test_default_targets_take_the_vision_layers_and_the_language_model():
    m = _adapted()
    info = m._mtl_lora
    assert find_family(m).name == info.family == "gemma3"
    linears = {n for n, mod in tiny_gemma3().named_modules() if isinstance(mod, torch.nn.Linear)}
    vision = {n for n in linears if ".vision_tower." in n}
    text = {n for n in linears if ".language_model." in n}
    assert len(vision) == 12 and len(text) == 14          # 2 layers: q k v out fc1 fc2 / q k v o gate up down
    assert {n for n, t in info.towers.items() if t == "image"} == vision
    assert {n for n, t in info.towers.items() if t == "text"} == text
    for pattern in family_named("gemma3").targets["image"]:
        assert any(re.search(pattern, n) for n in vision)


@pytest.mark.parametrize("method", ["mtl_lora", "task_lora"])
def test_a_mixed_route_equals_each_task_alone(method):
    """Logits, greedy and 3-beam generate under route [0, 1] equal each task's own rows."""
    assert_mixed_route_per_task(_adapted(method), inputs(2, ragged=True), [0, 1])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_mixed_gradients_equal_the_per_task_sum(checkpointing):
    m = _adapted()
    m.train()
    if checkpointing:
        m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert_mixed_gradients_are_per_task_sums(m, inputs(3), ("vision_tower", "language_model"))


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")   # PEFT 0.21 reads it
def test_peft_export_loads_with_the_same_outputs(tmp_path):
    pytest.importorskip("peft")
    m = _adapted()
    assert_exported_peft_matches(m, lambda: tiny_gemma3().eval(), tmp_path / "peft", inputs(2))


def test_a_merged_checkpoint_loads_with_from_pretrained_and_the_same_outputs(tmp_path):
    m = _adapted()
    assert_merged_checkpoint_matches(m, type(tiny_gemma3()), inputs(2, ragged=True), tmp_path / "merged")


# ------------------------------------------------------------------------------------------ the backbone
@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("gemma3")


@pytest.fixture
def bb(dirs):
    return tiny_gemma3_backbone(dirs)


def _plain_inputs(bb, images, ids):
    """What the processor gives for these rows beside the ids: the pixels and token_type_ids."""
    return dict(pixel_values=images, token_type_ids=(ids == bb.image_token_id).long())


def test_loads_from_a_directory_with_its_processor(bb):
    assert type(bb) is Gemma3Backbone and bb.family == "gemma3"
    assert bb.capabilities == {LM_LOGITS, GENERATE, GRAD_CHECKPOINTING}
    assert bb.image_token == IMAGE_TOKEN and bb.image_size == 32 and bb.num_image_tokens == 4
    assert bb.resize.mode == "squash" and bb.resize.size == 32


def test_the_collators_ids_and_the_device_pixels_equal_the_processors(bb):
    """The prompt's ids (with '\\n\\n<start_of_image>' ... '<end_of_image>\\n\\n' around the image tokens), the
    token_type_ids the backbone passes, and the loader's pixels equal what Gemma3Processor makes."""
    squares, pixels = square_images(bb, pictures([(48, 40)] * 2))
    theirs = bb.processor(text=["<start_of_image> caption:"] * 2, images=[[s] for s in squares], return_tensors="pt")
    mine = bb.lm_collator()([f"{bb.image_token} caption:"] * 2)
    assert mine["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert bb._extra_inputs(mine["input_ids"], None)["token_type_ids"].tolist() == theirs["token_type_ids"].tolist()
    torch.testing.assert_close(pixels, theirs["pixel_values"], atol=1e-5, rtol=1e-5)


def test_lm_loss_per_row_equals_each_row_alone_and_the_plain_model(bb):
    assert_lm_loss_per_row(bb, lambda images, ids: _plain_inputs(bb, images, ids))


def test_the_image_tokens_attend_both_ways(bb):
    """token_type_ids change the loss (the image tokens attend to each other both ways, as the model trained):
    a causal forward over the image differs."""
    p = prompts(bb, 2)
    b = bb.lm_collator()(p, ["red", "a circle"])
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        loss = bb.lm_loss(images, **b)
        causal = bb.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], pixel_values=images).logits
        both = bb.model(**_plain_inputs(bb, images, b["input_ids"]), input_ids=b["input_ids"],
                        attention_mask=b["attention_mask"]).logits
    assert (causal - both).abs().max() > 1e-4 and torch.isfinite(loss).all()


def test_mixed_task_lm_loss_equals_each_task_alone(bb):
    _attach(bb, ("a", "b"), std=0.3)
    assert_mixed_lm_loss_per_task(bb)


@pytest.mark.parametrize("beams", [1, 3])
def test_routed_generate_equals_each_task_alone(bb, beams):
    _attach(bb, ("a", "b"), std=0.3)
    assert_routed_generate_per_task(bb, beams, lambda images, ids: _plain_inputs(bb, images, ids))


def test_cached_sequence_scores_equal_the_full_computation(bb):
    _attach(bb, ("a", "b"), std=0.3)
    cached_and_full_scores(bb)


def test_train_and_eval_commands(dirs, tmp_path, capsys):
    from gemma3_tiny import save_tiny_gemma3

    folder = dirs / "tiny_gemma3"
    if not (folder / "config.json").is_file():
        save_tiny_gemma3(folder)
    assert_train_and_eval_commands(folder, tmp_path, capsys)


def _processor_ids(bb, turns, **kw):
    text = bb.processor.apply_chat_template(turns, tokenize=False, **kw)
    return bb.processor(text=text, images=[torch.zeros(3, 32, 32)], add_special_tokens=False)["input_ids"][0]


def test_a_chat_turn_is_the_processors_ids_and_ends_with_end_of_turn(tmp_path):
    """chat = true on Gemma 3's own template: the turn's ids are the processor's -- the image's '\\n\\n' merges with
    the turn's 'user\\n' into one '\\n\\n\\n' token, as the processor tokenises them (the wrap was tokenised on its
    own: '\\n', '\\n\\n') -- and an answer ends with <end_of_turn>, an added special token that is not a named one
    (it ended with <eos>, which the template never writes) (helper 160)."""
    from gemma3_tiny import save_chat_gemma3

    from mtl_lora_vl.backbones import load_backbone

    bb = load_backbone(f"hf:{save_chat_gemma3(tmp_path / 'chat')}")
    wrap = bb.chat_wrap()
    assert wrap.end == "<end_of_turn>"
    prompt = wrap.wrap(f"{bb.image_token}what colour?", bb.image_token)
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}]
    tok = bb.processor.tokenizer
    ours = bb.lm_collator()([prompt])["input_ids"][0].tolist()
    assert tok.convert_ids_to_tokens(ours) == tok.convert_ids_to_tokens(_processor_ids(bb, user,
                                                                                        add_generation_prompt=True))
    assert "\n\n\n" in tok.convert_ids_to_tokens(ours)
    trained = bb.lm_collator()([prompt], ["red"], ends=[wrap.end])["input_ids"][0].tolist()
    answered = _processor_ids(bb, [*user, {"role": "assistant", "content": [{"type": "text", "text": "red"}]}])
    assert trained == answered[:len(trained)] and trained[-1] == tok.convert_tokens_to_ids("<end_of_turn>")


def test_pan_and_scan_crops_take_their_rows_task(tmp_path):
    """The processor's pan-and-scan crops (a wide picture: its whole view and crops; a square one: one view) under a
    mixed route: each row's views take its task, as the README's table says (helper 170)."""
    from gemma3_tiny import save_tiny_gemma3
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    folder = save_tiny_gemma3(tmp_path / "g")
    rng = np.random.default_rng(0)
    pictures = [[Image.fromarray(rng.integers(0, 256, (32, 160, 3), dtype=np.uint8))],
                [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))]]
    x = AutoProcessor.from_pretrained(str(folder))(
        text=["<start_of_image> a", "<start_of_image> b"], images=pictures, return_tensors="pt", padding=True,
        do_pan_and_scan=True, pan_and_scan_min_crop_size=8, pan_and_scan_max_num_crops=4,
        pan_and_scan_min_ratio_to_activate=1.2)
    assert x["pixel_values"].shape[0] > 2   # crops made
    torch.manual_seed(0)
    m = perturb_adapters(mlv.attach(Gemma3ForConditionalGeneration.from_pretrained(str(folder)).eval(),
                                    mlv.MTLLoRAConfig(tasks=["a", "b"], r=4)))
    with torch.no_grad():
        alone = []
        for t in ("a", "b"):
            with mlv.route(m, t):
                alone.append(m(**x).logits)
        with mlv.route(m, [0, 1]):
            mixed = m(**x).logits
    torch.testing.assert_close(mixed, torch.stack([alone[0][0], alone[1][1]]))
    assert (alone[0] - alone[1]).abs().max() > 1e-3


def test_a_merged_exports_processor_files_read_images_whole(tmp_path):
    """The backbone reads each image whole (no pan-and-scan crops): the Gemma 3 backbone's processor-file edit turns
    a saved ``do_pan_and_scan`` off, so a transformers release that honours the saved value reads a merged model's
    pictures as its task was trained (review 193's hardening)."""
    import json

    from gemma3_tiny import save_tiny_gemma3

    from mtl_lora_vl.backbones.gemma3 import Gemma3Backbone

    folder = save_tiny_gemma3(tmp_path / "g")
    files = [f for f in ("processor_config.json", "preprocessor_config.json") if (folder / f).is_file()]

    def fields(name):
        data = json.loads((folder / name).read_text())
        return data.get("image_processor", data) if name == "processor_config.json" else data

    for name in files:
        data = json.loads((folder / name).read_text())
        (data.get("image_processor", data) if name == "processor_config.json" else data)["do_pan_and_scan"] = True
        (folder / name).write_text(json.dumps(data))
    Gemma3Backbone.fit_processor_files(folder)
    assert files and all(fields(name)["do_pan_and_scan"] is False for name in files)


def test_gemma3_never_loads_in_fp16_by_itself(monkeypatch, tmp_path):
    """Gemma 3's activations pass float16's 65504 (transformers#36822: NaN losses, empty generations): --base-dtype
    auto loaded it in fp16 on a GPU without bf16 (a T4, a V100). Now fp32 there, and an fp16 asked for is warned
    about; other families keep fp16. The device is faked: the dtype is what the load is asked for."""
    monkeypatch.setattr(base_module, "cuda_has_bf16", lambda device: False)
    asked = []

    def fake_load(model_cls, folder, dtype, device):
        asked.append(dtype)
        raise hf_vlm_module.BackboneError("stop here")

    monkeypatch.setattr(hf_vlm_module, "load_hf_weights", fake_load)
    folder = save_tiny_gemma3(tmp_path / "g")
    for cls in (Gemma3Backbone, hf_vlm_module.HFVLMBackbone):
        with pytest.raises(hf_vlm_module.BackboneError, match="stop here"):
            cls.load(parse_spec(f"hf:{folder}"), device="cuda")
    assert asked == [torch.float32, torch.float16]
    with pytest.warns(UserWarning, match="--base-dtype fp16: this model family's activations overflow float16"):
        assert base_module.resolve_base_dtype("fp16", "cuda", fp16_overflows=True) == torch.float16
