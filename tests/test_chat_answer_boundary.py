"""A chat row's answer is tokenised as the model's chat template writes it after the assistant's opening: right
after a special token such as Mistral 3's ``[/INST]`` (no space), after a space following plain text."""

from __future__ import annotations

import re

from mistral3_tiny import MISTRAL3_TEMPLATE
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mtl_lora_vl.backbones.chat import read_chat_wrap
from mtl_lora_vl.backbones.lm_collate import LMCollator, PromptLayout

_SPECIAL = ["<image>", "</s>", "<pad>", "<s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]


def _tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (as Mistral 3's Tekken): 'red' and 'Ġred' are different tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    lines = ["[INST]question: what colour is it? answer:[/INST]red</s>", "answer: blue", "answer: red circle"] * 20
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=300, special_tokens=_SPECIAL,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", bos_token="<s>", pad_token="<pad>",
                                   additional_special_tokens=[*_SPECIAL[4:], "<image>"])


class _Processor:
    """A processor with Mistral Small 3.1's chat template over the tokenizer."""

    def __init__(self, tok: PreTrainedTokenizerFast) -> None:
        self.tokenizer, self.chat_template = tok, MISTRAL3_TEMPLATE

    def apply_chat_template(self, messages: list, **kwargs) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=MISTRAL3_TEMPLATE, **kwargs)


def test_a_chat_answer_after_inst_is_tokenised_as_the_template_writes_it():
    tok = _tokenizer()
    proc = _Processor(tok)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<image>", "</s>", "<pad>")}
    col = LMCollator(tok, PromptLayout("<image>", ids["<image>"], 1, ids["</s>"], ids["<pad>"]))
    wrap = read_chat_wrap(proc, False, "mistral-like")
    question = "<image> question: what colour is it? answer:"
    batch = col([wrap.wrap(question, "<image>")], ["red"], [wrap.end])
    conversation = proc.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": question}]},
                                             {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
                                            tokenize=False)
    assert conversation.endswith("[/INST]red</s>")
    # the trained row is the template's conversation: '[/INST]' 'red' '</s>', not '[/INST]' 'Ġred' '</s>'
    assert batch["input_ids"][0].tolist() == tok(conversation, add_special_tokens=False)["input_ids"]
    target = [int(t) for t, lab in zip(batch["input_ids"][0], batch["labels"][0]) if lab != -100]
    assert tok.convert_ids_to_tokens(target) == ["red", "</s>"]
    # candidates are scored as they are trained; a plain-text prompt still takes the answer after a space
    assert col.continuation_ids([col.prompt_texts([wrap.wrap(question, "<image>")])[0]], ["red"]) == [target[:1]]
    assert tok.convert_ids_to_tokens(col.continuation_ids(["answer:"], ["red"])[0]) == ["Ġred"]


class _UnknownCharTokenizer:
    """One id per ASCII character, ``<image>`` one id, any other character the unknown token (a special id)."""

    image_id, eos_id, pad_id, unk_token_id = 1000, 1001, 1002, 1003
    all_special_ids = [1000, 1001, 1002, 1003]

    def _ids(self, text: str) -> list[int]:
        return [self.image_id if t == "<image>" else ord(t) if ord(t) < 128 else self.unk_token_id
                for t in re.findall(r"<image>|.", text, flags=re.S)]

    def __call__(self, text: str | list[str], add_special_tokens: bool = True) -> dict:
        return {"input_ids": self._ids(text) if isinstance(text, str) else [self._ids(t) for t in text]}


def test_a_target_after_an_unknown_token_follows_a_space_as_in_running_text():
    """The unknown token is special, but stands for the prompt's own text (a character the vocabulary lacks): the
    target after "... 東" was trained as "東red" (no space) where running text, and the code before, wrote "東 red"."""
    tok = _UnknownCharTokenizer()
    col = LMCollator(tok, PromptLayout("<image>", tok.image_id, 1, tok.eos_id, tok.pad_id))
    assert col.continuation_ids(["<image> the sign reads 東"], ["red"]) == [[ord(c) for c in " red"]]
