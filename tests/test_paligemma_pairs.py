"""PaliGemma rows of several images (NLVR2's pair) in the model's own layout: every image's tokens first, in order,
then the start token, the prompt and "\\n" -- token for token what ``PaliGemmaProcessor`` makes of a sample of two
images, with its token_type_ids, and the logits of the model called on the processor's own inputs. Tiny PaliGemma
from a config, CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from llava_tiny import IMAGE, tiny_llava_backbone
from PIL import Image

from mtl_lora_vl.backbones.lm_collate import IGNORE_INDEX
from mtl_lora_vl.data import world
from mtl_lora_vl.tasks import build_kind, load_spec

_KEYS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


@pytest.fixture(scope="module")
def pali(tmp_path_factory):
    return tiny_llava_backbone(tmp_path_factory.mktemp("pali"), "paligemma")


def _pictures(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8)) for _ in range(n)]


def _pair_row(pali):
    """The nlvr kind built on PaliGemma (no refusal) and a pair row's prompt, target and the text the processor
    takes for it (its images' placeholders first, then the question)."""
    kind = build_kind(load_spec("nlvr"), world.build_split("nlvr", "train", n=4, seed=0), pali)
    ex = world.build_split("nlvr", "val", n=1).examples[0]
    prompt, target, _ = kind.sample_lm(ex, 0)
    return prompt, target, 2 * pali.image_token + f"question: is it true that {ex.text}? answer:"


def _logprob_sums(logits, labels):
    """Per-row summed log-probability of the labelled next tokens."""
    lp = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], reduction="none",
                          ignore_index=IGNORE_INDEX)
    return lp.sum(1)


def test_nlvr_builds_on_paligemma_and_a_pair_prompt_puts_both_images_first(pali):
    prompt, _, _ = _pair_row(pali)
    assert type(pali).several_images is True and prompt.count(pali.image_token) == 2
    ids = pali.lm_collator()([prompt])["input_ids"][0].tolist()
    T = pali.num_image_tokens
    assert ids[:2 * T] == [pali.image_token_id] * (2 * T) and ids[2 * T] == pali.bos_id
    assert pali.image_token_id not in ids[2 * T:]
    with pytest.raises(ValueError, match=r"1 prompts hold 2 image placeholders but 1 image sizes"):
        pali.lm_collator()([prompt], image_sizes=[(IMAGE, IMAGE)])


def test_a_pair_row_is_the_processors_ids_token_types_and_logits(pali):
    """Ours (the collator's ids and labels, token_type_ids from the labels) against ``PaliGemmaProcessor`` on the same
    two images and text: the ids token for token, the token types, the labels; the logits of our forward equal the
    model's on the processor's own inputs; generation prompts (no suffix) too."""
    prompt, target, text = _pair_row(pali)
    proc = pali.processor
    pics = _pictures(2)
    theirs = proc(text=[text], images=[pics], suffix=[target], return_tensors="pt")
    ours = pali.lm_collator()([prompt], [target])
    conv = proc.tokenizer.convert_ids_to_tokens
    assert conv(ours["input_ids"][0].tolist()) == conv(theirs["input_ids"][0].tolist())
    types = pali._extra_inputs(ours["input_ids"], ours["labels"])["token_type_ids"]
    assert types.tolist() == theirs["token_type_ids"].tolist()
    assert ours["labels"].tolist() == torch.as_tensor(theirs["labels"]).tolist()
    assert ours["attention_mask"].tolist() == theirs["attention_mask"].tolist()
    bare = proc(text=[text], images=[pics], return_tensors="pt")
    assert pali.lm_collator()([prompt])["input_ids"].tolist() == bare["input_ids"].tolist()

    pv = theirs["pixel_values"]
    assert pv.shape[0] == 2
    with torch.no_grad():
        want = pali.model(**{k: theirs[k] for k in _KEYS}).logits
        got = pali._forward(pv, ours["input_ids"], ours["attention_mask"], labels=ours["labels"],
                            use_cache=False).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        loss = pali.lm_loss(pv, **ours)
        n = (ours["labels"] != IGNORE_INDEX).sum()
        torch.testing.assert_close(loss, -_logprob_sums(want, ours["labels"]) / n, rtol=1e-5, atol=1e-5)


def test_a_mixed_batch_of_a_pair_and_one_image_rows_is_each_processor_row(pali):
    """A one-image row beside a pair row (images [1, 2]; the first row padded): each row's training logits and its
    candidate scores (the left-padded prefill and the cached step, whose positions count from 1) equal the model's on
    the processor's inputs for that row alone."""
    prompt, target, text = _pair_row(pali)
    proc = pali.processor
    pics = _pictures(3, seed=1)
    one_text = "question: what colour is the shape? answer:"
    rows = [(pali.image_token + one_text, [pics[0]], "red"), (text, pics[1:], target)]
    refs = [proc(text=[t], images=[imgs], suffix=[y], return_tensors="pt") for t, imgs, y in rows]
    images = torch.cat([r["pixel_values"] for r in refs])
    prompts = [f"{pali.image_token} {one_text}", prompt]
    batch = pali.lm_collator()(prompts, ["red", target])
    with torch.no_grad():
        got = pali._forward(images, batch["input_ids"], batch["attention_mask"], labels=batch["labels"],
                            use_cache=False).logits
        scores = pali.sequence_scores(images, prompts, ["red", target])
        for r, ref in enumerate(refs):
            want = pali.model(**{k: ref[k] for k in _KEYS}).logits
            L = ref["input_ids"].shape[1]
            assert batch["input_ids"][r, :L].tolist() == ref["input_ids"][0].tolist()
            torch.testing.assert_close(got[r:r + 1, :L], want, rtol=1e-5, atol=1e-5)
            labels = torch.as_tensor(ref["labels"])
            torch.testing.assert_close(scores[r, r], _logprob_sums(want, labels)[0], rtol=1e-4, atol=1e-4)


def test_the_context_warning_counts_both_images_tokens_on_paligemma(pali, caplog, monkeypatch):
    import logging

    kind = build_kind(load_spec("nlvr"), world.build_split("nlvr", "train", n=4, seed=0), pali)
    T = pali.num_image_tokens
    monkeypatch.setattr(type(pali), "lm_context", property(lambda self: 2 * T + 5), raising=False)
    with caplog.at_level(logging.WARNING, logger="mtl_lora_vl.tasks.base"):
        kind.warn_lm_context(world.build_split("nlvr", "train", n=4, seed=0).examples, pali)
    assert f"its {2 * T} image tokens" in caplog.text, caplog.text


def test_prompt_rows_counts_a_pair_rows_images_on_its_own(pali):
    """``prompt_rows`` counts each row's images on the prompts it is given, so no caller can forget to: the old form
    took the texts (placeholders already taken out for PaliGemma) and read a pair row as one image unless told."""
    prompt, _, _ = _pair_row(pali)
    collate = pali.lm_collator()
    rows, texts, text_ids = collate.prompt_rows([prompt, pali.image_token + "caption en"])
    T = pali.num_image_tokens
    assert [row.count(pali.image_token_id) for row in rows] == [2 * T, T]
    assert texts == collate.prompt_texts([prompt, pali.image_token + "caption en"])
    assert rows[0] == collate([prompt])["input_ids"][0].tolist()
    assert rows[1][T:] == [pali.bos_id, *text_ids[1]]
