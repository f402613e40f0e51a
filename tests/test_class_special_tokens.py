"""(helper 141) Generative caption_cls: a class name (options.class_names or the data's) or a [generative] target
holding one of the tokenizer's special tokens is refused when the kind is built, naming the task and the token, as data
rows and [generative] system are (README: "A row whose text holds one of the tokenizer's special tokens ... is
refused"). Today it is built: '</s>' silently trains an end token inside the target, and '<image>' passes
start-up and crashes at the first training step with a message about the processor's patch size."""

import dataclasses

import pytest

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.data import world
from mtl_lora_vl.tasks import build_kind, load_spec


@pytest.fixture(scope="module")
def llava():
    return load_backbone("builtin-llava", device="cpu")


def _two_class_train(spec):
    tr = world.build_split(spec.data.options.get("world_kind", spec.kind), "train", n=12, seed=0)
    return dataclasses.replace(tr, examples=[dataclasses.replace(e, label=e.label % 2) for e in tr.examples],
                               class_names=tr.class_names[:2])


@pytest.mark.parametrize("names", [["red </s>", "blue"], ["<image> red", "blue"]])
def test_special_token_class_names_are_refused_at_build(llava, names):
    base = load_spec("caption_cls")
    spec = dataclasses.replace(base, options=dict(base.options, class_names=names))
    with pytest.raises(ValueError, match=r"caption_cls.*special token"):
        build_kind(spec, _two_class_train(base), llava)


def test_special_token_in_target_template_is_refused_at_build(llava):
    base = load_spec("caption_cls")
    spec = dataclasses.replace(base, generative=dict(base.generative, target="<image> {}"))
    with pytest.raises(ValueError, match=r"caption_cls.*special token"):
        build_kind(spec, _two_class_train(base), llava)
