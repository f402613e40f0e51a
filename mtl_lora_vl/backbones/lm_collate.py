"""Prompts and targets -> token tensors for a vision-language model's language model (LLaVA-style).

:class:`LMCollator` runs in data-loader workers (it is picklable: a Hugging Face tokenizer and a
:class:`PromptLayout` of plain numbers). Every prompt carries the image placeholder (the backbone's
``image_token``) once per image of its row -- exactly once unless the layout takes several images per prompt
(``several_images``: every family, for NLVR2's pair; PaliGemma's go before its text, in order); the collator
expands each to the ``num_image_tokens`` ids that the vision tower fills (a native-resolution model, Qwen2-VL: as
many as the image's size gives, ``image_sizes``, one per image in row order; an image of a row of several:
``several_image_tokens`` where the family reads it otherwise, LLaVA-OneVision's base view alone), so
``input_ids`` always match the image features.

* With targets (training): ``input_ids`` = prompt + target + end token, right-padded; ``attention_mask``;
  ``labels`` = the ids on the target and end tokens and -100 on the prompt and padding. The end token is the
  tokenizer's, or a row's own from ``ends`` (a chat row's: the template's end of turn, ``ChatWrap.end``).
* Without targets (generation): the prompts left-padded (so every row ends where generation starts),
  ``input_ids`` and ``attention_mask``.

``max_length`` caps a row: a target is cut to fit (with a warning; a cut row trains no end token, which would teach
the model to stop there); a prompt that does not fit alone is an error naming the lengths.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..data.anyres import AnyresGeometry
from ..data.splits import SplitGeometry
from ..log import rank_warning

logger = logging.getLogger(__name__)

__all__ = ["IGNORE_INDEX", "LMCollator", "PromptLayout", "special_prefix", "whole_images"]

IGNORE_INDEX = -100


class PromptRows(NamedTuple):
    """:meth:`LMCollator.prompt_rows`: each prompt's row of ids, the text it is tokenised as, and that text's ids."""

    rows: list[list[int]]
    texts: list[str]
    text_ids: list[list[int]]


@dataclass(frozen=True)
class PromptLayout:
    """Where the image tokens and special tokens go in a prompt (plain data; a family's facts).

    ``prefix_ids`` are put before the prompt's text (the start token, when the model uses one);
    ``image_first`` moves the image tokens (every image's of the row, in order) before ``prefix_ids`` and the text,
    the placeholders dropped from it (PaliGemma), and
    ``prompt_end`` is appended to the prompt's text (PaliGemma's ``"\\n"`` that closes the prefix);
    ``image_open`` / ``image_close`` are put just before and after the image tokens (Qwen2-VL's
    ``<|vision_start|>`` and ``<|vision_end|>``). ``token_side``: a native-resolution model's pixels per image
    token along each side (Qwen2-VL: patch x merge), so that an ``h x w`` image fills
    ``(h / token_side)·(w / token_side)`` tokens; 0: every image fills ``num_image_tokens``. ``image_text``: text
    put around the placeholder and tokenised with the prompt (Gemma 3's ``"\\n\\n"`` around its image, which merges
    with the prompt's own newlines, as its processor tokenises them). ``several_images``: a prompt may hold the
    placeholder more than once, one per image of its row (the model takes its images' features in order);
    ``several_image_tokens``: the tokens each image of a row of several fills where the model reads those otherwise
    than an image alone (LLaVA-OneVision: its base view, no tiles); 0: as alone. ``anyres``: a native-aspect anyres
    model's geometry (:mod:`mtl_lora_vl.data.anyres`), or Idefics3's splitting (:mod:`mtl_lora_vl.data.splits`,
    which also writes the ids around each crop): an image's count depends on its original size. ``image_breaks``:
    ``(break id, end id)`` where the model writes an image as rows of image tokens, each row ended by the break id,
    the last by the end id instead (Pixtral's ``[IMG_BREAK]`` / ``[IMG_END]``; a square image: √n rows).
    """

    image_token: str
    image_token_id: int
    num_image_tokens: int
    eos_id: int
    pad_id: int
    prefix_ids: tuple[int, ...] = ()
    image_first: bool = False
    prompt_end: str = ""
    image_open: tuple[int, ...] = ()
    image_close: tuple[int, ...] = ()
    token_side: int = 0
    image_text: tuple[str, str] = ("", "")
    several_images: bool = False
    several_image_tokens: int = 0
    anyres: AnyresGeometry | SplitGeometry | None = None
    image_breaks: tuple[int, ...] = ()

    def image_tokens(self, size: Sequence[int] | None = None) -> int:
        """How many image tokens an image of ``size`` ``(h, w)`` fills (``num_image_tokens`` without a size, or
        when every image fills that many; ``anyres``: by the model's arithmetic on the original size)."""
        if self.anyres is not None and size is not None:
            return self.anyres.tokens(size)
        if not self.token_side or size is None:
            return self.num_image_tokens
        h, w = (int(x) for x in size)
        u = self.token_side
        if h < u or w < u or h % u or w % u:
            raise ValueError(f"an image of {h}x{w} pixels does not fill whole {u}x{u} image tokens; resize it with "
                             f"the backbone's own resize (backbone.resize: each side a multiple of {u})")
        return (h // u) * (w // u)

    def image_ids_for(self, size: Sequence[int] | None = None) -> list[int]:
        """The ids one image (of ``size``, see :meth:`image_tokens`) fills in a row: the image tokens, with
        ``image_open`` / ``image_close`` around them; Idefics3's splitting: the crops' and global image's ids)."""
        own = self.anyres.image_ids(size) if self.anyres is not None and size is not None else None
        if own is not None:
            return own
        n = self.image_tokens(size)
        if self.image_breaks:
            rows = int(size[0]) // self.token_side if self.token_side and size is not None else math.isqrt(n)
            grid = ([self.image_token_id] * (n // rows) + [self.image_breaks[0]]) * rows
            return [*self.image_open, *grid[:-1], self.image_breaks[1], *self.image_close]
        return [*self.image_open, *[self.image_token_id] * n, *self.image_close]

    @property
    def image_ids(self) -> list[int]:
        """The ids one image of ``num_image_tokens`` fills (:meth:`image_ids_for` without a size)."""
        return self.image_ids_for()


def whole_images(row_tokens: Sequence[int], image_tokens: Sequence[int]) -> bool:
    """Whether rows holding ``row_tokens`` image tokens each are the images of ``image_tokens`` tokens each, taken
    in order, whole, every one of them: what a model that scatters image features over the placeholders in order reads
    (a row may hold several images, or none)."""
    taken = 0
    for got in row_tokens:
        fill = 0
        while fill < got and taken < len(image_tokens):
            fill, taken = fill + image_tokens[taken], taken + 1
        if fill != got:
            return False
    return taken == len(image_tokens)


def special_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The special ids the tokenizer puts before a text on its own (e.g. ``(bos,)``; ``()`` for none), found by
    encoding a probe with and without special tokens (tokenizers that append an end token keep it out)."""
    probe = "a"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return tuple(int(i) for i in full[:start])
    return ()


class LMCollator:
    """``(prompts, targets | None, ends | None, image_sizes=None) -> {"input_ids", "attention_mask"[, "labels"]}``
    (see the module doc; ``image_sizes``: each image's ``(h, w)``, in row order, for a native-resolution model)."""

    def __init__(self, tokenizer: Any, layout: PromptLayout, max_length: int | None = None) -> None:
        fewest = _fewest_image_tokens(layout)
        if max_length is not None and max_length < fewest + 2:
            raise ValueError(f"max_length={max_length} cannot hold an image's {fewest} image tokens (the fewest one "
                             "fills), a prompt and an answer; raise max_length")
        ids = list(tokenizer(layout.image_token, add_special_tokens=False)["input_ids"])
        if ids != [layout.image_token_id]:
            raise ValueError(
                f"the tokenizer splits the image placeholder {layout.image_token!r} into {ids}, not the model's image "
                f"token {layout.image_token_id}; add it as one special token "
                f"(tokenizer.add_special_tokens({{'additional_special_tokens': [{layout.image_token!r}]}})) and save "
                "the tokenizer again"
            )
        self.tokenizer = tokenizer
        self.layout = layout
        self.max_length = max_length
        self._control_ids = _control_ids(tokenizer, layout.image_token_id)
        self._end_ids: dict[str, int] = {}   # end token -> id: read once, not per row of every batch

    def __call__(self, prompts: Sequence[str], targets: Sequence[str] | None = None,
                 ends: Sequence[str] | None = None, *,
                 image_sizes: Sequence[Sequence[int]] | None = None) -> dict[str, Tensor]:
        if isinstance(prompts, str):
            raise TypeError("lm_collator: prompts must be a list of strings (one per row), not one string")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("lm_collator: no prompts")
        rows, texts, prompt_ids = self.prompt_rows(prompts, image_sizes)
        if targets is None:
            return self._left_padded(rows)
        for arg, val in (("targets", targets), ("ends", ends)):   # a string would be read letter by letter
            if isinstance(val, str):
                raise TypeError(f"lm_collator: {arg} must be a list of strings (one per row), not one string {val!r}")
        targets = list(targets)
        if len(targets) != len(prompts):
            raise ValueError(f"lm_collator: {len(prompts)} prompts but {len(targets)} targets; give one target per "
                             "prompt")
        held = next((i for i, t in enumerate(targets) if self.layout.image_token in t), None)
        if held is not None:   # its id would be one more image token than the row's images fill
            raise ValueError(f"lm_collator: target {held} ({targets[held][:60]!r}) holds the image placeholder "
                             f"{self.layout.image_token!r}; a target is text after the prompt (the image goes in the "
                             "prompt): take the placeholder out of the target")
        enc = self.continuation_ids(texts, targets, prompt_ids)
        ends = [""] * len(targets) if ends is None else list(ends)
        if len(ends) != len(targets):
            raise ValueError(f"lm_collator: {len(targets)} targets but {len(ends)} ends; give one end per target")
        return self._right_padded(rows, [[*t, self.end_id(e)] for t, e in zip(enc, ends)])

    def end_id(self, end: str | None = "") -> int:
        """The id that ends a target: the token ``end`` (a chat template's end of turn), else the tokenizer's end."""
        if not end:
            return self.layout.eos_id
        if end not in self._end_ids:
            ids = list(self.tokenizer(end, add_special_tokens=False)["input_ids"])
            if len(ids) != 1:
                raise ValueError(f"lm_collator: the end {end!r} is {len(ids)} tokens, not one of the tokenizer's")
            self._end_ids[end] = int(ids[0])
        return self._end_ids[end]

    def continuation_ids(self, prompt_texts: Sequence[str], texts: Sequence[str],
                         prompt_ids: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
        """Each of ``texts`` tokenised as it continues its prompt text (after a space unless the prompt ends in
        whitespace or a special token other than the image placeholder: a chat template writes the answer right
        after Mistral 3's ``[/INST]``, and 'Ġred' there is a token the chat model never wrote): the ids the model
        reads in running text -- a byte-level BPE (GPT-2, Qwen) writes "answer: red" with 'Ġred', while "red"
        alone is 'red'. A text whose ids do not simply extend the prompt's (a token merged across the boundary)
        keeps its own tokenisation. ``prompt_ids``: the prompt texts' ids when the caller has them (two tokenizer
        calls instead of three)."""
        prompt_texts, texts = list(prompt_texts), list(texts)
        tok = self.tokenizer
        base = prompt_ids if prompt_ids is not None else tok(prompt_texts, add_special_tokens=False)["input_ids"]
        joined = [p + ("" if not p or p[-1].isspace() or (b and int(b[-1]) in self._control_ids) else " ") + t
                  for p, t, b in zip(prompt_texts, texts, base)]
        full = tok(joined, add_special_tokens=False)["input_ids"]
        out: list[list[int] | None] = []
        for b, f in zip(base, full):
            b, f = [int(t) for t in b], [int(t) for t in f]
            out.append(f[len(b):] if len(f) > len(b) and f[:len(b)] == b else None)
        merged = [i for i, ids in enumerate(out) if ids is None]
        if merged:   # only these rows are tokenised alone (one call per batch fewer where none merges)
            alone = tok([texts[i] for i in merged], add_special_tokens=False)["input_ids"]
            for i, a in zip(merged, alone):
                out[i] = [int(t) for t in a]
        return out  # type: ignore[return-value]

    @staticmethod
    def first_labelled(labels: Tensor) -> int:
        """The first position that any row labels (the last position when none does): where a language model's
        loss needs logits from. Read on the host; on a GPU tensor it waits for the device."""
        labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
        return int(labelled[0]) if labelled.numel() else labels.shape[1] - 1

    # ------------------------------------------------------------------------------------------ prompts
    def prompt_texts(self, prompts: Sequence[str]) -> list[str]:
        """The text each prompt is tokenised as (image placeholder moved out where the model puts the image
        first, ``prompt_end`` appended)."""
        lay = self.layout
        texts = []
        for i, p in enumerate(prompts):
            n = p.count(lay.image_token)
            if n != 1 and not (lay.several_images and n > 1):
                several = " (or one per image of its row)" if lay.several_images else ""
                raise ValueError(
                    f"lm_collator: prompt {i} ({p[:60]!r}) has {n} image placeholders {lay.image_token!r}; every "
                    f"prompt needs exactly one{several}, e.g. '{lay.image_token} question: ... answer:' "
                    "(backbone.image_token)"
                )
            if lay.image_first:
                p = p.replace(lay.image_token, "").strip()
            elif lay.image_text != ("", ""):
                p = p.replace(lay.image_token, lay.image_text[0] + lay.image_token + lay.image_text[1])
            texts.append(p + lay.prompt_end)
        return texts

    def image_counts(self, prompts: Sequence[str]) -> list[int]:
        """Each prompt's images: the image placeholders it holds."""
        return [p.count(self.layout.image_token) for p in prompts]

    def prompt_rows(self, prompts: Sequence[str], image_sizes: Sequence[Sequence[int]] | None = None) -> PromptRows:
        """For prompts (each holding its images' placeholders): each row's ids (prefix, text, each image placeholder
        expanded: as many tokens as its image's size in ``image_sizes`` gives, for a native-resolution model), the
        text each is tokenised as (:meth:`prompt_texts`) and that text's own ids. ``image_sizes``: one ``(h, w)`` per
        image placeholder, in row order. The images are counted on the prompts, not the texts: a layout that moves
        them out of the text (``image_first``: PaliGemma puts all of a row's images' tokens, in order, before the
        start token and the text, as its processor does) leaves no placeholder in the text to count."""
        lay = self.layout
        texts = self.prompt_texts(prompts)
        encoded = [[int(t) for t in ids] for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        # each row's images: the placeholders of its ids, or of its prompt where the layout takes them out of the text
        counts = self.image_counts(prompts) if lay.image_first else [ids.count(lay.image_token_id) for ids in encoded]
        if image_sizes is not None and len(image_sizes) != sum(counts):
            raise ValueError(f"lm_collator: {len(texts)} prompts hold {sum(counts)} image placeholders but "
                             f"{len(image_sizes)} image sizes are given; give one (h, w) per image")
        images: dict[tuple[int, ...] | None, list[int]] = {}   # the ids of each image size, made once
        rows = []
        taken = 0
        for i, ids in enumerate(encoded):
            own = []
            if counts[i] > 1 and lay.several_image_tokens:   # (LLaVA-OneVision: each image its base view alone)
                base = [*lay.image_open, *[lay.image_token_id] * lay.several_image_tokens, *lay.image_close]
                own = [base] * counts[i]
            else:
                for j in range(taken, taken + counts[i]):
                    sized = image_sizes is not None and (lay.token_side or lay.anyres is not None)
                    size = _image_size(image_sizes[j]) if sized else None
                    if size not in images:
                        images[size] = lay.image_ids_for(size)
                    own.append(images[size])
            taken += counts[i]
            if lay.image_first:
                row = [*(t for image in own for t in image), *lay.prefix_ids, *ids]
            else:
                row, start = list(lay.prefix_ids), 0
                for at, image in zip([k for k, t in enumerate(ids) if t == lay.image_token_id], own):
                    row += [*ids[start:at], *image]
                    start = at + 1
                row += ids[start:]
            if self.max_length is not None and len(row) + 1 > self.max_length:
                raise ValueError(
                    f"lm_collator: prompt {i} is {len(row)} tokens ({sum(map(len, own))} of them image tokens), which "
                    f"leaves no room for an answer within max_length={self.max_length}; shorten the prompt or raise "
                    "max_length"
                )
            rows.append(row)
        return PromptRows(rows, texts, encoded)

    def _left_padded(self, rows: list[list[int]]) -> dict[str, Tensor]:
        width = max(map(len, rows))
        pad = self.layout.pad_id
        ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask}

    def _right_padded(self, rows: list[list[int]], targets: list[list[int]]) -> dict[str, Tensor]:
        if self.max_length is not None:
            # A cut target keeps no end token: labelling one after the cut would teach the model to stop there.
            cut = sum(len(p) + len(t) > self.max_length for p, t in zip(rows, targets))
            if cut:
                rank_warning(logger, "lm_collator: %d of %d targets cut to fit max_length=%d (their end token is not "
                             "trained)", cut, len(rows), self.max_length)   # this rank's batch: said on every rank
            targets = [t if len(p) + len(t) <= self.max_length else t[:self.max_length - len(p)]
                       for p, t in zip(rows, targets)]
        width = max(len(p) + len(t) for p, t in zip(rows, targets))
        pad, ignore = self.layout.pad_id, IGNORE_INDEX
        # one tensor per field from padded lists: no per-row tensors or slice writes
        ids = torch.tensor([[*p, *t] + [pad] * (width - len(p) - len(t)) for p, t in zip(rows, targets)],
                           dtype=torch.long)
        mask = torch.tensor([[1] * (len(p) + len(t)) + [0] * (width - len(p) - len(t)) for p, t in zip(rows, targets)],
                            dtype=torch.long)
        labels = torch.tensor([[ignore] * len(p) + t + [ignore] * (width - len(p) - len(t))
                               for p, t in zip(rows, targets)], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _control_ids(tokenizer: Any, image_token_id: int) -> frozenset[int]:
    """The tokenizer's special ids (named, extra, and added tokens marked special: Mistral's ``[/INST]``) other
    than the image placeholder and the unknown token (it stands for the prompt's own text, which a text follows
    after a space): a text after one follows it without a space."""
    named = getattr(tokenizer, "all_special_ids", None) or ()
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids = {int(i) for i in named} | {int(i) for i, t in added.items() if getattr(t, "special", False)}
    unk = getattr(tokenizer, "unk_token_id", None)
    return frozenset(ids - {int(image_token_id)} - ({int(unk)} if isinstance(unk, int) else set()))


def _fewest_image_tokens(layout: PromptLayout) -> int:
    """The fewest image tokens an image fills in a row: ``num_image_tokens`` where every image fills as many (an
    image of a row of several: ``several_image_tokens`` where fewer); 1 where an image's count depends on its size
    (``token_side``, ``anyres``: a wide image fills fewer than the square's; each row is then measured as it is
    made)."""
    fewest = 1 if layout.token_side or layout.anyres is not None else layout.num_image_tokens
    return min(fewest, layout.several_image_tokens or fewest)


def _image_size(size: Any) -> tuple[int, int]:
    """An image's ``(h, w)``, refused by name unless two positive whole numbers (a bad size made a division by zero
    or was taken as it came)."""
    def whole(x: Any) -> bool:
        if isinstance(x, Tensor):
            return x.numel() == 1 and not x.is_floating_point() and x.dtype != torch.bool
        return isinstance(x, numbers.Integral) and not isinstance(x, bool)

    if not isinstance(size, (tuple, list, Tensor)) or len(size) != 2 or not all(whole(x) and x > 0 for x in size):
        raise ValueError(f"lm_collator: image size {size!r} is no (h, w) of two positive whole numbers; give each "
                         "image's own height and width in pixels (image_sizes=)")
    return int(size[0]), int(size[1])
