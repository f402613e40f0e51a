"""plain_decoding (the stripped generation config HFVLMBackbone.generate decodes under) with several scopes open on
one model: threads generating at once, scopes that close out of order. CPU, tiny LLaVA from a config."""

from __future__ import annotations

import copy
import pickle
import threading

import torch
from llava_tiny import tiny_llava_backbone
from torch import nn
from transformers import GenerationConfig

from mtl_lora_vl.backbones.generation_ids import plain_decoding


def _model() -> nn.Module:
    model = nn.Linear(2, 2)
    model.generation_config = GenerationConfig(eos_token_id=3, pad_token_id=0, no_repeat_ngram_size=1)
    return model


def test_scopes_closing_out_of_order_give_the_model_its_own_config_back():
    """The second scope saved the first one's stripped config as 'the model's' and put it back last: the model kept
    a config without its own settings for good."""
    model = _model()
    own = model.generation_config
    first, second = plain_decoding(model), plain_decoding(model)
    first.__enter__()
    second.__enter__()
    assert model.generation_config.no_repeat_ngram_size is None and model.generation_config.eos_token_id == 3
    first.__exit__(None, None, None)
    assert model.generation_config.no_repeat_ngram_size is None   # the second scope still decodes plainly
    copy.deepcopy(model)   # the open scopes' state copies and pickles (a fresh one: no scope open on the copy)
    pickle.loads(pickle.dumps(model))
    second.__exit__(None, None, None)
    assert model.generation_config is own and own.no_repeat_ngram_size == 1
    with plain_decoding(model):
        assert model.generation_config is not own
    assert model.generation_config is own


def test_two_threads_generating_on_one_model(tmp_path, monkeypatch):
    """Thread a enters generate, then b; a returns first. b then decoded with the model's own settings (a had put
    them back) and, returning, left a's stripped config on the model."""
    bb = tiny_llava_backbone(tmp_path)
    model = bb.model
    own = model.generation_config
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = [f"{bb.image_token} caption:"]
    plain = bb.generate(images, max_len=8, prompts=prompts)
    own.no_repeat_ngram_size = 1   # a saved setting that changes this model's caption
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    waited, out = [], {}

    def generate(**kwargs):
        if threading.current_thread().name == "a":
            a_in.set()
            waited.append(b_in.wait(10))
        else:
            b_in.set()
            waited.append(a_out.wait(10))
        return type(model).generate(model, **kwargs)

    def run(name):
        out[name] = bb.generate(images, max_len=8, prompts=prompts)
        if name == "a":
            a_out.set()

    monkeypatch.setattr(model, "generate", generate, raising=False)
    threads = [threading.Thread(target=run, args=(n,), name=n) for n in "ab"]
    threads[0].start()
    waited.append(a_in.wait(10))   # b opens its scope after a's
    threads[1].start()
    for t in threads:
        t.join(30)
    assert waited == [True] * 3 and out == {"a": plain, "b": plain}
    assert model.generation_config is own and own.no_repeat_ngram_size == 1
