"""The LM collator's host cost per batch: a target is tokenised alone only for the rows whose ids do not extend their
prompt's (a token merged across the boundary), and the padded tensors equal the rows collated one by one."""

from __future__ import annotations

import re

import torch

from mtl_lora_vl.backbones.lm_collate import IGNORE_INDEX, LMCollator, PromptLayout

_IMAGE, _EOS, _PAD, _MERGED = 1000, 1001, 1002, 2000


class _CharTokenizer:
    """One id per character, ``<image>`` one id, and " :" merged into one token (a merge across a prompt's end);
    records every text list it encodes."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def _ids(self, text: str) -> list[int]:
        return [_IMAGE if t == "<image>" else _MERGED if t == " :" else ord(t)
                for t in re.findall(r"<image>| :|.", text, flags=re.S)]

    def __call__(self, text: str | list[str], add_special_tokens: bool = True) -> dict:
        if isinstance(text, str):
            return {"input_ids": self._ids(text)}
        self.calls.append(list(text))
        return {"input_ids": [self._ids(t) for t in text]}


def _collator() -> tuple[LMCollator, _CharTokenizer]:
    tok = _CharTokenizer()
    return LMCollator(tok, PromptLayout("<image>", _IMAGE, 3, _EOS, _PAD)), tok


PROMPTS = ["<image> q: colour? a:", "<image> what? ", "<image> x", "<image> shape? "]
TARGETS = ["red", ":blue", "large red circle", "square"]


def test_targets_are_tokenised_alone_only_where_a_token_merges_across_the_prompt_end():
    col, tok = _collator()
    col(PROMPTS[:1] + PROMPTS[2:], TARGETS[:1] + TARGETS[2:])
    assert len(tok.calls) == 2   # prompts, prompt + target; no third call when no row merges (three before)
    tok.calls.clear()
    batch = col(PROMPTS, TARGETS)
    assert tok.calls[2:] == [[":blue"]]   # row 1's " :" merged across its prompt's end: its target alone
    labels = [[int(t) for t in row if t != IGNORE_INDEX] for row in batch["labels"]]
    assert labels[1] == [ord(c) for c in ":blue"] + [_EOS]
    assert labels[0] == [ord(c) for c in " red"] + [_EOS]   # the others continue their prompt's text


def test_a_batch_equals_its_rows_collated_alone_and_padded():
    col, _ = _collator()
    for cut in range(1, len(PROMPTS) + 1):   # several batches: the longest row changes
        prompts, targets = PROMPTS[:cut], TARGETS[:cut]
        batch = col(prompts, targets)
        width = batch["input_ids"].shape[1]
        for r, (p, t) in enumerate(zip(prompts, targets)):
            alone = col([p], [t])
            n = alone["input_ids"].shape[1]
            assert torch.equal(batch["input_ids"][r, :n], alone["input_ids"][0])
            assert torch.equal(batch["labels"][r, :n], alone["labels"][0])
            assert batch["attention_mask"][r].tolist() == [1] * n + [0] * (width - n)
            assert batch["input_ids"][r, n:].eq(_PAD).all() and batch["labels"][r, n:].eq(IGNORE_INDEX).all()
        gen = col(prompts)   # generation: left-padded
        for r, p in enumerate(prompts):
            alone = col([p])["input_ids"][0]
            pad = gen["input_ids"].shape[1] - len(alone)
            assert torch.equal(gen["input_ids"][r, pad:], alone) and gen["input_ids"][r, :pad].eq(_PAD).all()
            assert gen["attention_mask"][r].tolist() == [0] * pad + [1] * len(alone)
        assert all(v.dtype == torch.long for v in [*batch.values(), *gen.values()])
