"""``[generative] chat = true``: a task's prompt is the user's turn in the model's own chat template (an
instruction-tuned LLaVA or Qwen2-VL is measured, and adapted, in the format it was tuned on)."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest
import torch
from llava_tiny import save_tiny_llava
from test_generative_tasks import _small_spec, _split, assert_eval_repeats
from vl_tiny import world_words

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.backbones.chat import ChatWrap, read_chat_wrap
from mtl_lora_vl.cli import train_main
from mtl_lora_vl.data.loader import MultiTaskCollate, TaskDataset
from mtl_lora_vl.tasks import SpecError, build_kind, load_spec

#: A chat template in the style of llava-hf's: the user's turn (images first, as the processor's content
#: lists them), then the assistant's opening.
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}user: {% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
            "{% else %} assistant: {{ m['content'][0]['text'] }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %} assistant:{% endif %}")


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory) -> Path:
    from transformers import AutoProcessor

    folder = save_tiny_llava(tmp_path_factory.mktemp("chat") / "llava", words=[*world_words(), "user", "assistant"])
    processor = AutoProcessor.from_pretrained(folder)
    processor.chat_template = TEMPLATE
    processor.save_pretrained(folder)
    return folder


def _with_template(chat_dir: Path, folder: Path, template: str):
    """The chat fixture's model in ``folder`` with its processor given ``template``, loaded as a backbone (and that
    processor)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(chat_dir)
    processor.chat_template = template
    processor.save_pretrained(folder)
    for f in ("config.json", "model.safetensors"):
        (folder / f).write_bytes((chat_dir / f).read_bytes())
    return load_backbone(f"hf:{folder}"), processor


def _chat_spec(tmp: Path, name: str, template: str | None = None) -> str:
    path = Path(_small_spec(tmp, name))
    text = re.sub(r"^\[generative\]$", "[generative]\nchat = true", path.read_text(), flags=re.M)
    if template is not None:
        text = re.sub(r"^prompt = .*$", f"prompt = {template!r}", text, flags=re.M)
    path.write_text(text)
    return str(path)


def test_a_chat_prompt_gives_the_ids_the_processor_gives_for_that_turn(chat_dir, tmp_path):
    """The row our collator makes for a VQA question equals what the Hugging Face processor makes from the
    same turn through the chat template (image tokens expanded, start token once)."""
    from transformers import AutoProcessor

    backbone = load_backbone(f"hf:{chat_dir}")
    assert backbone.chat_wrap() == ChatWrap("user: ", " assistant:", "user: ")
    spec = load_spec(_chat_spec(tmp_path, "vqa", "{image} {question}"))
    kind = build_kind(spec, _split(spec, "train", 6), backbone)
    example = _split(spec, "val", 1).examples[0]
    prompt = kind.prompt(example)
    assert prompt == f"user: <image> {kind.question(example)} assistant:"
    ours = backbone.lm_collator()([prompt])["input_ids"][0].tolist()

    processor = AutoProcessor.from_pretrained(chat_dir)
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f" {kind.question(example)}"}]}]
    text = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    theirs = processor(text=text, images=[torch.zeros(3, 32, 32)], return_tensors="pt")["input_ids"][0].tolist()
    assert ours + [processor.tokenizer.eos_token_id] == theirs   # the test tokenizer also appends its end token
    assert ours.count(processor.tokenizer.bos_token_id) == 1
    plain = build_kind(load_spec(_small_spec(tmp_path, "vqa")), _split(spec, "train", 6), backbone)
    assert not plain.prompt(example).startswith("user:")   # chat = false (the default): the prompt as written


def test_the_start_token_a_template_writes_is_not_put_twice(chat_dir, tmp_path):
    backbone, _ = _with_template(chat_dir, tmp_path / "bos", "{{ bos_token }}" + TEMPLATE)
    assert backbone.chat_wrap() == ChatWrap("user: ", " assistant:", "user: ")


def test_chat_without_a_chat_template_is_refused_when_the_task_is_built(tmp_path):
    """The built-in LLaVA has no chat template: a spec asking for one fails at start-up, naming the fix."""
    backbone = load_backbone("builtin-llava")
    spec = load_spec(_chat_spec(tmp_path, "captioning"))
    with pytest.raises(ValueError, match=r"chat = true needs the model's chat template.*set chat = false"):
        build_kind(spec, _split(spec, "train", 6), backbone)
    bad = Path(_small_spec(tmp_path, "vqa"))
    bad.write_text(re.sub(r"^\[generative\]$", "[generative]\nchat = \"yes\"", bad.read_text(), flags=re.M))
    with pytest.raises(SpecError, match="generative.chat"):
        load_spec(str(bad))


def test_a_chat_run_evaluates_again_from_its_adapter_in_the_same_format(chat_dir, tmp_path, capsys):
    out = tmp_path / "run"
    tasks = ",".join(_chat_spec(tmp_path, t) for t in ("vqa", "captioning"))
    code = train_main(["--backbone", f"hf:{chat_dir}", "--tasks", tasks, "--steps", "2", "--workers", "0",
                       "--warmup", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    saved = (out / "adapter" / "tasks" / "vqa.toml").read_text()
    assert "chat = true" in saved
    assert_eval_repeats(out / "adapter", tmp_path / "ev", json.loads((out / "eval.json").read_text()))


#: Qwen2-VL-Instruct's chat template (as released, less its video and vision-id branches).
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_qwen2vl_chat_prompt_gives_the_processors_ids_with_one_vision_start(tmp_path):
    """Qwen's template writes <|vision_start|><|image_pad|><|vision_end|> for an image; the backbone adds the
    vision start and end itself, so the prompt's {image} becomes the same ids, not a second pair."""
    from qwen_tiny import save_tiny_qwen2vl
    from transformers import AutoProcessor

    folder = save_tiny_qwen2vl(tmp_path / "qwen", chat_template=QWEN_TEMPLATE)
    backbone = load_backbone(f"hf:{folder}")
    wrap = backbone.chat_wrap()
    before, after = wrap.before, wrap.after
    assert (wrap.before_image == before and before.endswith("<|im_start|>user\n")
            and after == "<|im_end|>\n<|im_start|>assistant\n")
    spec = load_spec(_chat_spec(tmp_path, "vqa", "{image}{question}"))
    kind = build_kind(spec, _split(spec, "train", 6), backbone)
    example = _split(spec, "val", 1).examples[0]
    ours = backbone.lm_collator()([kind.prompt(example)])["input_ids"][0].tolist()
    processor = AutoProcessor.from_pretrained(folder)
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": kind.question(example)}]}]
    text = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    theirs = processor(text=text, images=[torch.zeros(3, 32, 32)], return_tensors="pt")["input_ids"][0].tolist()
    assert ours + [processor.tokenizer.eos_token_id] == theirs   # the test tokenizer also appends its end token
    assert ours.count(processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")) == 1


TEXT_ONLY = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
             "{% if add_generation_prompt %}assistant:{% endif %}")
STRINGS_ONLY = ("{% for m in messages %}{% if m['content'] is not string %}"
                "{{ raise_exception('content must be a string') }}{% endif %}{{ m['role'] }}: {{ m['content'] }}\n"
                "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.mark.parametrize("template", [TEXT_ONLY, STRINGS_ONLY])
def test_a_processor_template_written_for_string_content_still_wraps(template, tmp_path):
    """A processor whose chat template is a text model's (string content; e.g. copied from the tokenizer) was refused:
    the list content rendered as a Python repr ('does not write a user turn's text exactly once') or the template
    raised ('the processor and tokenizer cannot give one'), though the same template wraps a string turn."""
    from transformers import AutoProcessor

    from mtl_lora_vl.backbones.hf_vlm import HFVLMBackbone

    folder = save_tiny_llava(tmp_path / "llava", words=[*world_words(), "user", "assistant"])
    proc = AutoProcessor.from_pretrained(folder)
    proc.chat_template = template
    fake = types.SimpleNamespace(hf_processor=proc, name="probe", prefix_ids=(proc.tokenizer.bos_token_id,))
    assert HFVLMBackbone.chat_wrap(fake) == ChatWrap("user: ", "\nassistant:", "user: ")


#: Idefics3 / SmolVLM's way: the role, then ':' before an image but ': ' before text.
IMAGE_FIRST = ("{% for m in messages %}{{ m['role'] }}{% if m['content'][0]['type'] == 'image' %}:{% else %}: "
               "{% endif %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
               "{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} assistant:{% endif %}")


def test_a_turn_that_opens_with_the_image_gets_the_templates_image_opening(chat_dir, tmp_path):
    """A template that writes a turn opening with an image differently (Idefics3, SmolVLM) was read from a text turn
    only: 'user: <image>…' where its processor writes 'user:<image>…'. A prompt that opens with the image now gets
    the image opening; one that opens with text keeps the text opening."""
    backbone, processor = _with_template(chat_dir, tmp_path / "image_first", IMAGE_FIRST)
    assert backbone.chat_wrap() == ChatWrap("user: ", " assistant:", "user:")
    spec = load_spec(_chat_spec(tmp_path, "vqa", "{image}{question}"))
    kind = build_kind(spec, _split(spec, "train", 6), backbone)
    example = _split(spec, "val", 1).examples[0]
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": kind.question(example)}]}]
    assert kind.prompt(example) == processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    text_first = load_spec(_chat_spec(tmp_path, "vqa", "{question}{image}"))
    kind = build_kind(text_first, _split(spec, "train", 6), backbone)
    assert kind.prompt(example).startswith("user: ")


#: llava-hf/llava-interleave-qwen-0.5b-hf's template (a LlavaForConditionalGeneration): the role and a space, the
#: images, then '\n' before the text -- 'user \ntext' for a text turn but 'user <image>\ntext' for an image turn.
INTERLEAVE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}"
              "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}"
              "{% endfor %}{# Render all text next #}"
              "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
              "{{ '\n' + content['text'] }}{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_a_template_that_writes_text_after_the_images_gets_the_image_opening_too(chat_dir, tmp_path):
    """LLaVA-Interleave / OneVision / FastVLM write something between the images and the text ('\\n'): the image
    opening was not found ('user <image>\\n' with one image is not a prefix of 'user <image><image>\\n' with two),
    the text opening 'user \\n' served, and no prompt gave the processor's 'user <image>\\nQ'."""
    backbone, processor = _with_template(chat_dir, tmp_path / "interleave", INTERLEAVE)
    assert backbone.chat_wrap().before_image == "<|im_start|>user "
    # (a TOML basic string: _chat_spec's re.sub would turn the \\n into a line break)
    path = Path(_chat_spec(tmp_path, "vqa"))
    path.write_text(re.sub(r"^prompt = .*$", lambda _: 'prompt = "{image}\\n{question}"', path.read_text(), flags=re.M))
    spec = load_spec(str(path))
    kind = build_kind(spec, _split(spec, "train", 6), backbone)
    example = _split(spec, "val", 1).examples[0]
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": kind.question(example)}]}]
    assert kind.prompt(example) == processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)


def test_a_system_message_goes_before_the_users_turn_as_the_processor_writes_it(chat_dir, tmp_path):
    """[generative] system = "..." (with chat = true): the template's system turn with the spec's text in place of
    its default; the prompt's ids equal the processor's for the same system and user turns. A template that
    writes no system message, and a system message without chat, are refused naming the fix."""
    from qwen_tiny import save_tiny_qwen2vl
    from transformers import AutoProcessor

    folder = save_tiny_qwen2vl(tmp_path / "qwen", chat_template=QWEN_TEMPLATE)
    backbone = load_backbone(f"hf:{folder}")
    wrap = backbone.chat_wrap("answer in one word")
    assert wrap.before == "<|im_start|>system\nanswer in one word<|im_end|>\n<|im_start|>user\n"
    assert "helpful assistant" in backbone.chat_wrap().before   # no system message: the template's default
    path = Path(_chat_spec(tmp_path, "vqa", "{image}{question}"))
    path.write_text(path.read_text().replace("chat = true", 'chat = true\nsystem = "answer in one word"'))
    spec = load_spec(str(path))
    kind = build_kind(spec, _split(spec, "train", 6), backbone)
    example = _split(spec, "val", 1).examples[0]
    ours = backbone.lm_collator()([kind.prompt(example)])["input_ids"][0].tolist()
    processor = AutoProcessor.from_pretrained(folder)
    turns = [{"role": "system", "content": [{"type": "text", "text": "answer in one word"}]},
             {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": kind.question(example)}]}]
    text = processor.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    theirs = processor(text=text, images=[torch.zeros(3, 32, 32)], return_tensors="pt")["input_ids"][0].tolist()
    assert ours + [processor.tokenizer.eos_token_id] == theirs

    users_only = TEMPLATE.replace("{% else %} assistant:", "{% elif m['role'] == 'assistant' %} assistant:")
    other, _ = _with_template(chat_dir, tmp_path / "users", users_only)
    with pytest.raises(ValueError, match="does not write a system message"):
        other.chat_wrap("answer in one word")
    path.write_text(path.read_text().replace("chat = true", "chat = false"))
    with pytest.raises(SpecError, match=r"generative.system': expected chat = true beside it"):
        load_spec(str(path))


#: Gemma's way: a system role raises.
RAISES_ON_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<start_of_turn>user\n{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
#: The user's content as a list, the system message written as a string ({{ content }}).
SYSTEM_AS_STRING = (
    "{% for m in messages %}{% if m['role'] == 'system' %}system: {{ m['content'] }}\n{% else %}user: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %} assistant:{% endif %}")
#: Idefics3's image-first opening ('user:' before an image, 'user: ' before text), the system message a string.
IMAGE_FIRST_SYSTEM_STRING = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ 'SYS: ' + m['content'] + '\n' }}{% else %}{{ m['role'] }}"
    "{% if m['content'] is string %}: {{ m['content'] }}{% else %}{% if m['content'][0]['type'] == 'image' %}:"
    "{% else %}: {% endif %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{% endif %}{% endfor %}{% if add_generation_prompt %} assistant:{% endif %}")
#: Writes a default system line and drops the caller's.
DROPS_SYSTEM = (
    "You are a helpful assistant.\n{% for m in messages %}{% if m['role'] == 'user' %}user: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} assistant:{% endif %}")
#: Llama-3's way: every message's content trimmed.
TRIMS = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<|eot|>{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def system_processor(tmp_path_factory):
    from transformers import AutoProcessor

    folder = save_tiny_llava(tmp_path_factory.mktemp("sys") / "llava", words=[*world_words(), "user", "assistant"])
    return AutoProcessor.from_pretrained(folder)


def _wrap(processor, template, system):
    processor.chat_template = template
    return read_chat_wrap(processor, False, "probe", system)


def test_a_template_that_raises_on_a_system_role_names_system_not_the_missing_template(system_processor):
    """It said 'needs the model's chat template, but it fails (System role not supported) ... save the processor
    with its chat template, or set chat = false': the template is there; the system message is what to remove."""
    with pytest.raises(ValueError, match=r"raises on a system message \(System role not supported\); remove system"):
        _wrap(system_processor, RAISES_ON_SYSTEM, "answer in one word")


def test_a_system_message_is_not_written_as_the_python_repr_of_a_content_list(system_processor):
    """The system text is inside "[{'type': 'text', 'text': ...}]", so the presence check passed and every prompt
    began with the repr."""
    assert _wrap(system_processor, SYSTEM_AS_STRING,
                 "answer in one word").before == "system: answer in one word\nuser: "


def test_a_string_system_message_keeps_the_image_first_opening(system_processor):
    """The image renders sent the system message as a list, which this template cannot add to a string: they
    failed and image-first prompts got the text opening ('user: <image>' where the processor writes 'user:<image>')."""
    assert _wrap(system_processor, IMAGE_FIRST_SYSTEM_STRING, "answer in one word") == ChatWrap(
        "SYS: answer in one word\nuser: ", " assistant:", "SYS: answer in one word\nuser:")


def test_a_system_message_found_only_in_the_templates_default_is_refused(system_processor):
    with pytest.raises(ValueError, match="does not write a system message"):
        _wrap(system_processor, DROPS_SYSTEM, "helpful")


def test_a_system_message_with_a_trailing_newline_is_found_in_a_template_that_trims(system_processor):
    """A TOML multi-line string ends with a newline; Llama-3-style templates trim it: refused as 'does not write'."""
    assert _wrap(system_processor, TRIMS,
                 "answer in one word\n").before == "<|system|>\nanswer in one word<|eot|><|user|>\n"


def test_a_system_message_holding_a_special_token_is_refused_when_the_task_is_built(chat_dir, tmp_path):
    """The image placeholder in system reached every prompt and failed only at collation ('2 image placeholders'),
    naming no system (helper 114)."""
    backbone = load_backbone(f"hf:{chat_dir}")
    tok = str(backbone.image_token)
    path = Path(_chat_spec(tmp_path, "vqa", "{image}{question}"))
    path.write_text(path.read_text().replace("chat = true", f'chat = true\nsystem = "look at {tok} here"'))
    spec = load_spec(str(path))
    with pytest.raises(ValueError, match=rf"\[generative\] system holds '{tok}', a special token of backbone"):
        build_kind(spec, _split(spec, "train", 6), backbone)


def test_a_system_message_equal_to_the_templates_default_is_written(system_processor):
    """Qwen2-VL's template writes 'You are a helpful assistant.' when no system message is given; a spec that sets
    that very text was refused as 'does not write a system message' (the wrap equalled the default one)."""
    wrap = _wrap(system_processor, QWEN_TEMPLATE, "You are a helpful assistant.")
    assert wrap.before == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    with pytest.raises(ValueError, match="does not write a system message"):   # a template that drops it still is
        _wrap(system_processor, DROPS_SYSTEM, "You are a helpful assistant.")


# ---------------------------------------------------------------- the template's end of an assistant turn

#: Idefics3-8B-Llama3's template as released: the role capitalised, ':' before an image, <end_of_utterance> after
#: every turn (its tokenizer's end token is Llama's <|end_of_text|>, and its config lists only Llama's end ids).
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def _qwen(tmp_path):
    from qwen_tiny import save_tiny_qwen2vl

    folder = save_tiny_qwen2vl(tmp_path / "qwen", chat_template=QWEN_TEMPLATE)
    return folder, load_backbone(f"hf:{folder}")


def test_a_chat_rows_target_ends_with_the_templates_end_of_turn_not_the_tokenizers_end(tmp_path):
    """The row the loader makes for a chat task is the processor's ids of the same user and assistant turns, up to
    the template's <|im_end|> after the answer (it ended with the tokenizer's <eot>: the model learnt to close its
    answers with a token the template never writes there); a task without chat keeps the tokenizer's end token."""
    from transformers import AutoProcessor

    folder, bb = _qwen(tmp_path)
    tok = AutoProcessor.from_pretrained(folder).tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert bb.chat_wrap().end == "<|im_end|>" and im_end != tok.eos_token_id
    spec = load_spec(_chat_spec(tmp_path, "vqa", "{image}{question}"))
    (tmp_path / "plain").mkdir()
    plain = load_spec(_small_spec(tmp_path / "plain", "captioning"))
    kinds = {s.name: build_kind(s, _split(s, "train", 6), bb) for s in (spec, plain)}
    rows = [dict(TaskDataset(k, _split(k.spec, "train", 6), bb.image_size)[0], task_id=t)
            for t, k in enumerate(kinds.values())]
    batch = MultiTaskCollate(list(kinds), [False, False], None, lm_collator=bb.lm_collator())(rows)["lm"]
    last = [int(ids[mask.bool()][-1]) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert last == [im_end, tok.eos_token_id]   # the chat row ends its turn; the plain row as before
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    prompt, target, _ = rows[0]["lm"]
    processor = AutoProcessor.from_pretrained(folder)
    example = _split(spec, "train", 6).examples[0]
    turns = [{"role": "user", "content": [{"type": "image"},
                                          {"type": "text", "text": kinds["vqa"].question(example)}]},
             {"role": "assistant", "content": [{"type": "text", "text": target}]}]
    text = processor.apply_chat_template(turns, tokenize=False)
    theirs = processor(text=text, images=[torch.zeros(3, 32, 32)], return_tensors="pt")["input_ids"][0].tolist()
    ours = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert theirs[:len(ours)] == ours and labelled[-1] == im_end


def test_idefics3s_end_of_utterance_ends_a_chat_target_and_stops_generation(tmp_path):
    """Idefics3's template closes an answer with <end_of_utterance>, which is neither its tokenizer's end token nor
    in its config's end ids: the target ends with it and generation stops on it. Templates that write nothing, or the
    tokenizer's end token, after an answer keep the tokenizer's end token."""
    from idefics3_tiny import save_tiny_idefics3
    from transformers import AutoProcessor

    from mtl_lora_vl.backbones.chat import assistant_end

    folder = save_tiny_idefics3(tmp_path / "idefics3")
    processor = AutoProcessor.from_pretrained(folder)
    processor.chat_template = IDEFICS3_TEMPLATE
    processor.save_pretrained(folder)
    bb = load_backbone(f"hf:{folder}")
    eou = processor.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    assert bb.chat_wrap().end == "<end_of_utterance>" and eou in bb._stop_ids()
    labels = bb.lm_collator()([bb.chat_wrap().wrap("<image>q", "<image>")], ["red"],
                              ends=["<end_of_utterance>"])["labels"]
    assert labels[0][labels[0] != -100].tolist()[-1] == eou
    processor.chat_template = TEMPLATE   # llava-style: nothing after the answer
    assert assistant_end(processor) == ""
    processor.chat_template = TEMPLATE.replace("m['content'][0]['text'] }}",
                                               "m['content'][0]['text'] }}{{ eos_token }}")
    assert assistant_end(processor) == ""   # the tokenizer's end token: nothing changes


def test_greedy_generation_stops_at_the_chat_templates_end_of_turn(tmp_path):
    """A model that answers 'red' then <|im_end|> (as a chat model, or one trained with chat = true, does) gave
    'red red red': generation ran past the end of turn (skip_special_tokens hid it) until max_len."""
    from transformers import AutoProcessor

    folder, bb = _qwen(tmp_path)
    tok = AutoProcessor.from_pretrained(folder).tokenizer
    red, im_end = tok.convert_tokens_to_ids("red"), tok.convert_tokens_to_ids("<|im_end|>")
    steps = []

    def answer_then_end(module, args, out):   # step 0: 'red', step 1: <|im_end|>, then 'red' again
        out = out.clone()
        out[:, -1] = -1e4
        out[:, -1, red if len(steps) % 2 == 0 else im_end] = 1e4
        steps.append(1)
        return out

    handle = bb.model.lm_head.register_forward_hook(answer_then_end)
    try:
        prompt = bb.chat_wrap().wrap(bb.image_token + "what color?", bb.image_token)
        assert bb.generate(torch.zeros(1, 3, bb.image_size, bb.image_size), max_len=6, prompts=[prompt]) == ["red"]
    finally:
        handle.remove()


def test_a_chat_classification_scores_candidates_with_the_end_of_turn_it_trains(tmp_path):
    """sequence_scores(end=...) is the log-probability of the candidate and that end token (the training row's
    loss), and a chat task's candidate_scores asks for its template's end of turn."""
    folder, bb = _qwen(tmp_path)
    images = torch.randn(2, 3, bb.image_size, bb.image_size)
    prompt = bb.chat_wrap().wrap(bb.image_token + "what color?", bb.image_token)
    cands = ["red", "blue square"]
    got = bb.sequence_scores(images, [prompt] * 2, cands, end="<|im_end|>")
    batch = bb.lm_collator()([prompt] * 4, cands * 2, ends=["<|im_end|>"] * 4)
    n = (batch["labels"] != -100).sum(1)
    want = -(bb.lm_loss(images.repeat_interleave(2, 0), batch["input_ids"], batch["attention_mask"],
                        batch["labels"]) * n)
    assert torch.allclose(got.flatten(), want, atol=1e-4)
    assert not torch.allclose(got, bb.sequence_scores(images, [prompt] * 2, cands), atol=1e-4)
    spec = load_spec(_chat_spec(tmp_path, "caption_cls"))
    kind = build_kind(spec, _split(spec, "train", 6), bb)
    asked = []
    bb.sequence_scores = lambda images, prompts, candidates, per_token=False, end="": (
        asked.append(end) or torch.zeros(len(prompts), len(candidates)))
    kind.logits(bb, None, _split(spec, "test", 2).examples, batch_size=4, device="cpu")
    assert asked and set(asked) == {"<|im_end|>"}
