"""Tiny Gemma 3 (vision-language) from configs (no downloads): SigLIP vision tower of 2 layers, width 32, 8-px
patches (a 32 x 32 image is 16 patches, average-pooled 2 x 2 by the projector into 4 image tokens) and a Gemma 3
decoder of 2 layers, width 32 (one sliding-window layer, one global).

The processor writes each image as ``"\\n\\n<start_of_image>" + "<image_soft_token>" * 4 + "<end_of_image>\\n\\n"``
in place of the ``<start_of_image>`` the prompt holds, so ``"<start_of_image> caption:"`` becomes
``[bos, "\\n\\n", boi, soft, soft, soft, soft, eoi, "\\n\\n", caption, :]``; it returns ``token_type_ids`` (1 on the
soft tokens, 0 elsewhere), which the model reads to let one image's tokens attend to each other both ways.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from vl_tiny import left_padded

PATCH, SIDE, N_IMAGE = 8, 32, 4
BOI, IMAGE_TOKEN, EOI = "<start_of_image>", "<image_soft_token>", "<end_of_image>"
NEWLINES = "\n\n"   # one token in Gemma 3's own tokenizer (and here, as an added, non-special token)
GEMMA3_SPECIALS = [BOI, IMAGE_TOKEN, EOI]


def _gemma3_tokenizer(out: Path, words):
    """The word-level tokenizer over ``words`` (plus ``EXTRA_WORDS``), made Gemma-like: it adds ``<sot>`` (bos)
    before a text and nothing after it, knows Gemma 3's image tokens as named special tokens (``boi_token``,
    ``eoi_token``, ``image_token`` and their ``*_id``, saved as ``extra_special_tokens``) and ``"\\n\\n"`` as one
    token."""
    from llava_tiny import EXTRA_WORDS
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from vl_tiny import world_words

    from mtl_lora_vl.backbones import build_word_tokenizer
    from mtl_lora_vl.backbones.tokenizers import SOT

    tok_dir = out / "_tok"
    build_word_tokenizer([*(words if words is not None else world_words()), *EXTRA_WORDS], tok_dir,
                         context_length=64)
    spec = json.loads((tok_dir / "tokenizer.json").read_text())
    sot = spec["model"]["vocab"][SOT]
    # Gemma's tokenizer adds bos only (add_bos_token=True, add_eos_token=False)
    spec["post_processor"] = {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": SOT, "type_id": 0}},
                                         {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [{"SpecialToken": {"id": SOT, "type_id": 0}},
                                       {"Sequence": {"id": "A", "type_id": 0}},
                                       {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {SOT: {"id": SOT, "ids": [sot], "tokens": [SOT]}}}
    (tok_dir / "tokenizer.json").write_text(json.dumps(spec))
    tok = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    tok.add_tokens([AddedToken(NEWLINES, normalized=False, special=False)])
    tok.add_special_tokens({"additional_special_tokens": GEMMA3_SPECIALS})
    # re-load with the named model-specific tokens Gemma3Processor reads (tokenizer.boi_token, .image_token_id, ...)
    tok.save_pretrained(str(tok_dir))
    tok = PreTrainedTokenizerFast.from_pretrained(
        str(tok_dir), extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_TOKEN})
    return tok


def save_tiny_gemma3(out, words=None, seed: int = 0) -> Path:
    """A tiny Gemma 3 directory at ``out``: ``Gemma3ForConditionalGeneration`` weights and config, generation
    config, and its ``Gemma3Processor`` (a ``Gemma3ImageProcessor`` making 32 x 32 images, 4 image tokens each,
    and the word-level tokenizer of :func:`_gemma3_tokenizer`)."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
    )

    out = Path(out)
    tok = _gemma3_tokenizer(out, words)
    image_processor = Gemma3ImageProcessor(size={"height": SIDE, "width": SIDE})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=N_IMAGE)
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=SIDE, patch_size=PATCH, vision_use_head=False)   # as Gemma 3 ships
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                max_position_embeddings=256, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=N_IMAGE,
                       boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                       image_token_index=tok.image_token_id, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(cfg)
    # Gemma 3 initialises the image projection to zeros, which would make a fresh model blind to its images (and
    # give the vision tower no gradient): draw it instead, so image features are about unit size
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 32 ** -0.5)
        # the image soft token's embedding row is never read as input (image features replace it) but, tied, it is
        # also its output row: shrink it so a fresh model all but never generates it (a generated image token makes
        # a later no-cache forward count 5 image tokens for 4 features and fail, as the trained model never would)
        model.get_input_embeddings().weight[tok.image_token_id] *= 0.01
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out


def tiny_gemma3_backbone(tmp):
    """A loaded tiny Gemma 3 backbone from a directory under ``tmp`` (built once)."""
    from mtl_lora_vl.backbones import load_backbone

    folder = Path(tmp) / "tiny_gemma3"
    if not (folder / "config.json").is_file():
        save_tiny_gemma3(folder)
    return load_backbone(f"hf:{folder}")


IMG_ID, BOI_ID, EOI_ID, NL_ID = 93, 92, 94, 91   # tiny_gemma3's own ids (vocab 96)


def tiny_gemma3():
    """A bare tiny Gemma 3 from its config alone (vocab 96; the ids above), for the family-table tests."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=SIDE, patch_size=PATCH, vision_use_head=False)
    text = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=256,
                sliding_window=16, layer_types=["sliding_attention", "full_attention"], pad_token_id=0,
                bos_token_id=1, eos_token_id=2)
    cfg = Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=N_IMAGE, boi_token_index=BOI_ID,
                       eoi_token_index=EOI_ID, image_token_index=IMG_ID, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = Gemma3ForConditionalGeneration(cfg)
    with torch.no_grad():   # as save_tiny_gemma3: images seen, the image token all but never generated
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 32 ** -0.5)
        model.get_input_embeddings().weight[IMG_ID] *= 0.01
    return model


def inputs(n: int = 2, text: int = 5, seed: int = 0, ragged: bool = False) -> dict:
    """A left-padded batch for :func:`tiny_gemma3`: ``[bos, "\\n\\n", boi, image x 4, eoi, "\\n\\n", text..]`` per row
    (``ragged``: rows of different lengths), one 32 x 32 image each, ``token_type_ids`` 1 on the image tokens."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        t = torch.randint(3, 90, (text + (2 * i if ragged else 0),), generator=g).tolist()
        rows.append([1, NL_ID, BOI_ID, *[IMG_ID] * N_IMAGE, EOI_ID, NL_ID, *t])
    ids, mask = left_padded(rows)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(n, 3, SIDE, SIDE, generator=g),
                token_type_ids=(ids == IMG_ID).long())


# Gemma 3's chat template (google/gemma-3-*-it), with the image written as <start_of_image>
GEMMA3_TEMPLATE = (
"{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- if messages[0]['content'] is string -%}"
"{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- else -%}"
"{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
"{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}"
"{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
"{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
"{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
"{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
"{%- if message['content'] is string -%}{{ message['content'] | trim }}{%- elif message['content'] is iterable -%}"
"{%- for item in message['content'] -%}{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
"{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- endif -%}"
"{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}")


def save_chat_gemma3(out) -> Path:
    """A tiny Gemma 3 with Gemma 3's chat template: ``<start_of_turn>`` / ``<end_of_turn>`` added as special *added*
    tokens (as Gemma 3's tokenizer.json has them, not among the named special tokens), ``<end_of_turn>`` a stop id
    of its generation config (as the -it models'), and the newline runs ``"\\n"`` .. ``"\\n\\n\\n\\n"`` as tokens (as
    Gemma's vocabulary has them)."""
    from tokenizers import AddedToken
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration
    from vl_tiny import world_words

    out = Path(out)
    save_tiny_gemma3(out, words=[*world_words(), "user", "model"])
    proc = AutoProcessor.from_pretrained(out)
    tok = proc.tokenizer
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<start_of_turn>", "<end_of_turn>")])
    tok.add_tokens([AddedToken("\n" * k, normalized=False, special=False) for k in (1, 3, 4)])
    proc.chat_template = GEMMA3_TEMPLATE
    proc.save_pretrained(out)
    model = Gemma3ForConditionalGeneration.from_pretrained(out)
    model.resize_token_embeddings(len(tok))
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    model.save_pretrained(out)
    return out
