"""Text batches at their own width: a causal text tower pooled at the end token gives the same embeddings (and
gradients) without the padding columns every row shares; towers that read padding (SigLIP-like, CoCa) keep the
whole context. The loader and encode_texts hand such backbones their batches cut."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from vl_tiny import tiny_backbone

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import build_open_clip, load_backbone
from mtl_lora_vl.data import world
from mtl_lora_vl.data.loader import MultiTaskLoader, to_device
from mtl_lora_vl.data.text_columns import drop_padding
from mtl_lora_vl.multitask import MultiTaskModel
from mtl_lora_vl.tasks import build_kind, resolve_tasks
from mtl_lora_vl.tasks.base import encode_texts

TEXTS = ["a red circle", "what color is the big cube left of the small sphere", "", "two blue squares"]
VISION = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}


def _bpe_clip(**text: object):
    """A tiny open_clip model with open_clip's own BPE tokenizer (argmax pooling unless told otherwise)."""
    torch.manual_seed(0)
    cfg = {"embed_dim": 16, "vision_cfg": VISION,
           "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, **text}}
    return build_open_clip({"model_cfg": cfg, "preprocess_cfg": {}})


def test_drop_padding_keeps_every_rows_text_and_an_end_that_is_padding():
    t = torch.tensor([[1, 5, 2, 0, 0, 0], [1, 2, 0, 0, 0, 0]])
    assert drop_padding(t, 0, 2).tolist() == [[1, 5, 2], [1, 2, 0]]
    assert drop_padding(t, 2, 2).shape == (2, 6)   # (0 is text here)
    same_end = torch.tensor([[1, 5, 7, 2, 2, 2], [1, 5, 2, 2, 2, 2]])   # padding written as the end token
    assert drop_padding(same_end, 2, 2).tolist() == [[1, 5, 7, 2], [1, 5, 2, 2]]
    full = torch.tensor([[1, 5, 6, 2]])
    assert drop_padding(full, 0, 2) is full


@pytest.mark.parametrize("case", ["builtin", "bpe_argmax", "custom_text_eos"])
def test_short_batches_give_open_clips_embeddings_and_gradients(case, tmp_path):
    if case == "builtin":
        bb = load_backbone("builtin")
    elif case == "bpe_argmax":
        bb = _bpe_clip()
    else:
        bb = _bpe_clip(pool_type="eos", eos_id=49407)
        bb.model = _custom_text(bb)
    assert bb.short_text and not bb.pads_to_context
    full = bb.tokenizer(TEXTS)
    short = bb.drop_text_padding(full)
    assert short.shape[1] < full.shape[1] and torch.equal(short, full[:, :short.shape[1]])
    bb.model.zero_grad()
    want = F.normalize(bb.model.encode_text(full), dim=-1)
    (want * torch.arange(want.shape[1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in bb.model.named_parameters() if p.grad is not None}
    bb.model.zero_grad()
    got = bb.encode_text(short)
    (got * torch.arange(got.shape[1])).sum().backward()
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    for n, p in bb.model.named_parameters():
        if n in grads:
            scale = float(grads[n].abs().max())
            torch.testing.assert_close(p.grad, grads[n], atol=1e-5 * scale, rtol=1e-4, msg=n)
    assert grads
    torch.testing.assert_close(bb.encode_text(full), want, atol=2e-6, rtol=1e-5)   # the whole context still works


def _custom_text(bb):
    """bb's model rebuilt as a CustomTextCLIP (open_clip's TextTransformer as ``model.text``)."""
    torch.manual_seed(0)
    cfg = {"embed_dim": 16, "custom_text": True, "vision_cfg": VISION,
           "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                        "pool_type": "eos", "eos_id": 49407}}
    model = build_open_clip({"model_cfg": cfg, "preprocess_cfg": {}}).model
    assert type(model.text).__name__ == "TextTransformer"
    return model


def test_towers_that_read_padding_get_the_whole_context(tmp_path):
    """SigLIP's tower attends both ways and pools the last position; CoCa's CLS takes the position after the last
    column: either gives other embeddings without the padding, so neither is cut."""
    siglip = _bpe_clip(no_causal_mask=True, pool_type="last")
    coca = tiny_backbone(tmp_path, coca=True)
    for bb in (siglip, coca):
        tokens = bb.tokenizer(TEXTS)
        assert not bb.short_text and bb.drop_text_padding(tokens) is tokens
    assert siglip.pads_to_context
    cut = siglip.tokenizer(TEXTS)[:, :12]
    with torch.no_grad():   # a short batch given anyway is padded back, not read short
        torch.testing.assert_close(siglip.encode_text(cut), siglip.encode_text(siglip.pad_to_context(cut)))


def test_hf_clip_reads_short_batches_alike(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    from mtl_lora_vl.backbones.builtin import builtin_files

    folder = builtin_files(None)[0]
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=dict(vocab_size=442, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, max_position_embeddings=32, eos_token_id=2),
                         vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=32, patch_size=8),
                         projection_dim=16)).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    bb = load_backbone(f"hf:{tmp_path}")
    assert bb.short_text
    full = bb.tokenizer(TEXTS)
    short = bb.drop_text_padding(full)
    assert short.shape[1] < full.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_text(short), bb.encode_text(full), atol=2e-6, rtol=1e-5)


def test_the_loader_and_encode_texts_hand_over_batches_at_their_width():
    bb = load_backbone("builtin")
    specs = resolve_tasks("retrieval")
    split = world.build_split(specs[0].kind, "train", n=8, seed=0)
    kind = build_kind(specs[0], split, bb)
    batch = next(iter(MultiTaskLoader([kind], [split], bb, batch_size=8, steps=1)))
    ends = (batch["tokens"] == bb.eos_id).int().argmax(1)
    assert batch["tokens"].shape[1] == int(ends.max()) + 1 < bb.context_length
    seen = []
    encode = bb.encode_text
    bb.encode_text = lambda tokens: seen.append(tokens.shape[1]) or encode(tokens)
    out = encode_texts(bb, TEXTS, device="cpu", batch_size=2)
    by_length = sorted(TEXTS, key=len)   # chunks of like length, the embeddings given back in TEXTS' order
    ends = [int((bb.tokenizer(by_length[i:i + 2]) == bb.eos_id).int().argmax(1).max()) + 1 for i in (0, 2)]
    assert seen == ends == [5, 13] and max(seen) < bb.context_length
    del bb.encode_text
    full = F.normalize(bb.model.encode_text(bb.tokenizer(TEXTS)), dim=-1)
    torch.testing.assert_close(out, full.detach(), atol=2e-6, rtol=1e-5)


def test_encode_texts_takes_a_backbone_like_object_at_the_whole_context():
    """An object with only a tokenizer and encode_text (as the loader allows) is given its texts as before: whole
    context, in order (it failed on the missing short_text)."""
    from types import SimpleNamespace

    bb = load_backbone("builtin")
    widths = []
    like = SimpleNamespace(tokenizer=bb.tokenizer, encode_text=lambda t: widths.append(t.shape[1]) or bb.encode_text(t))
    out = encode_texts(like, TEXTS, device="cpu", batch_size=2)
    assert widths == [bb.context_length] * 2
    torch.testing.assert_close(out, encode_texts(bb, TEXTS, device="cpu"), atol=2e-6, rtol=1e-5)


def test_a_joint_step_on_the_loaders_cut_batch_is_the_whole_contexts():
    """MultiTaskModel's step on a mixed batch as the loader cuts it (mtl_lora adapters that differ per task, each
    text row routed to its task, activation checkpointing): the losses and gradients of the same batch at the
    whole context."""
    torch.manual_seed(0)
    bb = load_backbone("builtin")
    specs = resolve_tasks("retrieval,vqa,nlvr")
    splits = {s.name: world.build_split(s.kind, "train", n=16, seed=0) for s in specs}
    kinds = {s.name: build_kind(s, splits[s.name], bb) for s in specs}
    heads = nn.ModuleDict({n: k.build_head(bb) for n, k in kinds.items()})
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=list(kinds), r=4))
    with torch.no_grad():
        for p in bb.model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    bb.set_grad_checkpointing(True)
    model = MultiTaskModel(bb, kinds, heads).train()
    loaders = [MultiTaskLoader(list(kinds.values()), list(splits.values()), bb, batch_size=9, steps=1)
               for _ in range(2)]
    loaders[1].collate.text_padding = None   # the whole context, as before the cut
    cut, whole = (next(iter(loader)) for loader in loaders)
    assert len(cut["text_segments"]) == 3 and cut["tokens"].shape[1] < whole["tokens"].shape[1] == bb.context_length
    runs = []
    for batch in (cut, whole):
        model.zero_grad()
        total, losses = model(to_device(batch, "cpu", torch.float32, bb))
        total.backward()
        runs.append((losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (got, got_grads), (want, want_grads) = runs
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got_grads.keys() == want_grads.keys() and any(n.startswith("model.") for n in want_grads)
    for n, g in want_grads.items():
        torch.testing.assert_close(got_grads[n], g, atol=1e-4 * float(g.abs().max()), rtol=1e-3, msg=n)
