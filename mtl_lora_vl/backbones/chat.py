"""A model's chat turn around a task's prompt (``[generative] chat = true``, with ``system = "..."`` a system
message before it), read from its chat template.

The template is rendered with a private-use marker for the user's text and the assistant's turn opened
(``add_generation_prompt``); the text around the marker wraps every prompt. Some templates write a turn that
opens with an image differently from one that opens with text (Idefics3 / SmolVLM: ``User:<image>`` but
``User: text``), so the turn is also rendered opening with one and with two images: what precedes the image
there is the opening for prompts that start with the image placeholder. The image itself always comes from the
prompt (the collator expands it), never from the template.

The template's end of an assistant turn (the special token it writes right after an answer: Qwen's ``<|im_end|>``,
Idefics3 / SmolVLM's ``<end_of_utterance>``) ends a chat row's target in place of the tokenizer's end token, and
generation stops on it: a chat model ends its answers with it, and one trained to end them with the tokenizer's
end token would answer outside the format it is measured in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ChatWrap", "assistant_end", "read_chat_wrap"]

_MARK = "\ue000"   # a private-use character: no template writes it
_SYSTEM_MARK = "\ue001"   # the same, for a system message
_ANSWER_MARK = "\ue002"   # the same, for an assistant's answer
_FIX = ("save the processor with its chat template (processor.chat_template = ...; processor.save_pretrained(DIR)), "
        "or set chat = false and write the turn into the spec's prompt")


@dataclass(frozen=True)
class ChatWrap:
    """The text before and after a user turn; ``before_image`` before a turn that opens with the image; ``end``
    the special token that ends the assistant's answer (:func:`assistant_end`; "": the tokenizer's end token)."""

    before: str
    after: str
    before_image: str
    end: str = ""

    def wrap(self, prompt: str, image_token: str) -> str:
        """``prompt`` (its ``{image}`` already filled with ``image_token``) as the user's turn."""
        return (self.before_image if prompt.startswith(image_token) else self.before) + prompt + self.after


def read_chat_wrap(processor: Any, strip_bos: bool, name: str, system: str = "") -> ChatWrap:
    """The :class:`ChatWrap` of ``processor``'s chat template (else its tokenizer's); ``strip_bos``: leave out a
    start token the template writes (the collator puts the tokenizer's own first); ``system``: a system message
    before the user's turn (none: the template's default, if it writes one). ValueError naming the fix when
    there is no usable template, or it does not write the system message."""
    tok = processor.tokenizer
    template = getattr(processor, "chat_template", None)
    default = _turn(processor, name, "")   # the template must work without a system message first
    if not system:
        before, after = default
    else:
        try:
            before, after = _turn(processor, name, system, raise_=True)
        except _NoTurn:
            before = after = ""   # refused below: no wrap writes the system message
        except Exception as e:
            raise ValueError(f"backbone {name!r}: [generative] system is set, but the model's chat template raises on "
                             f"a system message ({e}); remove system from the spec, or write the instruction into the "
                             "prompt") from None
        if before == default[0]:   # the caller's text, or a default the template writes whatever it is given?
            try:
                writes = _SYSTEM_MARK in _turn(processor, name, _SYSTEM_MARK, raise_=True)[0]
            except Exception:
                writes = False
            before = before if writes else ""
        if not before or system.strip() not in before:
            raise ValueError(f"backbone {name!r}: [generative] system is set, but the model's chat template does not "
                             "write a system message; remove system from the spec, or write the instruction into the "
                             "prompt")
    before_image = before
    if template:   # the opening of a turn that starts with an image: X in X+c+text and X+c+c+text
        heads = [[]] if not system else [[{"role": "system", "content": [{"type": "text", "text": system}]}],
                                         [{"role": "system", "content": system}]]
        for h in heads:   # the system message as the text turn took it: a content list, else a string
            try:
                one, two = (_split(processor.apply_chat_template(
                    [*h, {"role": "user", "content": [*[{"type": "image"}] * k, {"type": "text", "text": _MARK}]}],
                    add_generation_prompt=True, tokenize=False), h) for k in (1, 2))
            except Exception:   # a template for text only: the text opening serves
                one = two = None
            if one is not None and two is not None and one[1] == two[1] == after:
                before_image = _image_opening(one[0], two[0], before)
                break
    bos = getattr(tok, "bos_token", None)
    if strip_bos and bos:
        before, before_image = (b[len(bos):] if b.startswith(bos) else b for b in (before, before_image))
    return ChatWrap(before, after, before_image, assistant_end(processor))


def assistant_end(processor: Any) -> str:
    """The special token ``processor``'s chat template (else its tokenizer's) writes right after an assistant's
    answer, when it is not the tokenizer's end token: the end of turn a chat model closes its answers with (Qwen's
    ``<|im_end|>``, Idefics3's ``<end_of_utterance>``). "" when the template writes the tokenizer's end token there,
    whitespace or text only (LLaVA-1.5's ``' '``), or there is no template that renders an answer."""
    tok = getattr(processor, "tokenizer", processor)
    template = getattr(processor, "chat_template", None)
    as_list = [{"role": "user", "content": [{"type": "text", "text": _MARK}]},
               {"role": "assistant", "content": [{"type": "text", "text": _ANSWER_MARK}]}]
    as_str = [{"role": "user", "content": _MARK}, {"role": "assistant", "content": _ANSWER_MARK}]
    tries = []
    if template:
        tries.append(lambda: processor.apply_chat_template(as_list, tokenize=False))
        if isinstance(template, str):
            tries.append(lambda: tok.apply_chat_template(as_str, chat_template=template, tokenize=False))
    if getattr(tok, "chat_template", None):
        tries.append(lambda: tok.apply_chat_template(as_str, tokenize=False))
    for attempt in tries:
        try:
            text = attempt()
        except Exception:   # jinja errors of a template of the model's own
            continue
        if isinstance(text, str) and text.count(_ANSWER_MARK) == 1 and text.count(_MARK) == 1:
            rest = text.split(_ANSWER_MARK)[1].lstrip()
            ids = tok(rest, add_special_tokens=False)["input_ids"] if rest else []
            first = tok.convert_ids_to_tokens(int(ids[0])) if ids else None
            # named / extra special tokens, and added tokens marked special (Gemma 3's <end_of_turn> is only that)
            special = set(getattr(tok, "all_special_tokens", None) or ()) | {
                str(t) for t in (getattr(tok, "added_tokens_decoder", None) or {}).values()
                if getattr(t, "special", False)}
            if first and first in special and rest.startswith(first) and first != tok.eos_token:
                return str(first)
            return ""
    return ""


class _NoTurn(Exception):
    """No rendering wrote the user's text exactly once."""


def _turn(processor: Any, name: str, system: str, raise_: bool = False) -> tuple[str, str]:
    """The text before and after the user's text, ``system`` (if any) the system message before it."""
    tok = processor.tokenizer
    template = getattr(processor, "chat_template", None)
    head = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    head_str = [{"role": "system", "content": system}] if system else []
    text_part = {"type": "text", "text": _MARK}
    # The processor's template with a content list (as a VLM's takes), then with a string (a text model's template
    # copied onto the processor renders a list as its repr, or raises), then the tokenizer's.
    tries = []
    if template:
        tries.append((lambda: processor.apply_chat_template([*head, {"role": "user", "content": [text_part]}],
                                                            add_generation_prompt=True, tokenize=False), head))
        if system:   # a template that takes the user's content as a list but the system message as a string
            tries.append((lambda: processor.apply_chat_template([*head_str, {"role": "user", "content": [text_part]}],
                                                                add_generation_prompt=True, tokenize=False), head_str))
        if isinstance(template, str):
            tries.append((lambda: tok.apply_chat_template([*head_str, {"role": "user", "content": _MARK}],
                                                          chat_template=template, add_generation_prompt=True,
                                                          tokenize=False), head_str))
    if getattr(tok, "chat_template", None):
        tries.append((lambda: tok.apply_chat_template([*head_str, {"role": "user", "content": _MARK}],
                                                      add_generation_prompt=True, tokenize=False), head_str))
    if not tries:
        raise ValueError(f"backbone {name!r}: [generative] chat = true needs the model's chat template, but the "
                         f"processor and tokenizer have none; {_FIX}")
    error = None
    for attempt, h in tries:
        try:
            text = _split(attempt(), h)
        except Exception as e:   # jinja errors of a template of the model's own
            error, text = error or e, None
        if text is not None:
            return text
    if raise_:
        raise error if error is not None else _NoTurn()
    why = f"it fails ({error})" if error is not None else "it does not write a user turn's text exactly once"
    raise ValueError(f"backbone {name!r}: [generative] chat = true needs the model's chat template, but {why}, so "
                     f"prompts cannot be wrapped in it; {_FIX}")


def _image_opening(one: str, two: str, fallback: str) -> str:
    """X of ``one`` = X + c + S and ``two`` = X + c + c + S (the turn's text before the user's text, opening with one
    image and with two; S: what the template writes between the images and the text, e.g. LLaVA-Interleave's
    '\\n'). The second image's place is taken as late as it can be; ``fallback`` where none fits."""
    n = len(two) - len(one)
    if n <= 0:
        return fallback
    for k in range(len(one), n - 1, -1):   # two = one[:k] + c + one[k:], one[:k] ending with c
        c = two[k:k + n]
        if two[:k] == one[:k] and two[k + n:] == one[k:] and one[:k].endswith(c):
            return one[:k - n]
    return fallback


def _split(text: Any, head: list | None = None) -> tuple[str, str] | None:
    """The text before and after the marker, or None unless ``text`` holds it exactly once (and not the Python
    repr of the system message ``head`` gave: a template that writes a system content list as it is)."""
    if not isinstance(text, str) or text.count(_MARK) != 1:
        return None
    if head and isinstance(head[0]["content"], list) and str(head[0]["content"]) in text:
        return None
    before, after = text.split(_MARK)
    return before, after
