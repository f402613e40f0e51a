"""Tiny Mistral 3 (Mistral Small 3.1's layout) from its config alone (no downloads): a Pixtral vision tower of 2
layers, width 32, 8-px patches (a 32 x 32 image is 4 x 4 patches, merged 2 x 2 by the projector's patch merger into
2 x 2 image tokens) and a Mistral decoder of 2 layers, width 32, vocab 96.

The processor writes an image of h x w image tokens as h rows of w ``[IMG]`` each ended by ``[IMG_BREAK]``, the last
by ``[IMG_END]`` instead; the model scatters the image's features over its ``[IMG]`` tokens only.
"""

from __future__ import annotations

import json

import torch
from vl_tiny import left_padded

IMG_ID, BREAK_ID, END_ID = 10, 11, 12
PATCH, MERGE, SIDE = 8, 2, 32


def tiny_mistral3():
    """A bare tiny ``Mistral3ForConditionalGeneration`` (the ids above)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    vision = dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, head_dim=16, image_size=SIDE, patch_size=PATCH)
    text = dict(model_type="mistral", vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg = Mistral3Config(vision_config=vision, text_config=text, image_token_index=IMG_ID, spatial_merge_size=MERGE,
                         vision_feature_layer=-1)
    return Mistral3ForConditionalGeneration(cfg)


def image_ids(h: int, w: int) -> list[int]:
    """The processor's ids for an image of ``h x w`` pixels: rows of ``[IMG]``, ``[IMG_BREAK]`` / ``[IMG_END]``."""
    rows, cols = h // (PATCH * MERGE), w // (PATCH * MERGE)
    ids = ([IMG_ID] * cols + [BREAK_ID]) * rows
    return [*ids[:-1], END_ID]


def inputs(n: int = 2, text: int = 5, seed: int = 0, sizes: list[tuple[int, int]] | None = None) -> dict:
    """A left-padded batch: ``[bos, image ids, text..]`` per row, one image each on a 32 x 32 canvas, of ``sizes``
    (default: the whole canvas; rows of different lengths), with its ``image_sizes``."""
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or [(SIDE, SIDE)] * n
    rows = [[1, *image_ids(*sizes[i]), *torch.randint(13, 90, (text + 2 * i,), generator=g).tolist()]
            for i in range(n)]
    ids, mask = left_padded(rows)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(n, 3, SIDE, SIDE, generator=g),
                image_sizes=torch.tensor(sizes))


IMAGE_TOKEN, BREAK_TOKEN, END_TOKEN = "[IMG]", "[IMG_BREAK]", "[IMG_END]"


def save_tiny_mistral3(out, seed: int = 0):
    """A tiny Mistral 3 directory at ``out``: weights, config, generation config and its ``PixtralProcessor`` (a
    ``PixtralImageProcessor`` of 32-px longest edge: a 32 x 32 image, 2 x 2 ``[IMG]`` tokens, and the word-level
    tokenizer with ``[IMG]``, ``[IMG_BREAK]``, ``[IMG_END]`` as special tokens)."""
    from pathlib import Path

    from llava_tiny import EXTRA_WORDS
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        PixtralImageProcessor,
        PixtralProcessor,
        PreTrainedTokenizerFast,
    )
    from vl_tiny import world_words

    from mtl_lora_vl.backbones import build_word_tokenizer
    from mtl_lora_vl.backbones.tokenizers import SOT

    out = Path(out)
    build_word_tokenizer([*world_words(), *EXTRA_WORDS], out / "_tok", context_length=64)
    spec = json.loads((out / "_tok" / "tokenizer.json").read_text())   # Mistral's tokenizer adds bos only
    sot = spec["model"]["vocab"][SOT]
    first = [{"SpecialToken": {"id": SOT, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    spec["post_processor"] = {"type": "TemplateProcessing", "single": first,
                              "pair": [*first, {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {SOT: {"id": SOT, "ids": [sot], "tokens": [SOT]}}}
    (out / "_tok" / "tokenizer.json").write_text(json.dumps(spec))
    tok = PreTrainedTokenizerFast.from_pretrained(str(out / "_tok"))
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, BREAK_TOKEN, END_TOKEN]})
    processor = PixtralProcessor(image_processor=PixtralImageProcessor(size={"longest_edge": SIDE}, patch_size=PATCH),
                                 tokenizer=tok, patch_size=PATCH, spatial_merge_size=MERGE)
    vision = dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, head_dim=16, image_size=SIDE, patch_size=PATCH)
    text = dict(model_type="mistral", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = Mistral3Config(vision_config=vision, text_config=text, spatial_merge_size=MERGE, vision_feature_layer=-1,
                         image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN))
    torch.manual_seed(seed)
    model = Mistral3ForConditionalGeneration(cfg)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out


def tiny_mistral3_backbone(tmp):
    """A loaded tiny Mistral 3 backbone from a directory under ``tmp`` (built once)."""
    from pathlib import Path

    from mtl_lora_vl.backbones import load_backbone

    folder = Path(tmp) / "tiny_mistral3"
    if not (folder / "config.json").is_file():
        save_tiny_mistral3(folder)
    return load_backbone(f"hf:{folder}")


#: Mistral Small 3.1's chat template (as released, less its date in the default system message): the start token, a
#: system prompt (the caller's, else a default) in [SYSTEM_PROMPT] .. [/SYSTEM_PROMPT], each user turn in
#: [INST] .. [/INST] (an image block written [IMG]), each answer ended by the end token.
MISTRAL3_TEMPLATE = (
    "{%- set default_system_message = 'you are a helpful assistant' %}{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- if messages[0]['content'] is string %}"
    "{%- set system_message = messages[0]['content'] %}{%- else %}"
    "{%- set system_message = messages[0]['content'][0]['text'] %}{%- endif %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set system_message = default_system_message %}"
    "{%- set loop_messages = messages %}{%- endif %}{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
    "{%- for message in loop_messages %}{%- if message['role'] == 'user' %}{%- if message['content'] is string %}"
    "{{- '[INST]' + message['content'] + '[/INST]' }}{%- else %}{{- '[INST]' }}"
    "{%- for block in message['content'] %}{%- if block['type'] == 'text' %}{{- block['text'] }}"
    "{%- elif block['type'] in ['image', 'image_url'] %}{{- '[IMG]' }}{%- else %}"
    "{{- raise_exception('Only text and image blocks are supported in message content!') }}{%- endif %}"
    "{%- endfor %}{{- '[/INST]' }}{%- endif %}{%- elif message['role'] == 'assistant' %}"
    "{%- if message['content'] is string %}{{- message['content'] + eos_token }}{%- else %}"
    "{{- message['content'][0]['text'] + eos_token }}{%- endif %}{%- else %}"
    "{{- raise_exception('Only user, system and assistant roles are supported!') }}{%- endif %}{%- endfor %}")


def save_chat_mistral3(out):
    """A tiny Mistral 3 with Mistral Small 3.1's chat template and its turn tokens ([INST], [/INST],
    [SYSTEM_PROMPT], [/SYSTEM_PROMPT]) as special tokens, the embeddings grown to match."""
    from pathlib import Path

    from tokenizers import AddedToken
    from transformers import AutoProcessor, Mistral3ForConditionalGeneration

    out = Path(out)
    save_tiny_mistral3(out)
    proc = AutoProcessor.from_pretrained(out)
    tok = proc.tokenizer
    tok.add_tokens([AddedToken(t, special=True, normalized=False)
                    for t in ("[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]")])
    proc.chat_template = MISTRAL3_TEMPLATE
    proc.save_pretrained(out)
    model = Mistral3ForConditionalGeneration.from_pretrained(out)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.save_pretrained(out)
    return out
