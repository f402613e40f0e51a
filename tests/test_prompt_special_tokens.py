"""A [generative] prompt template holding a special token of the tokenizer is refused when the kind is built,
naming the task, the field, the token and the spec file, as rows, class targets and [generative] system are
(helper 143). A literal '<image>' beside {image} failed in warn_lm_context's collation with 'lm_collator: prompt 0
(...) has 2 image placeholders' (no task, no field, no file), and, when the kind was rebuilt from an adapter's state
(eval --adapter: no warn_lm_context), only at the first evaluation batch; an end token ('</s>') mid-prompt was not
refused at all and was read as an end of text in every row."""

import dataclasses

import pytest
import torch
from tokenizers import AddedToken

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.data import world
from mtl_lora_vl.tasks import build_kind, load_spec


@pytest.fixture(scope="module")
def llava():
    return load_backbone("builtin-llava", device="cpu")


def _train(spec):
    return world.build_split(spec.data.options.get("world_kind", spec.kind), "train", n=6, seed=0)


@pytest.mark.parametrize("task,prompt", [
    ("vqa", "{image} <image> question: {question} answer:"),
    ("captioning", "<image>{image} caption:"),
    ("caption_cls", "{image} caption: <image>"),
    ("vqa", "{image} question: {question} </s> answer:"),
])
def test_special_token_in_prompt_template_is_refused_naming_task_field_and_file(llava, task, prompt):
    base = load_spec(task)
    spec = dataclasses.replace(base, generative=dict(base.generative, prompt=prompt))
    tok = "</s>" if "</s>" in prompt else "<image>"
    if tok == "</s>" and tok not in llava.hf_processor.tokenizer.all_special_tokens:
        pytest.skip("the built-in LLaVA's end token is not </s>")
    with pytest.raises(ValueError, match=rf"task '{task}': \[generative\] prompt "
                                         rf".* holds '{tok}', a special token") as err:
        build_kind(spec, _train(base), llava)
    assert str(base.source_file) in str(err.value) and "{image}" in str(err.value)


def test_special_token_in_prompt_is_refused_when_rebuilt_from_adapter_state(llava):
    base = load_spec("caption_cls")
    state = build_kind(base, _train(base), llava).state()
    spec = dataclasses.replace(base, generative=dict(base.generative, prompt="<image> {image} caption:"))
    with pytest.raises(ValueError, match=r"task 'caption_cls': \[generative\] prompt .* holds '<image>'"):
        build_kind(spec, None, llava, state=state)


def test_one_helper_checks_every_text(llava):
    """The three checks (rows, class targets, system) and the prompt go through TaskKind.refuse_special."""
    base = load_spec("caption_cls")
    kind = build_kind(base, _train(base), llava)
    assert kind.special_in("a red <image> square") == "<image>" and kind.special_in("a red square") is None
    with pytest.raises(ValueError, match=r"task 'caption_cls': the thing holds '<image>'.*; fix it"):
        kind.refuse_special("x <image>", "the thing", "fix it")


# ------------------------------------------------------------------ the contrastive path (helper 143)

@pytest.fixture(scope="module")
def clip():
    return load_backbone("builtin", device="cpu")


def test_an_end_token_inside_a_text_ends_it_in_the_text_tower(clip):
    """Why the contrastive path refuses special tokens too: the text tower pools at the first end token, so
    'a large red <eot> square' embedded exactly as 'a large red', silently."""
    from mtl_lora_vl.backbones.tokenizers import EOT
    from mtl_lora_vl.tasks.base import encode_texts

    a, b = encode_texts(clip, [f"a large red {EOT} square", "a large red"], device="cpu")
    assert torch.equal(a, b)


def test_a_caption_a_template_or_a_class_name_holding_the_end_token_is_refused_on_a_contrastive_backbone(clip):
    from mtl_lora_vl.backbones.tokenizers import EOT
    from mtl_lora_vl.data.records import Split

    spec = load_spec("retrieval")
    train = world.build_split("retrieval", "train", n=6, seed=0)
    bad = Split([dataclasses.replace(train.examples[0], text=f"a large red {EOT} square"), *train.examples[1:]])
    with pytest.raises(ValueError, match=rf"task 'retrieval': training example .* holds '{EOT}', a special token"):
        build_kind(spec, bad, clip)
    base = load_spec("caption_cls")
    classes = world.build_split("classification", "train", n=6, seed=0)
    with pytest.raises(ValueError, match=rf"task 'caption_cls': the template .* holds '{EOT}'"):
        build_kind(dataclasses.replace(base, templates=(f"a large {{}} {EOT} photo",)), classes, clip)
    names = [f"red {EOT} circle", *world.class_names()[1:]]
    with pytest.raises(ValueError, match=rf"the class name 'red {EOT} circle' holds '{EOT}'"):
        build_kind(dataclasses.replace(base, options={**base.options, "class_names": names}), classes, clip)


def test_each_text_tokenizer_names_its_special_tokens(tmp_path):
    import open_clip
    from transformers import PreTrainedTokenizerFast

    from mtl_lora_vl.backbones.tokenizers import (
        EOT,
        SOT,
        SPECIAL_TOKENS,
        UNK,
        HFTokenizer,
        OpenClipBPETokenizer,
        WordTokenizer,
        build_word_tokenizer,
    )

    bpe = OpenClipBPETokenizer(open_clip.get_tokenizer("ViT-B-32"), 77)
    assert bpe.special_tokens == ("<start_of_text>", "<end_of_text>")
    folder = build_word_tokenizer(["a", "red"], tmp_path, 8)
    assert WordTokenizer(folder, 8).special_tokens == SPECIAL_TOKENS
    hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token=EOT, bos_token=SOT,
                                 pad_token="red", unk_token=UNK)   # a pad token that is a word ("!" in some CLIPs)
    assert HFTokenizer(hf, 8).special_tokens == (SOT, EOT)   # the ones that change what the text tower reads


@pytest.mark.parametrize("answer", ["<image>", "yes </s>"])
def test_special_token_in_nlvr_answers_is_refused_when_built_and_rebuilt(llava, answer):
    """(helper 220) NLVR's [generative] answers were not checked: '<image>' made a training row of one image token
    more than its images fill (33 for 32 on a tiny LLaVA: a mismatch at the first step) and was refused only by
    sequence_scores at the first evaluation, after training; an end token was trained inside the true answer."""
    tok = answer.split()[-1]
    if tok not in llava.hf_processor.tokenizer.all_special_tokens and tok != llava.image_token:
        pytest.skip(f"{tok} is not a special token of the built-in LLaVA")
    base = load_spec("nlvr")
    state = build_kind(base, _train(base), llava).state()
    spec = dataclasses.replace(base, generative=dict(base.generative, answers=["no", answer]))
    pattern = rf"task 'nlvr': the answer '{answer}' \(\[generative\] answers\) holds '{tok}', a special token"
    with pytest.raises(ValueError, match=pattern) as err:
        build_kind(spec, _train(base), llava)
    assert str(base.source_file) in str(err.value)
    with pytest.raises(ValueError, match=pattern):
        build_kind(spec, None, llava, state=state)


def test_added_tokens_marked_special_are_refused_too():
    """An added token marked special that no named or extra special token names (Gemma 3's <end_of_turn>) was missed:
    'red <end_of_turn> cube' was accepted, and the tokenizer reads the token as a control token mid-row. Found now,
    among thousands of special tokens too (one regex search)."""
    bb = load_backbone("builtin-llava", device="cpu")   # (its own: the tokenizer is changed)
    tok = bb.hf_processor.tokenizer
    tok.add_tokens([AddedToken("<end_of_turn>", special=True), AddedToken("\n\n", special=True),
                    AddedToken("cube", special=True)] + [AddedToken(f"<unused{i}>", special=True) for i in range(3000)])
    assert "<end_of_turn>" not in tok.all_special_tokens
    base = load_spec("vqa")
    kind = build_kind(base, _train(base), bb)
    assert kind.special_in("red <end_of_turn> cube") == "<end_of_turn>"
    assert kind.special_in("a <unused2999> b <image>") == "<unused2999>" and kind.special_in("a red\n\ncube") is None
    with pytest.raises(ValueError, match=r"holds '<end_of_turn>', a special token"):
        kind.refuse_special("is it <end_of_turn>?", "a question", "rephrase it")


@pytest.mark.parametrize("task,field", [("retrieval", "captions"), ("vqa", "answers"), ("vqa", "text")])
def test_a_lone_surrogate_in_a_row_is_refused_naming_the_row_and_field(clip, task, field):
    """A JSON escape "\\ud800" without its pair reads as a lone surrogate, which the tokenizer coverage check met
    first: a bare TypeError ('TextInputSequence must be str') naming neither task nor row."""
    from mtl_lora_vl.data.records import Split

    spec = load_spec(task)
    train = _train(spec)
    first = train.examples[0]
    value = "red \ud800" if field == "text" else ("red \ud800", *getattr(first, field)[1:])
    bad = Split([dataclasses.replace(first, **{field: value}), *train.examples[1:]])
    with pytest.raises(ValueError, match=rf"task '{task}': training example {first.image_id!r} has in its {field} the "
                                         r"text 'red \\ud800', which holds the lone surrogate '\\ud800'"):
        build_kind(spec, bad, clip)
    names = ["red \udcff", *world.class_names()[1:]]   # a folder name of undecodable bytes (surrogateescape)
    base = load_spec("caption_cls")
    with pytest.raises(ValueError, match=r"the class name 'red \\udcff' holds the lone surrogate"):
        build_kind(dataclasses.replace(base, options={**base.options, "class_names": names}),
                   world.build_split("classification", "train", n=6, seed=0), clip)


def test_a_special_token_in_a_later_text_of_a_row_is_named_and_one_across_two_texts_is_none(llava):
    """Rows are searched whole first (one search per row, not per text), then text by text where that finds one:
    the text holding it is named, and a token's halves in two texts of a row are no token."""
    from mtl_lora_vl.data.records import Split

    spec = load_spec("vqa")
    train = _train(spec)
    first = train.examples[0]
    bad = Split([dataclasses.replace(first, answers=("red", "blue", "a <image>")), *train.examples[1:]])
    with pytest.raises(ValueError, match=rf"example {first.image_id!r} has in its answers the text 'a <image>', "
                                         r"which holds '<image>'"):
        build_kind(spec, bad, llava)
    halves = Split([dataclasses.replace(first, text="is it <ima", answers=("ge>",)), *train.examples[1:]])
    build_kind(spec, halves, llava)


def test_a_normalized_special_token_after_another_text_of_the_row_is_found(llava):
    """A tokenizer whose normaliser prepends '▁' (Llama's legacy one, here with a lowercaser) reads a normalized
    special token '<mark>' written '<MARK>' at a text's start as '▁<mark>': the row searched joined put it after a
    newline, where its normalized form is not, so an answer '<MARK>' (read by the tokenizer as the token) was taken
    (review 424). Each text is normalized alone."""
    import copy

    from tokenizers import normalizers

    from mtl_lora_vl.data.records import Split

    bb = copy.copy(llava)
    bb.hf_processor = copy.deepcopy(llava.hf_processor)   # the module's backbone keeps its tokenizer
    tok = bb.hf_processor.tokenizer
    tok.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁"),
                                                             normalizers.Lowercase()])
    tok.add_special_tokens({"additional_special_tokens": [AddedToken("<mark>", normalized=True, special=True)]})
    assert tok.tokenize("<MARK>") == ["▁<mark>"]
    spec = load_spec("vqa")
    train = _train(spec)
    first = train.examples[0]
    bad = Split([dataclasses.replace(first, answers=("<MARK>",)), *train.examples[1:]])
    with pytest.raises(ValueError, match=r"has in its answers the text '<MARK>', which holds '<mark>'"):
        build_kind(spec, bad, bb)
