"""The generative backbone API on tiny LLaVA and PaliGemma directories (hf:DIR), CPU, from configs."""

from __future__ import annotations

import importlib
import pickle
import shutil

import pytest
import torch
import torch.nn.functional as F
from llava_tiny import save_tiny_llava, tiny_llava_backbone
from vlm_checks import one_image_token_short

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import BackboneError, HFVLMBackbone, PaliGemmaBackbone, load_backbone
from mtl_lora_vl.backbones.base import GENERATE, GRAD_CHECKPOINTING, LM_LOGITS

FAMILIES = ["llava", "paligemma"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("vlm")


@pytest.fixture(params=FAMILIES)
def bb(request, dirs):
    return tiny_llava_backbone(dirs, request.param)


def prompts(bb, n=3):
    base = ["question: what colour is the circle? answer:", "caption:", "how many objects are there? answer:"]
    return [f"{bb.image_token} {base[i % len(base)]}" for i in range(n)]


def test_loads_by_family_with_capabilities(bb):
    assert type(bb) is {"llava": HFVLMBackbone, "paligemma": PaliGemmaBackbone}[bb.family]
    assert bb.capabilities == {LM_LOGITS, GENERATE, GRAD_CHECKPOINTING}
    assert bb.num_image_tokens == 16 and bb.image_token == "<image>" and bb.image_size == 32
    assert bb.processor is not None and bb.model.dtype == torch.float32  # fp32 on a CPU under auto
    with pytest.raises(BackboneError, match="needs pooled image embeddings.*use a contrastive backbone"
                                            ".*generative task"):
        bb.encode_image(torch.zeros(1, 3, 32, 32))


def test_contrastive_backbone_refuses_lm_api(tmp_path):
    from vl_tiny import tiny_backbone

    clip = tiny_backbone(tmp_path)
    for call in (lambda: clip.lm_collator(), lambda: clip.image_token,
                 lambda: clip.sequence_scores(torch.zeros(1, 3, 32, 32), ["x"], ["y"])):
        with pytest.raises(BackboneError, match="needs a language model.*builtin-llava.*hf:/path/to/dir"):
            call()


def test_collator_training_and_generation_layout(bb):
    col = bb.lm_collator()
    col = pickle.loads(pickle.dumps(col))  # runs in loader workers
    p = prompts(bb, 2)
    b = col(p, ["red", "a blue square"])
    ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]
    assert ids.shape == mask.shape == labels.shape
    assert ((ids == bb.image_token_id).sum(1) == bb.num_image_tokens).all()
    tok = bb.processor.tokenizer
    for r, target in enumerate(["red", "a blue square"]):
        want = [*tok(target, add_special_tokens=False)["input_ids"], bb.eos_id]
        got = labels[r][labels[r] != -100].tolist()
        assert got == want
        n = int(mask[r].sum())
        assert ids[r, n - len(want):n].tolist() == want and mask[r, n:].sum() == 0  # right-padded
    gen = col(p)
    assert set(gen) == {"input_ids", "attention_mask"}
    assert (gen["attention_mask"][:, -1] == 1).all()  # left-padded: every row ends at the last column
    short = int(gen["attention_mask"][1].sum())
    assert gen["attention_mask"][1, : gen["input_ids"].shape[1] - short].sum() == 0


def test_collator_errors(bb):
    col = bb.lm_collator()
    with pytest.raises(ValueError, match="has 0 image placeholders.*exactly one"):
        col(["question: what?"], ["red"])
    two = [f"{bb.image_token} {bb.image_token} caption:"]
    if bb.several_images:   # LLaVA, PaliGemma: one placeholder per image of the row
        assert int((col(two)["input_ids"] == bb.image_token_id).sum()) == 2 * bb.num_image_tokens
    else:
        with pytest.raises(ValueError, match="has 2 image placeholders"):
            col(two)
    with pytest.raises(ValueError, match="1 prompts but 2 targets"):
        col(prompts(bb, 1), ["a", "b"])
    short = bb.lm_collator(max_length=20)
    with pytest.raises(ValueError, match="leaves no room for an answer within max_length=20"):
        short([f"{bb.image_token} how many objects are there? answer:"], ["two"])
    b = bb.lm_collator(max_length=22)(prompts(bb, 2)[1:2], ["a blue square left of a red circle"])
    assert b["input_ids"].shape[1] == 22 and b["labels"][0, -1] not in (bb.eos_id, -100)  # cut: no end token


def test_a_target_holding_the_image_placeholder_is_refused_by_the_collator(bb):
    """Its id made one more image token than the row's image fills: lm_loss then refused the collator's own batch,
    telling the caller to build the ids with lm_collator() (sequence_scores refuses such a candidate already)."""
    with pytest.raises(ValueError, match=r"target 1 \('a .* b'\) holds the image placeholder "
                                         r".*take the placeholder out"):
        bb.lm_collator()(prompts(bb, 2), ["red", f"a {bb.image_token} b"])


def test_lm_loss_is_per_row_target_mean(bb):
    b = bb.lm_collator()(prompts(bb, 3), ["red", "a blue square", "two"])
    images = torch.randn(3, 3, 32, 32)
    loss = bb.lm_loss(images, **b)
    assert loss.shape == (3,)
    kw = {"token_type_ids": (b["labels"] != -100).long()} if bb.prefix_lm else {}
    logits = bb.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], pixel_values=images, **kw).logits
    for r in range(3):
        ce = F.cross_entropy(logits[r, :-1], b["labels"][r, 1:], ignore_index=-100)
        torch.testing.assert_close(loss[r], ce, rtol=1e-5, atol=1e-5)
    loss.sum().backward()  # gradients flow (base unfrozen here; adapters in other tests)


def test_lm_loss_refuses_wrong_image_token_count(bb):
    ids, b = one_image_token_short(bb)
    with pytest.raises(BackboneError, match="row 0 of input_ids has 15 image tokens.*gives 16 features.*lm_collator"):
        bb.lm_loss(torch.randn(2, 3, 32, 32), ids, b["attention_mask"], b["labels"])
    # Hugging Face's own check, reached directly, gets the fix too
    with pytest.raises(BackboneError, match="image tokens do not match the image features.*lm_collator"):
        bb._forward(torch.randn(2, 3, 32, 32), ids, b["attention_mask"])


def test_lm_loss_checks_image_counts_against_the_rows_tokens_and_routes_by_them_unread(bb, monkeypatch):
    """Rows of 2 and 1 images under a mixed route: ``image_counts`` [2, 1] give the loss the ids give, with the row
    check reading no ids (``family_images._token_rows``) where ``first_label`` is given (the training step's call);
    without it lm_loss reads the rows' image tokens anyway, so counts that do not give them ([1, 2]) are refused."""
    from mtl_lora_vl import family_images

    t = bb.image_token
    b = bb.lm_collator()([f"{t}{t} two things:", f"{t} caption:"], ["red", "a blue square"])
    images = torch.randn(3, 3, 32, 32)
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=4))
    first = bb.lm_collator().first_labelled(b["labels"])
    with torch.no_grad(), mlv.route(bb.model, [0, 1]):
        want = bb.lm_loss(images, **b)
        with pytest.raises(BackboneError, match=r"image_counts \[1, 2\] do not give the rows' image tokens"):
            bb.lm_loss(images, **b, image_counts=[1, 2])
        monkeypatch.setattr(family_images, "_token_rows", lambda *a: pytest.fail("the row check read the ids"))
        torch.testing.assert_close(bb.lm_loss(images, **b, first_label=first, image_counts=[2, 1]), want)


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_decodes_new_tokens_only(bb, beams):
    images = torch.randn(2, 3, 32, 32)
    p = prompts(bb, 2)
    out = bb.generate(images, max_len=4, beam_size=beams, prompts=p)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    batch = bb.lm_collator()(p)
    kw = {"token_type_ids": torch.zeros_like(batch["input_ids"])} if bb.prefix_lm else {}
    ids = bb.model.generate(**batch, **kw, pixel_values=images, max_new_tokens=4, num_beams=beams, do_sample=False,
                            pad_token_id=bb.pad_id, eos_token_id=bb.eos_id)
    tok = bb.processor.tokenizer
    assert out == [tok.decode(r, skip_special_tokens=True).strip() for r in ids[:, batch["input_ids"].shape[1]:]]
    assert all(bb.image_token not in t for t in out)


def test_generate_stops_at_the_models_other_stop_ids(bb):
    """A stop id the model's generation_config lists (a chat model's end of turn) ends generation too."""
    images = torch.randn(1, 3, 32, 32)
    p = prompts(bb, 1)
    batch = bb.lm_collator()(p)
    kw = {"token_type_ids": torch.zeros_like(batch["input_ids"])} if bb.prefix_lm else {}
    ids = bb.model.generate(**batch, **kw, pixel_values=images, max_new_tokens=4, do_sample=False,
                            pad_token_id=bb.pad_id, eos_token_id=bb.eos_id)[0, batch["input_ids"].shape[1]:]
    assert ids.numel() >= 2 and bb.eos_id not in ids[:2].tolist()
    full = bb.generate(images, max_len=4, prompts=p)[0]
    cfg = bb.model.generation_config
    saved, cfg.eos_token_id = cfg.eos_token_id, [bb.eos_id, int(ids[0])]  # the first word now stops it
    try:
        cut = bb.generate(images, max_len=4, prompts=p)[0]
    finally:
        cfg.eos_token_id = saved
    assert cut == bb.processor.tokenizer.decode(ids[:1], skip_special_tokens=True).strip() != full


def test_generate_gives_one_text_per_image_whatever_the_generation_config_says(bb):
    images = torch.randn(2, 3, 32, 32)
    cfg = bb.model.generation_config
    saved = cfg.num_beams, cfg.num_return_sequences
    cfg.num_beams, cfg.num_return_sequences = 3, 3   # a checkpoint that returns its 3 best beams: 6 texts for 2 images
    try:
        out = bb.generate(images, max_len=3, beam_size=3, prompts=prompts(bb, 2))
    finally:
        cfg.num_beams, cfg.num_return_sequences = saved
    assert len(out) == 2


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_ignores_the_models_saved_decoding_settings(bb, beams):
    """A model's generation_config.json filled every setting generate was not given: a saved min_new_tokens,
    repetition_penalty, no_repeat_ngram_size or length_penalty changed the zero-shot and adapted scores (VQA
    went to 0 with min_new_tokens 6). Evaluation decodes plainly, as the README says; the config is kept."""
    images = torch.randn(2, 3, 32, 32)
    plain = bb.generate(images, max_len=6, beam_size=beams, prompts=prompts(bb, 2))
    cfg = bb.model.generation_config
    changed = dict(min_new_tokens=6, repetition_penalty=5.0, no_repeat_ngram_size=1, length_penalty=-3.0)
    saved = {k: getattr(cfg, k) for k in changed}
    for k, v in changed.items():
        setattr(cfg, k, v)
    try:
        assert bb.generate(images, max_len=6, beam_size=beams, prompts=prompts(bb, 2)) == plain
        assert bb.model.generation_config is cfg and cfg.min_new_tokens == 6
    finally:
        for k, v in saved.items():
            setattr(cfg, k, v)


def test_generate_and_scores_refuse_a_bare_string_and_no_tokens(bb):
    images = torch.randn(2, 3, 32, 32)
    for call in (lambda: bb.generate(images, prompts=prompts(bb, 1)[0]),
                 lambda: bb.sequence_scores(images, prompts(bb, 1)[0], ["red", "blue"])):
        with pytest.raises(ValueError, match="prompts must be a list of strings, one per row"):
            call()
    with pytest.raises(ValueError, match="max_len must be integers >= 1"):
        bb.generate(images, max_len=0, prompts=prompts(bb, 2))
    with pytest.raises(ValueError, match="max_len must be integers >= 1, got 1 and 2.5"):   # was cut to 2
        bb.generate(images, max_len=2.5, prompts=prompts(bb, 2))
    # one image without its batch dimension: its 3 channels were read as 3 images (or a transformers traceback)
    for call in (lambda: bb.generate(images[0], prompts=prompts(bb, 1)),
                 lambda: bb.sequence_scores(images[0], prompts(bb, 3), ["red"])):
        with pytest.raises(ValueError, match=r"images must be a \(B, C, H, W\) tensor, got \(3, 32, 32\); one image "
                                             r"is images\[None\]"):
            call()
    with pytest.raises(ValueError, match="prompts must be strings, one per row; got a NoneType"):
        bb.generate(images, prompts=[None, None])
    with pytest.raises(ValueError, match=r"candidates must be a non-empty list of strings, got \['red', 3\]"):
        bb.sequence_scores(images, prompts(bb, 2), ["red", 3])


def test_greedy_generation_matches_manual_argmax(bb):
    images = torch.randn(1, 3, 32, 32)
    p = prompts(bb, 1)
    out = bb.generate(images, max_len=3, prompts=p)
    batch = bb.lm_collator()(p)
    ids = batch["input_ids"]
    new = []
    for _ in range(3):
        kw = {"token_type_ids": torch.zeros_like(ids)} if bb.prefix_lm else {}
        with torch.no_grad():
            nxt = int(bb.model(input_ids=ids, pixel_values=images, attention_mask=torch.ones_like(ids),
                               **kw).logits[0, -1].argmax())
        new.append(nxt)
        if nxt == bb.eos_id:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    assert out == [bb.processor.tokenizer.decode(new, skip_special_tokens=True).strip()]


def test_sequence_scores_are_candidate_logprobs(bb):
    images = torch.randn(2, 3, 32, 32)
    p = prompts(bb, 2)
    cands = ["red", "a blue square", "two"]
    scores = bb.sequence_scores(images, p, cands)
    per_token = bb.sequence_scores(images, p, cands, per_token=True)
    assert scores.shape == (2, 3)
    for r in range(2):
        for c, cand in enumerate(cands):
            b = bb.lm_collator()([p[r]], [cand])
            n = int((b["labels"] != -100).sum())
            want = -bb.lm_loss(images[r:r + 1], **b)[0] * n
            torch.testing.assert_close(scores[r, c], want, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(per_token[r, c], want / n, rtol=1e-4, atol=1e-4)


def test_sequence_scores_without_cache_under_checkpointing(bb):
    images = torch.randn(2, 3, 32, 32)
    p, cands = prompts(bb, 2), ["red", "a blue square"]
    want = bb.sequence_scores(images, p, cands)
    bb.set_grad_checkpointing(True)
    bb.model.train()
    try:
        got = bb.sequence_scores(images, p, cands)
        got.sum().backward()
    finally:
        bb.model.eval()
        bb.set_grad_checkpointing(False)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_caption_logits_shape_and_causal(bb):
    """Teacher-forced logits see only the tokens before them (for PaliGemma too, whose prompt attends both
    ways: the caption must be marked as its target part)."""
    tokens = bb.tokenizer(["a red circle", "two blue squares"])[:, :8]
    images = torch.randn(2, 3, 32, 32)
    logits = bb.caption_logits(images, tokens)
    assert logits.shape == (2, 7, bb.vocab_size)
    later = tokens.clone()
    later[:, 4:] = (later[:, 4:] + 1) % bb.vocab_size
    torch.testing.assert_close(bb.caption_logits(images, later)[:, :4], logits[:, :4])


def test_attach_targets_both_towers_and_projector_on_request(bb):
    model = bb.model
    cfg = mlv.MTLLoRAConfig(tasks=["a", "b"], r=2)
    names = list(mlv.attach(model, cfg)._mtl_lora.layers)
    assert any(n.startswith("model.vision_tower.") for n in names)
    assert any(n.startswith("model.language_model.layers.") for n in names)
    assert not any("multi_modal_projector" in n or n == "lm_head" for n in names)
    towers = set(model._mtl_lora.towers.values())
    assert towers == {"image", "text"}
    for bank in model._mtl_lora.layers.values():
        assert bank.lora_A.dtype == torch.float32


def test_projector_targets(dirs):
    bb = tiny_llava_backbone(dirs, "llava")
    targets = {"image": [r"multi_modal_projector\.linear_[12]$"],
               "text": [r"language_model\.layers\.0\.mlp\.down_proj$"]}
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a"], r=2, targets=targets))
    assert sorted(bb.model._mtl_lora.layers) == ["model.language_model.layers.0.mlp.down_proj",
                                                 "model.multi_modal_projector.linear_1",
                                                 "model.multi_modal_projector.linear_2"]


def test_bf16_base_with_fp32_adapters(dirs):
    bb = load_backbone(f"hf:{tiny_llava_backbone(dirs, 'llava').name[3:]}", base_dtype="bf16")
    assert bb.model.dtype == torch.bfloat16
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    bank = next(iter(bb.model._mtl_lora.layers.values()))
    assert bank.lora_A.dtype == torch.float32 and bank.weight.dtype == torch.bfloat16
    b = bb.lm_collator()(prompts(bb, 2), ["red", "blue"])
    with mlv.route(bb.model, torch.tensor([0, 1])):
        loss = bb.lm_loss(bb.preprocess_uint8(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)), **b)
    loss.sum().backward()
    assert loss.dtype == torch.float32 and bank.lora_A.grad is not None and bank.lora_A.grad.dtype == torch.float32


def test_base_dtype_resolution():
    from mtl_lora_vl.backbones.base import resolve_base_dtype
    from mtl_lora_vl.precision import resolve_precision

    cpu = torch.device("cpu")  # autocast follows a half-precision base (fp32 activations would not meet it)
    assert resolve_precision("auto", cpu) == resolve_precision("auto", cpu, "fp32") == torch.float32
    assert (resolve_precision("auto", cpu, "bf16") == torch.bfloat16
            and resolve_precision("auto", cpu, "fp16") == torch.float16)
    assert resolve_precision("fp32", cpu, "bf16") == torch.float32  # asked for: as given
    # --base-dtype auto loads a language model in fp16 on a GPU without bf16: autocast follows what was loaded
    assert resolve_precision("auto", cpu, "auto", torch.float16) == torch.float16
    assert resolve_precision("auto", cpu, "auto", torch.float32) == torch.float32
    from mtl_lora_vl.precision import base_weights_dtype

    model = torch.nn.Sequential(torch.nn.Linear(2, 2).half(), torch.nn.Linear(2, 2))
    model[1].requires_grad_(True)
    model[0].requires_grad_(False)
    assert base_weights_dtype(model) == torch.float16 and base_weights_dtype(torch.nn.Linear(2, 2)) is None

    assert resolve_base_dtype("auto", "cpu") == torch.float32
    assert resolve_base_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_base_dtype("fp16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="--base-dtype: must be one of"):
        resolve_base_dtype("int8", "cpu")


def test_directory_without_processor_or_tokenizer(dirs, tmp_path):
    src = save_tiny_llava(tmp_path / "full")
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(src / f, bare / f)
    with pytest.raises(FileNotFoundError, match="no processor files.*processor.save_pretrained"):
        load_backbone(f"hf:{bare}")
    shutil.copy(src / "processor_config.json", bare / "processor_config.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer files.*save_pretrained"):
        load_backbone(f"hf:{bare}")


def test_a_checkpoint_missing_weights_is_refused_not_filled_at_random(tmp_path):
    """transformers initialises missing weights at random and only reports them: a directory saved by a version
    that names the modules otherwise (the built-in LLaVA under transformers < 5.10.2) loaded a random tower."""
    from safetensors.torch import load_file, save_file

    src = save_tiny_llava(tmp_path / "m")
    weights = load_file(str(src / "model.safetensors"))
    renamed = {k.replace("vision_tower.", "vision_tower.old_name."): v for k, v in weights.items()}
    save_file(renamed, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(BackboneError, match=r"weight\(s\) of LlavaForConditionalGeneration are not in the "
                                            r"checkpoint .*saved by another transformers version"):
        load_backbone(f"hf:{src}")


def test_processor_disagreeing_with_the_model(tmp_path):
    import json

    src = save_tiny_llava(tmp_path / "m")
    cfg = json.loads((src / "processor_config.json").read_text())
    cfg["num_additional_image_tokens"] = 0  # the CLIP tower's CLS token forgotten: 15 tokens for 16 features
    (src / "processor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackboneError, match="expands '<image>' to 15 tokens but the vision tower gives 16.*"
                                            "num_additional_image_tokens"):
        load_backbone(f"hf:{src}")
    # a crop the tower does not take was blamed on patch_size / num_additional_image_tokens
    from llava_tiny import IMAGE

    cfg["num_additional_image_tokens"] = 1
    cfg["image_processor"]["crop_size"] = {"height": 2 * IMAGE, "width": 2 * IMAGE}
    (src / "processor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackboneError, match=rf"makes {2 * IMAGE}x{2 * IMAGE} images where the vision tower takes "
                                            rf"{IMAGE}x{IMAGE}"):
        load_backbone(f"hf:{src}")
    from llava_tiny import save_tiny_paligemma

    pg = save_tiny_paligemma(tmp_path / "pg")
    cfg = json.loads((pg / "processor_config.json").read_text())
    cfg["image_seq_length"] = cfg["image_processor"]["image_seq_length"] = 9
    (pg / "processor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackboneError, match=r"to 9 tokens but the vision tower gives 16"
                                            r".*set its image processor's image_seq_length to 16"):
        load_backbone(f"hf:{pg}")


def test_builtin_llava_spec_loads_like_hf_dir(tmp_path, monkeypatch):
    from mtl_lora_vl.backbones import builtin, parse_spec, spec

    folder = save_tiny_llava(tmp_path / "builtin_llava")
    monkeypatch.setattr(spec, "builtin_llava_dir", lambda: folder)
    parsed = parse_spec("builtin-llava")
    assert parsed.kind == "builtin_llava" and parsed.path == folder and parsed.absolute() == "builtin-llava"
    bb = load_backbone("builtin-llava")
    assert isinstance(bb, HFVLMBackbone) and bb.name == "builtin-llava" and bb.family == "llava"
    monkeypatch.setattr(spec, "builtin_llava_dir", lambda: tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"built-in tiny LLaVA .* is missing.*reinstall the package \(pip "
                                                r"install --force-reinstall mtl-lora-vl\), in a checkout rebuild it "
                                                r"with `python scripts/pretrain_llava.py`"):
        load_backbone("builtin-llava")
    with pytest.raises(ValueError, match="pretrained='w.bin': pretrained is only for"):
        parse_spec("builtin-llava", "w.bin")
    assert builtin.builtin_llava_dir().name == "builtin_llava"


def test_the_shipped_builtin_llava():
    bb = load_backbone("builtin-llava")
    assert isinstance(bb, HFVLMBackbone) and bb.family == "llava" and bb.name == "builtin-llava"
    images = bb.preprocess_uint8(torch.zeros(2, 3, bb.image_size, bb.image_size, dtype=torch.uint8))
    out = bb.generate(images, max_len=4, prompts=[f"{bb.image_token} caption:"] * 2)
    assert len(out) == 2 and out[0] == out[1]


def test_base_dtype_flag_reaches_load_backbone(monkeypatch):
    from mtl_lora_vl.cli import parse_train_args
    from mtl_lora_vl.multitask import setup

    opts = parse_train_args(["--backbone", "builtin-llava", "--base-dtype", "bf16", "--tasks", "vqa"])
    assert opts.base_dtype == "bf16" and parse_train_args([]).base_dtype == "auto"
    with pytest.raises(SystemExit):
        parse_train_args(["--base-dtype", "int8"])
    seen = {}

    class Stop(Exception):
        pass

    def fake_load(spec, pretrained, device, base_dtype="auto", **image_options):
        seen.update(spec=spec, base_dtype=base_dtype)
        raise Stop

    monkeypatch.setattr(setup, "load_backbone", fake_load)
    with pytest.raises(Stop):
        setup.build_setup(opts, torch.device("cpu"))
    assert seen == {"spec": "builtin-llava", "base_dtype": "bf16"}


def _byte_level_tokenizer():
    """A GPT-2-style byte-level BPE (a space is part of the next token: 'Ġred'), trained here on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    lines = ["question: what colour is it? answer: red", "answer: blue", "answer: red circle"] * 20
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=300, special_tokens=["<image>", "</s>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=["<image>"])


def test_targets_are_tokenised_as_they_continue_the_prompt():
    """A byte-level BPE reads "answer: red" with 'Ġred'; tokenised alone the target would be 'red', a token the
    model never sees after "answer:". Training rows and candidate scores both use the continuation."""
    from mtl_lora_vl.backbones.lm_collate import LMCollator, PromptLayout

    tok = _byte_level_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<image>", "</s>", "<pad>")}
    col = LMCollator(tok, PromptLayout("<image>", ids["<image>"], 4, ids["</s>"], ids["<pad>"]))
    natural = tok("question: what colour is it? answer: red", add_special_tokens=False)["input_ids"]
    batch = col(["<image> question: what colour is it? answer:"], ["red"])
    target = [int(t) for t, lab in zip(batch["input_ids"][0], batch["labels"][0]) if lab != -100][:-1]
    assert tok.convert_ids_to_tokens(target) == ["Ġred"] and target == natural[-1:]
    assert tok("red", add_special_tokens=False)["input_ids"] != target      # what the target alone would give
    assert col.continuation_ids(["question:\n"], ["red"]) == [tok("red", add_special_tokens=False)["input_ids"]]


def test_candidates_are_scored_as_they_continue_each_rows_own_prompt():
    """Candidates were tokenised after the text every prompt of the batch ends with; with no shared ending a
    byte-level BPE read 'bl' 'ue' instead of 'Ġblue', so a row's scores depended on the other rows of its batch
    and differed from what training reads (the loss of the trained target)."""
    from llava_tiny import IMAGE, PATCH, tiny_llava_model
    from transformers import CLIPImageProcessor, LlavaProcessor

    tok = _byte_level_tokenizer()
    torch.manual_seed(0)
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": IMAGE},
                                                             crop_size={"height": IMAGE, "width": IMAGE}),
                          tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)
    bb = HFVLMBackbone.from_model(tiny_llava_model(tok).eval(), proc, "bpe-llava")
    images = torch.randn(2, 3, IMAGE, IMAGE)
    prompts = ["<image> question: what colour is it? answer:", "<image> question: what colour is it?"]
    cands = ["red", "blue"]
    with torch.no_grad():
        together = bb.sequence_scores(images, prompts, cands)
        alone = torch.cat([bb.sequence_scores(images[i:i + 1], prompts[i:i + 1], cands) for i in range(2)])
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
        batch = bb.lm_collator()(prompts[:1], ["blue"])
        trained = -bb.lm_loss(images[:1], **batch)[0] * (batch["labels"] != -100).sum()   # mean over its tokens
    torch.testing.assert_close(together[0, 1], trained, atol=1e-5, rtol=1e-5)


def test_counting_image_tokens_at_load_keeps_no_graph(bb):
    """The vision pass that counts image tokens when a model loads runs without autograd (a large tower would
    otherwise hold its activations for a backward that never comes)."""
    from mtl_lora_vl.backbones.hf_processor import count_image_tokens

    seen = []
    handle = bb.model.model.vision_tower.register_forward_hook(lambda m, a, out: seen.append(torch.is_grad_enabled()))
    try:
        count_image_tokens(bb.model, bb.image_size)
    finally:
        handle.remove()
    assert seen == [False]


def test_a_processor_that_does_not_normalise_gives_pixels_in_0_1(tmp_path):
    """hf_vlm normalised with image_mean / image_std even when the image processor says do_normalize = false
    (hf_clip honoured it): the model saw [-1, 1] where its processor gives [0, 1]."""
    import json as json_

    folder = save_tiny_llava(tmp_path / "m")
    cfg_path = folder / "processor_config.json"   # transformers 5 keeps the image processor's settings here
    cfg = json_.loads(cfg_path.read_text())
    cfg["image_processor"]["do_normalize"] = False
    cfg_path.write_text(json_.dumps(cfg))
    bb = load_backbone(f"hf:{folder}")
    assert (bb.mean, bb.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_loading_shows_no_transformers_progress_bar_off_a_terminal(tmp_path, capfd):
    """transformers 5 prints a "Loading weights" bar on every load, also at -q and into log files."""
    folder = save_tiny_llava(tmp_path / "m")
    capfd.readouterr()
    hub = importlib.import_module("huggingface_hub.utils.tqdm")
    hub.disable_progress_bars("some_library")   # a user's own setting: turning the bars back on cleared it
    try:
        load_backbone(f"hf:{folder}")
        assert "Loading weights" not in capfd.readouterr().err
        assert hub.progress_bar_states.get("some_library") is False
    finally:
        hub.progress_bar_states.pop("some_library", None)


def test_accelerator_loads_need_no_accelerate_and_use_no_hub_kernels(tmp_path, monkeypatch):
    """On an accelerator the weights load straight onto the rank's device (device_map): a host copy first cost every
    torchrun rank the whole model's size (checked by the arguments given: no GPU runs the tests). device_map needs
    accelerate (not a dependency: transformers raised 'Using a `device_map` ... requires
    `accelerate`' for every GPU load without it), and with device_map transformers 5.25 kernelizes for the
    accelerator (use_kernels defaults on): it fetched kernels-community/activation, liger-kernels and rotary from
    the hub (local_files_only notwithstanding) and swapped LLaVA's activations for inference-only kernels that the
    training step then ran through. Loads now keep the torch layers (use_kernels=False), on any device."""
    import transformers.integrations.accelerate as ta
    from conftest import tiny_llava
    from transformers import LlavaForConditionalGeneration

    from mtl_lora_vl.backbones.hf import load_hf_weights

    tiny_llava().save_pretrained(tmp_path)
    real, seen = LlavaForConditionalGeneration.from_pretrained, []

    def recording(*a, **k):
        seen.append({key: k.get(key) for key in ("device_map", "use_kernels")})
        k.pop("device_map", None)
        return real(*a, **k)

    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained", recording)
    load_hf_weights(LlavaForConditionalGeneration, tmp_path, torch.float32, "cpu")
    load_hf_weights(LlavaForConditionalGeneration, tmp_path, torch.float32, "cuda:1")
    monkeypatch.setattr("transformers.utils.is_accelerate_available", lambda: False)
    monkeypatch.setattr(ta, "is_accelerate_available", lambda: False)
    load_hf_weights(LlavaForConditionalGeneration, tmp_path, torch.float32, "cuda:1")
    assert seen == [{"device_map": None, "use_kernels": False}, {"device_map": {"": torch.device("cuda:1")},
                    "use_kernels": False}, {"device_map": None, "use_kernels": False}]


@pytest.mark.parametrize("call", ["lm_loss", "caption_logits"])
def test_a_list_of_images_gets_the_image_batch_message(tmp_path, call):
    """generate and sequence_scores said 'images must be a (B, C, H, W) tensor, got list'; lm_loss and
    caption_logits raised AttributeError: 'list' object has no attribute 'dim' / 'shape' (helper 145)."""
    bb = tiny_llava_backbone(tmp_path)
    images = [torch.randn(3, 32, 32), torch.randn(3, 32, 48)]
    with pytest.raises(ValueError, match=r"^" + call + r": images must be a \(B, C, H, W\) tensor, got list"):
        if call == "lm_loss":
            bb.lm_loss(images, **bb.lm_collator()([bb.image_token] * 2, ["red", "blue"]))
        else:
            bb.caption_logits(images, torch.tensor([[5, 6, 7]] * 2))
