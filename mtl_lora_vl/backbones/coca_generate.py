"""``MTLLoRAModel(coca).generate``: open_clip's ``CoCa.generate`` call, run by the package's own caption decoding.

open_clip's ``CoCa.generate`` imports ``BeamSearchScorer`` and the logits warpers from transformers 4, which
transformers 5 (which this package needs) removed, so it cannot run here; and its beam search repeats the images before
the towers, which a mixed route refuses. :func:`coca_generate` takes the arguments of open_clip's call and runs
:func:`.coca_decoding.caption_ids` (the KV-cached greedy / beam search ``CoCaBackbone.generate`` runs), under the
caller's route, each image's beams under its task. It returns what open_clip's returns: token ids ``(B, L)``, the start
token first, the end token and padding after each caption.

Taken: ``image``; ``seq_len`` (open_clip's: the whole length, start token included) or ``max_len`` (the backbone's: new
tokens); ``generation_type`` ``"beam_search"`` (``num_beams``, or the backbone's ``beam_size``), ``"greedy"``, or
``"top_k"`` with ``top_k=1`` (greedy; as open_clip's greedy loop, the last of ``seq_len``'s places is the end
token's); ``sot_token_id`` / ``eos_token_id`` / ``pad_token_id`` (open_clip's defaults:
CLIP's BPE ids 49406 / 49407, the model's ``pad_id``); ``fixed_output_length``; and where they change nothing
(open_clip's defaults, or where open_clip's greedy / beam search reads them not at all): ``temperature``, ``top_p``,
``max_seq_len`` (as long as the captions), ``num_beam_groups=1``, ``min_seq_len <= 1``, ``repetition_penalty=1``,
``stopping_criteria=None``, ``text=None``. The rest (sampling, group diversity, a minimum length, a repetition penalty,
a prompt) is refused by name. Left out, open_clip's defaults: ``seq_len=30`` and 6 beams, in one group (open_clip's
default is 3 groups with a diversity penalty, which this search does not do), and no minimum length (open_clip's default
``min_seq_len=5`` keeps the end token out of the first four new ones). The start and pad tokens are never generated. A
``seq_len`` past the decoder's context is cut to it, with a warning."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .coca_decoding import caption_ids
from .context_warnings import warn_caption_cut

__all__ = ["coca_generate", "is_open_clip_coca"]

#: open_clip's ``CoCa.generate`` parameters, in its order (positional arguments are read by it).
OPEN_CLIP_ORDER = ("image", "text", "seq_len", "max_seq_len", "temperature", "generation_type", "top_p", "top_k",
                   "pad_token_id", "eos_token_id", "sot_token_id", "num_beams", "num_beam_groups", "min_seq_len",
                   "stopping_criteria", "repetition_penalty", "fixed_output_length")
#: The backbone's names, taken too.
OWN = ("max_len", "beam_size")
GREEDY = ("greedy", "top_k")


def is_open_clip_coca(model: nn.Module) -> bool:
    """Whether ``model`` is an open_clip ``CoCa`` (or a subclass)."""
    return any(c.__module__ == "open_clip.coca_model" and c.__name__ == "CoCa" for c in type(model).__mro__)


def _whole(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < least or int(value) != value:
        raise ValueError(f"MTLLoRAModel.generate (CoCa): {name} must be an integer >= {least}, got {value!r}")
    return int(value)


def _refuse_unsupported(kw: dict[str, Any]) -> None:
    """The arguments whose meaning this decoding does not have, refused by name with what to pass instead."""
    kind = kw.get("generation_type", "beam_search")
    if kind not in ("beam_search", *GREEDY):
        raise ValueError(f"MTLLoRAModel.generate (CoCa): generation_type={kind!r} is not run here: only greedy "
                         "decoding ('greedy', or 'top_k' with top_k=1) and beam search ('beam_search') are; "
                         "open_clip's sampling ('top_p', 'top_k' above 1) needs transformers 4")
    if kind == "top_k" and kw.get("top_k", 1) != 1:
        raise ValueError(f"MTLLoRAModel.generate (CoCa): top_k={kw['top_k']!r} samples, which is not run here; "
                         "give top_k=1 (greedy) or generation_type='beam_search'")
    unsupported = {
        "text": (kw.get("text") is not None, "a prompt to continue: captions start from the start token; leave "
                 "text out"),
        "num_beam_groups": (kw.get("num_beam_groups", 1) != 1, "diverse group beam search: plain beam search "
                            "runs here; leave num_beam_groups out (or 1)"),
        "min_seq_len": (_whole("min_seq_len", kw.get("min_seq_len", 0), 0) > 1, "a minimum caption length is not "
                        "kept here; leave min_seq_len out (or <= 1)"),
        "repetition_penalty": (kw.get("repetition_penalty", 1.0) != 1.0, "no repetition penalty is applied here; "
                               "leave repetition_penalty out (or 1.0)"),
        "stopping_criteria": (kw.get("stopping_criteria") is not None, "captions stop at the end token or the "
                              "length; give seq_len (or max_len) instead"),
    }
    for name, (refused, why) in unsupported.items():
        if refused:
            shown = f"a tensor of shape {tuple(kw[name].shape)}" if isinstance(kw[name], Tensor) else repr(kw[name])
            raise ValueError(f"MTLLoRAModel.generate (CoCa): {name}={shown} is not run here ({why}). "
                             "open_clip's own CoCa.generate would take it, but it needs transformers 4")


def _token_id(kw: dict[str, Any], name: str, default: int, vocab: int | None) -> int:
    value = kw.get(name)
    value = default if value is None else int(value.item() if isinstance(value, Tensor) else value)
    if vocab is not None and not 0 <= value < vocab:
        said = f"{name}={value}" if kw.get(name) is not None else f"{name} (open_clip's default {value}, CLIP's BPE)"
        raise ValueError(f"MTLLoRAModel.generate (CoCa): {said} is not a token of the model's vocabulary of {vocab}; "
                         "pass sot_token_id=, eos_token_id= (and pad_token_id=) of its tokenizer")
    return value


def coca_generate(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """open_clip's ``model.generate(*args, **kwargs)`` on an open_clip CoCa, run by the package's decoding (the
    module's doc says what is taken); call it under the route the rows need."""
    if len(args) > len(OPEN_CLIP_ORDER):
        raise TypeError(f"MTLLoRAModel.generate (CoCa): at most {len(OPEN_CLIP_ORDER)} positional arguments, "
                        f"open_clip's {OPEN_CLIP_ORDER}; got {len(args)}")
    kw = dict(zip(OPEN_CLIP_ORDER, args))
    for name, value in kwargs.items():
        if name not in OPEN_CLIP_ORDER and name not in OWN:
            raise TypeError(f"MTLLoRAModel.generate (CoCa) got an unexpected keyword argument {name!r}; it takes "
                            f"open_clip's CoCa.generate arguments {OPEN_CLIP_ORDER} and max_len, beam_size")
        if name in kw:
            raise TypeError(f"MTLLoRAModel.generate (CoCa) got multiple values for argument {name!r}")
        kw[name] = value
    for a, b in (("seq_len", "max_len"), ("num_beams", "beam_size")):
        if kw.get(a) is not None and kw.get(b) is not None:
            raise TypeError(f"MTLLoRAModel.generate (CoCa): pass {a} (open_clip's) or {b} (the backbone's), not both")
    _refuse_unsupported(kw)
    image = kw.get("image")
    if not isinstance(image, Tensor) or image.dim() != 4 or not image.is_floating_point():
        raise ValueError("MTLLoRAModel.generate (CoCa): image must be a float tensor (B, 3, H, W) of preprocessed "
                         f"images, got {type(image).__name__ if not isinstance(image, Tensor) else tuple(image.shape)}"
                         f"{'' if not isinstance(image, Tensor) or image.is_floating_point() else f' {image.dtype}'}")
    if image.shape[0] == 0:
        raise ValueError(f"MTLLoRAModel.generate (CoCa): no images (a batch of shape {tuple(image.shape)}); one "
                         "caption is written per image: pass at least one")
    greedy = kw.get("generation_type", "beam_search") in GREEDY
    beams = kw.get("num_beams") if kw.get("num_beams") is not None else kw.get("beam_size")
    if greedy and beams is not None and beams != 1:
        raise ValueError(f"MTLLoRAModel.generate (CoCa): {kw['generation_type']!r} decoding keeps one sequence, "
                         f"but {beams} beams were asked for; give generation_type='beam_search' for beams")
    beams = 1 if greedy else _whole("num_beams" if kw.get("num_beams") is not None else "beam_size",
                                    6 if beams is None else beams, 1)
    if kw.get("max_len") is not None:
        max_len = _whole("max_len", kw["max_len"], 1)
    else:
        max_len = _whole("seq_len", 30 if kw.get("seq_len") is None else kw["seq_len"], 2) - 1
    window = kw.get("max_seq_len")
    if window is not None and _whole("max_seq_len", window, 1) < max_len + 1:
        raise ValueError(f"MTLLoRAModel.generate (CoCa): max_seq_len={window} (open_clip's sampling reads only the "
                         "last max_seq_len tokens) is not run here: each step reads the whole caption; leave "
                         f"max_seq_len out, or give one >= seq_len ({max_len + 1})")
    text = model.text
    context = min(c for c in (getattr(model, "context_length", None), getattr(text, "context_length", None), 77)
                  if isinstance(c, int))
    vocab = getattr(text, "vocab_size", None)
    sot = _token_id(kw, "sot_token_id", 49406, vocab)
    eos = _token_id(kw, "eos_token_id", 49407, vocab)
    pad = _token_id(kw, "pad_token_id", int(getattr(model, "pad_id", 0)), vocab)
    warn_caption_cut(model, max_len, context, seq_len=kw.get("max_len") is None)
    steps = max(1, min(max_len, context - 1))
    # open_clip's greedy loop (not its beam search) writes the end token in seq_len's last place: seq_len 8 gives at
    # most 6 words and the end token (it gave 7 words and no end token here). max_len (the backbone's) keeps its own.
    forced_end = greedy and kw.get("max_len") is None
    with torch.no_grad():
        _, image_embs = model._encode_image(image)
        if forced_end and steps == 1:
            out = torch.full((image.shape[0], 1), sot, dtype=torch.long, device=image_embs.device)
        else:
            out = caption_ids(model, image_embs, steps - forced_end, beams, sot, eos, pad, banned={pad, sot})
    still_open = (out[:, 1:] != eos).all(dim=1) if forced_end and out.shape[1] == steps else None
    if still_open is not None and still_open.any():   # rows open at the last place get the end token, the rest pad
        out = torch.cat([out, torch.where(still_open, eos, pad).unsqueeze(1).to(out)], dim=1)
    width = max_len + 1
    if kw.get("fixed_output_length") and out.shape[1] < width:
        out = torch.cat([out, out.new_full((out.shape[0], width - out.shape[1]), pad)], dim=1)
    return out
