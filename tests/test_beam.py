"""beam_search (the CoCa decoder's search) chooses what Hugging Face generate chooses."""

from __future__ import annotations

import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mtl_lora_vl.backbones.beam import beam_search

PAD, BOS, EOS = 0, 1, 2


def _until_end(seq: list[int]) -> list[int]:
    return seq[:seq.index(EOS) + 1] if EOS in seq else [t for t in seq if t != PAD]


def test_greedy_and_beams_choose_as_hugging_face_generate():
    # Tiny random language models with peaky distributions, so that sequences end at different steps.
    # The previous search kept finished beams among the k live ones and chose 4 of these 80 differently.
    for seed in range(40):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, bos_token_id=BOS, eos_token_id=EOS,
                          pad_token_id=PAD)
        model = LlamaForCausalLM(cfg).eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(8)
        ids = torch.tensor([[BOS]])
        for k in (1, 3):
            ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=k, do_sample=False,
                                 max_new_tokens=6, length_penalty=1.0, early_stopping=False, pad_token_id=PAD,
                                 eos_token_id=EOS, bad_words_ids=[[PAD], [BOS]])
            with torch.no_grad():
                ours = beam_search(lambda s, m=model: m(input_ids=s).logits[:, -1], 1, k, 6, BOS, EOS, PAD,
                                   banned={PAD, BOS})
            assert _until_end(ours[0].tolist()) == _until_end(ref[0].tolist()), (seed, k)


def test_a_finished_hypothesis_is_not_evicted_by_live_beams():
    # After the start: a 0.50, b 0.26, end 0.24; a -> x | z (0.5 each), b -> y; then every token is 1/V.
    # [BOS, EOS] (-1.43 per token) beats every 3-token caption (about -2.75), but three live continuations
    # with higher summed log-probabilities pushed it out of the k = 3 slots.
    V, A, B, X, Z, Y = 1000, 3, 4, 5, 6, 7

    def logp(d):
        v = torch.full((V,), -30.0)
        for t, p in d.items():
            v[t] = math.log(p)
        return v

    table = {BOS: logp({A: 0.50, B: 0.26, EOS: 0.24}), A: logp({X: 0.5, Z: 0.5}), B: logp({Y: 1.0})}

    def step(seqs):
        return torch.stack([table.get(int(s[-1]), torch.zeros(V)) if s.numel() <= 2 else torch.zeros(V) for s in seqs])

    out = beam_search(step, 2, 3, 3, BOS, EOS, PAD, banned={PAD, BOS})
    assert out.tolist() == [[BOS, EOS], [BOS, EOS]]


def test_max_len_below_one_is_refused():
    """beam_search(max_len=0) divided by zero; CoCa's generate took max_len <= 0 as 1 (a one-word caption)."""
    import pytest

    with pytest.raises(ValueError, match="max_len must be >= 1, got 0"):
        beam_search(lambda s: torch.zeros(s.shape[0], 5), 1, 2, 0, 1, 2, 0)
