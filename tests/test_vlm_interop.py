"""A trained LLaVA (and PaliGemma) task outside this package: PEFT LoRA and merged save_pretrained directories
generate the same tokens as the routed MTL-LoRA model."""

from __future__ import annotations

import json

import pytest
import torch
from llava_tiny import tiny_llava_backbone

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import HFVLMBackbone

TASKS = ["vqa", "captioning"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("interop")


def trained(dirs, family):
    bb = tiny_llava_backbone(dirs, family)
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=TASKS, r=4, n_up=2))
    torch.manual_seed(3)
    with torch.no_grad():
        for bank in bb.model._mtl_lora.layers.values():
            bank.lora_B.normal_(std=0.3)
            bank.lora_lambda.add_(torch.randn_like(bank.lora_lambda) * 0.5)
            bank.lora_w.normal_()
    return bb


def gen_inputs(bb):
    torch.manual_seed(4)
    images = torch.randn(3, 3, 32, 32)
    prompts = [f"{bb.image_token} question: what colour is the circle? answer:", f"{bb.image_token} caption:",
               f"{bb.image_token} how many objects are there? answer:"]
    batch = bb.lm_collator()(prompts)
    if bb.prefix_lm:
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    return dict(batch, pixel_values=images)


def generate(model, inputs, bb, beams=2):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=6, num_beams=beams, do_sample=False, pad_token_id=bb.pad_id)


def source_dir(bb):
    return bb.name[len("hf:"):]


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")   # PEFT 0.21 reads it
@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_peft_export_generates_the_same_tokens(dirs, family, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForImageTextToText

    bb = trained(dirs, family)
    inputs = gen_inputs(bb)
    with mlv.route(bb.model, "captioning"):
        want = generate(bb.model, inputs, bb)
    mlv.export_lora(bb.model, "captioning", tmp_path / "peft")
    recorded = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(source_dir(bb))   # where PEFT's AutoPeftModel finds the base (it was None)
    fresh = AutoModelForImageTextToText.from_pretrained(source_dir(bb), local_files_only=True)
    assert type(fresh) is type(bb.model)
    pm = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "peft")).eval()
    got = generate(pm, inputs, bb)
    assert torch.equal(got, want)
    with torch.no_grad():
        base = generate(AutoModelForImageTextToText.from_pretrained(source_dir(bb), local_files_only=True), inputs, bb)
    assert not torch.equal(base, want)  # the exported task is not the base model


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_merged_directory_loads_and_generates_the_same_tokens(dirs, family, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    bb = trained(dirs, family)
    inputs = gen_inputs(bb)
    with mlv.route(bb.model, "vqa"):
        want = generate(bb.model, inputs, bb)
    out = mlv.save_merged(bb.model, "vqa", tmp_path / "merged")  # processor files found from the model itself
    cls = type(bb.model)
    merged = cls.from_pretrained(str(out), local_files_only=True).eval()
    assert "generate" not in vars(merged)  # a plain model of the base class
    assert torch.equal(generate(merged, inputs, bb), want)
    assert type(AutoProcessor.from_pretrained(str(out), local_files_only=True)) is type(bb.processor)
    assert type(AutoModelForImageTextToText.from_pretrained(str(out), local_files_only=True)) is cls
    # and it is a backbone directory of its own
    again = mlv.backbones.load_backbone(f"hf:{out}")
    assert isinstance(again, HFVLMBackbone) and again.num_image_tokens == bb.num_image_tokens
    # a .safetensors out wrote a bare state-dict file that no from_pretrained (nor the export command) reads
    with pytest.raises(ValueError, match=r"m\.safetensors: a Hugging Face model is written as a save_pretrained "
                                         r"directory .*give out= a folder name"):
        mlv.save_merged(bb.model, "vqa", tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_merged_directory_leaves_out_an_adapter_config_of_the_source(dirs, tmp_path):
    """A source directory that also holds an adapter (PEFT's adapter_config.json, or ours): copied into the
    merged directory, it made from_pretrained load the merged model as a PEFT adapter and fail."""
    import shutil

    from transformers import AutoModelForImageTextToText

    bb = trained(dirs, "llava")
    inputs = gen_inputs(bb)
    with mlv.route(bb.model, "vqa"):
        want = generate(bb.model, inputs, bb)
    src = tmp_path / "src"
    shutil.copytree(source_dir(bb), src)
    mlv.export_lora(bb.model, "captioning", src / "peft")
    mlv.save_adapter(bb.model, src / "ours")
    for f in [*(src / "peft").iterdir(), *(src / "ours").iterdir()]:
        if f.is_file():
            shutil.copy(f, src)
    out = mlv.save_merged(bb.model, "vqa", tmp_path / "merged", source_dir=src)
    names = {f.name for f in out.iterdir()}
    assert {"adapter_config.json", "mtl_lora_config.json"}.isdisjoint(names) and "tokenizer.json" in names
    merged = AutoModelForImageTextToText.from_pretrained(str(out), local_files_only=True).eval()
    assert torch.equal(generate(merged, inputs, bb), want)


def test_export_merged_script_from_a_saved_adapter(dirs, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import export_merged

    bb = trained(dirs, "llava")
    inputs = gen_inputs(bb)
    with mlv.route(bb.model, "captioning"):
        want = generate(bb.model, inputs, bb, beams=1)
    mlv.save_adapter(bb.model, tmp_path / "adapter", base={"backbone": bb.name})
    out = export_merged.main(["--adapter", str(tmp_path / "adapter"), "--task", "captioning",
                              "--out", str(tmp_path / "merged")])
    merged = type(bb.model).from_pretrained(str(out), local_files_only=True).eval()
    assert torch.equal(generate(merged, inputs, bb, beams=1), want)
    assert (Path(out) / "processor_config.json").is_file() and (Path(out) / "tokenizer.json").is_file()


def test_unload_gives_back_a_plain_model(dirs):
    from mtl_lora_vl.mtl_lora_model import unload

    bb = trained(dirs, "llava")
    inputs = gen_inputs(bb)
    with mlv.route(bb.model, "vqa"):
        want = generate(bb.model, inputs, bb)
    plain = unload(bb.model, "vqa")
    assert "generate" not in vars(plain) and getattr(plain, "_mtl_lora", None) is None
    assert torch.equal(generate(plain, inputs, bb), want)


def test_export_keeps_a_bf16_checkpoint_bf16(dirs, tmp_path):
    """A bf16 base directory: the merged export is bf16 (merged in fp32), as the base was; it was written as
    fp32 (twice the size; a 7B base needed fp32 memory). --base-dtype fp32 still asks for fp32."""
    import json
    import shutil

    from safetensors import safe_open

    from mtl_lora_vl.cli import export_main

    bb = trained(dirs, "llava")
    src = tmp_path / "bf16"
    type(bb.model).from_pretrained(source_dir(bb), dtype=torch.bfloat16).save_pretrained(str(src))
    for f in __import__("pathlib").Path(source_dir(bb)).iterdir():
        if f.is_file() and not (src / f.name).exists():
            shutil.copyfile(f, src / f.name)
    mlv.save_adapter(bb.model, tmp_path / "adapter", base={"backbone": f"hf:{src}"})
    for flags, want, name in (([], "BF16", "bfloat16"), (["--base-dtype", "fp32"], "F32", "float32")):
        out = tmp_path / f"merged{len(flags)}"
        assert export_main(["--adapter", str(tmp_path / "adapter"), "--task", "vqa", "--out", str(out), *flags]) == 0
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {want}
        assert json.loads((out / "config.json").read_text()).get("dtype") == name

