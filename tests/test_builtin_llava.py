"""The committed built-in tiny LLaVA (assets/builtin_llava): loads with plain transformers, the processor's
<image> expansion fits the model, greedy generation answers in the word vocabulary, and it stays small."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
import torch

from mtl_lora_vl.data import world

REPO = Path(__file__).resolve().parent.parent
ASSET = REPO / "assets" / "builtin_llava"
MAX_BYTES = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def llava():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(ASSET)
    processor = AutoProcessor.from_pretrained(ASSET)
    model.eval()
    return model, processor


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((ASSET / "pretrain.json").read_text())


def _scene_and_question():
    ex = next(e for e in world.build_split("vqa", "val", n=20).examples if e.question_type == "color")
    return ex.image.render(64), ex.text


def test_asset_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in ASSET.iterdir() if p.is_file()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "processor_config.json", "generation_config.json", "pretrain.json"):
        assert name in files, f"{name} missing from {ASSET}"
    assert sum(files.values()) <= MAX_BYTES, f"{ASSET} holds {sum(files.values())} bytes, over {MAX_BYTES}"


def test_wheel_ships_the_asset():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "mtl_lora_vl.assets.builtin_llava" in cfg["packages"]
    data = cfg["package-data"]["mtl_lora_vl.assets.builtin_llava"]
    assert {"*.json", "*.safetensors"} <= set(data)


def test_loads_as_plain_transformers(llava, meta):
    from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

    model, processor = llava
    assert isinstance(model, LlavaForConditionalGeneration)
    assert isinstance(processor, LlavaProcessor)
    assert isinstance(processor.image_processor, CLIPImageProcessor)
    assert next(model.parameters()).dtype == torch.float32            # fp16 on disk, fp32 in memory
    tok = processor.tokenizer
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<image>") == processor.image_token_id
    assert model.config.text_config.vocab_size == len(tok)
    for name in ("pad", "bos", "eos", "unk"):
        assert getattr(tok, f"{name}_token_id") is not None
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert set(meta["prompts"]) == {"vqa", "captioning"}
    assert {"accuracy", "per_type"} <= set(meta["zero_shot_val"]["vqa"])


def test_processor_expansion_matches_image_features(llava, meta):
    model, processor = llava
    image, question = _scene_and_question()
    prompt = meta["prompts"]["vqa"].format(question=question)
    enc = processor(images=[image], text=[prompt], return_tensors="pt")
    n_tokens = int((enc["input_ids"] == model.config.image_token_id).sum())
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=enc["pixel_values"]).pooler_output
        n_feats = sum(f.shape[0] for f in feats)
        out = model(**enc)
    assert n_tokens == n_feats == 64
    assert out.logits.shape == (1, enc["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(out.logits).all()


def test_greedy_generation_uses_the_vocabulary(llava, meta):
    model, processor = llava
    tok = processor.tokenizer
    image, question = _scene_and_question()
    prompts = [meta["prompts"]["vqa"].format(question=question), meta["prompts"]["captioning"]]
    enc = processor(images=[image, image], text=prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=24, do_sample=False)
    texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    vocab = set(tok.get_vocab())
    for text in texts:
        words = text.split()
        assert words, f"empty generation for {prompts}"
        assert all(w in vocab and not re.fullmatch(r"<.*>", w) for w in words), text
    assert texts[0].strip() in world.COLOR_NAMES, f"a colour question got {texts[0]!r}"


def test_fixed_length_tokenizer_keeps_every_word_of_a_left_padding_lm_tokenizer(llava):
    """The backbone's CLIP-style ``tokenizer`` over the asset's tokenizer (pads on the left, adds no end token):
    each row is its words, then the end token, then padding on the right; a truncated row keeps the end token."""
    from mtl_lora_vl.backbones.tokenizers import HFTokenizer

    hf = llava[1].tokenizer
    assert hf.padding_side == "left" and hf("a red circle")["input_ids"][-1] != hf.eos_token_id
    tok = HFTokenizer(hf, 8)
    ids = tok(["a red circle", "a red circle left of a blue square"])
    words = hf("a red circle")["input_ids"]
    assert ids[0].tolist() == [*words, tok.eos_id] + [tok.pad_id] * (7 - len(words))
    assert tok.decode(ids[0]) == "a red circle"
    assert ids[1, -1] == tok.eos_id and (ids[1, :-1] != tok.pad_id).all()
    import copy

    bare = copy.deepcopy(hf)
    bare.eos_token = None  # neither an end nor a separator token: named, not a bare int(None) TypeError
    assert bare.eos_token_id is None and bare.sep_token_id is None
    with pytest.raises(ValueError, match="neither an end-of-sequence nor a separator token"):
        HFTokenizer(bare, 8)


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain_llava", REPO / "scripts" / "pretrain_llava.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("args,says", [
    (["--eval-scenes", "0"], "--eval-scenes must be >= 1"),          # failed after training
    (["--threads", "0"], "--threads must be >= 1"),
    (["--vision-lr", "-1"], "--vision-lr must be finite and >= 0"),             # trained by gradient ascent, silently
    (["--no-clip-init"], "ships a random, frozen vision tower"),
    (["--feature-layer", "9"], "--feature-layer must be in"),        # IndexError in the first step
    (["--out", "MINE"], "holds no pretrain.json"),                   # deleted the folder's files
    (["--heads", "3"], "a multiple of --heads (3)"),                 # a transformers traceback
    (["--evaluate", "MINE"], "not a saved model directory"),         # a Hugging Face Hub error
    (["--evaluate", "MINE", "--threads", "0"], "--threads must be >= 1"),
])
def test_pretrain_llava_refuses_bad_options_before_training(tmp_path, capsys, monkeypatch, args, says):
    monkeypatch.setattr(world, "all_texts", lambda seed: [])   # (the vocabulary's texts: no refusal reads them)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    args = [str(mine) if a == "MINE" else a for a in args]
    evaluate = "--evaluate" in args
    out = [] if "--out" in args or evaluate else ["--out", str(tmp_path / "new")]
    with pytest.raises(SystemExit) as e:
        _script().main([*([] if evaluate else ["--steps", "1", "--n-pretrain", "8"]), *out, *args])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me" and not (tmp_path / "new").exists()


def test_pretrain_llava_refuses_a_feature_layer_before_drawing_its_data(tmp_path, capsys, monkeypatch):
    """--feature-layer was checked once the model was built, after the pretraining split and the whole world's
    vocabulary (~16 s at the defaults for an argument error)."""
    def drawn(*args, **kwargs):
        raise AssertionError("the pretraining split was drawn before --feature-layer was checked")

    monkeypatch.setattr(world, "build_split", drawn)
    with pytest.raises(SystemExit) as e:
        _script().main(["--out", str(tmp_path / "new"), "--feature-layer", "-6"])
    assert e.value.code == 2 and "--feature-layer must be in [-5, 4] for a 4-layer vision tower" in \
        capsys.readouterr().err


def test_pretrain_llava_evaluate_refuses_training_flags(tmp_path, capsys):
    """--evaluate DIR ran the evaluation and ignored --steps / --out without a word."""
    with pytest.raises(SystemExit) as e:
        _script().main(["--evaluate", str(tmp_path), "--steps", "5", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "--out, --steps would be ignored" in capsys.readouterr().err


def test_pretrain_llava_saves_its_asset_whole_or_not_at_all(llava, tmp_path, monkeypatch):
    """The asset was swapped in by hand (the old folder renamed aside, then the new one renamed in: a crash
    between the two left no --out at all); it goes through the package's atomic_dir now."""
    model, processor = llava   # its weights are fp16 values (the asset's), so half() and back changes nothing
    out = tmp_path / "asset"
    _script().save_asset(model, processor, out, {"settings": {"steps": 1}})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert json.loads(before["pretrain.json"]) == {"settings": {"steps": 1}} and "model.safetensors" in before

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(processor, "save_pretrained", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _script().save_asset(model, processor, out, {"steps": 2})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and [p.name for p in tmp_path.iterdir()] == [
        "asset"]
    real, failed = os.replace, []

    def first_move_into_place_fails(src, dst):   # a crash at the moment the new folder would take its name
        if Path(dst) == out and not failed:
            failed.append(src)
            raise OSError("no space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", first_move_into_place_fails)
    try:
        _script().save_asset(model, processor, out, {"steps": 3})
    except OSError:
        pass
    assert json.loads((out / "pretrain.json").read_text())["steps"] in (1, 3)   # old or new, never no asset


def test_packed_turns_train_like_single_prompts(llava, meta):
    """The pretraining script packs several turns behind one image prefix; each packed turn must get exactly
    the logits of its own single-turn prompt, as the processor builds it for inference."""
    model, processor = llava
    script = _script()
    tok = processor.tokenizer
    ex = world.build_split("pretrain", "train", n=3).examples[2]
    turns = [(script.TURNS["vqa"].format(question="what color is the circle?"), "red"),
             (script.TURNS["captioning"], "a red circle left of a blue square")]
    ids, mask, positions, labels = script.collate([script.encode_turns(tok, turns)], tok.pad_token_id)
    image = ex.image.render(64)
    pixels = processor(images=[image], text=["<image>"], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        feats = torch.cat(list(model.get_image_features(pixel_values=pixels).pooler_output))
        embeds = model.get_input_embeddings()(ids).masked_scatter((ids == model.config.image_token_id).unsqueeze(-1),
                                                                  feats)
        packed = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[0]
        start = 65
        for prompt, answer in turns:
            enc = processor(images=[image], text=["<image> " + prompt], return_tensors="pt")
            target = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            full = torch.cat([enc["input_ids"], torch.tensor([target])], dim=1)
            single = model(input_ids=full, pixel_values=enc["pixel_values"]).logits[0, 65:]
            torch.testing.assert_close(packed[start:start + single.shape[0]], single, atol=1e-4, rtol=1e-4)
            n_prompt = enc["input_ids"].shape[1] - 65
            assert (labels[0, start:start + n_prompt] == -100).all()
            assert labels[0, start + n_prompt:start + single.shape[0]].tolist() == target
            start += single.shape[0]
    assert start == ids.shape[1]
    assert meta["prompts"]["vqa"] == "<image> " + script.TURNS["vqa"]


def test_pretraining_asks_only_the_chosen_kinds(meta):
    """--instruction-types restricts the generic questions of the packed rows (the committed asset leaves
    relation questions to the VQA task); count_total asks only for the total; unknown kinds are refused."""
    import random

    script = _script()
    examples = world.build_split("pretrain", "train", n=60).examples
    rng = random.Random(0)
    kinds = ("color", "count_total", "existence")
    questions = [p for ex in examples for p, _ in script.turns_about(ex, rng, 6, kinds)
                 if p != script.TURNS["captioning"]]
    assert questions
    allowed = [re.compile(re.escape(script.TURNS["vqa"].format(question=t)).replace(r"\{", "{")
                          .replace(r"\}", "}").replace("{shape}", ".+").replace("{obj}", ".+") + "$")
               for k in ("color", "existence", "count_all") for t in script.PHRASINGS[k]]
    for q in questions:
        assert any(a.match(q) for a in allowed), q
    assert not any(rel in q for q in questions for rel in world.RELATIONS)
    assert "relation" not in meta["settings"]["instruction_types"]
    assert meta["settings"]["instruction_types"] == list(script.DEFAULT_KINDS)
    with pytest.raises(SystemExit):
        script.main(["--instruction-types", "color,colour", "--out", "/nonexistent/never-written"])


def test_a_llava_folder_without_tokenizer_config_json_is_told_to_copy_it(tmp_path):
    """Without tokenizer_config.json transformers reads tokenizer.json alone and finds no end token; the message
    told to set eos_token in the very file that was missing."""
    import llava_tiny

    from mtl_lora_vl.backbones.loading import load_backbone

    folder = llava_tiny.save_tiny_llava(tmp_path / "llava")
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match="its folder has no tokenizer_config.json"):
        load_backbone(f"hf:{folder}")
