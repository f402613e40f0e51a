"""open_clip CLIP / CustomTextCLIP (contrastive) and CoCa (contrastive plus a caption decoder).

Builds from an in-memory config (:func:`build_open_clip`, tiny test models and the built-in backbone),
from an open_clip local directory (``open_clip:DIR``), from an architecture name plus a local checkpoint
(``open_clip:NAME --pretrained FILE``, or ``--pretrained TAG`` when the tag's weights are already in the
local cache, see :mod:`.cache`) and the built-in backbone (``builtin``). Nothing downloads: a name, tag
or tokenizer that would need the hub fails with a message saying how to point at local files.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.resize import ImageResize
from ..families import OPEN_CLIP_CONFIG
from ..whole_files import read_whole
from .base import (
    GENERATE,
    GRAD_CHECKPOINTING,
    IMAGE_EMBEDDINGS,
    LM_LOGITS,
    OPENAI_MEAN,
    OPENAI_STD,
    TEXT_EMBEDDINGS,
    Backbone,
    as_rgb,
    register_backbone,
    resolve_base_dtype,
)
from .builtin import BUILTIN_NAME, builtin_files
from .cache import cached_open_clip_weights, clip_url_cache, hf_hub_cache, local_folder
from .coca_decoding import caption_ids
from .context_warnings import warn_caption_cut
from .offline import offline
from .open_clip_text import OpenClipText
from .open_clip_tokenizer import check_pooling, folder_tokenizer, hf_text_tower_message, open_clip_tokenizer
from .spec import SPEC_FORMS, BackboneSpec
from .tokenizers import (
    TOKENIZER_FILES,
    HFTokenizer,
    Tokenizer,
)

__all__ = ["CoCaBackbone", "OpenClipBackbone", "build_open_clip", "registry_config"]

logger = logging.getLogger(__name__)

@register_backbone("open_clip")
class OpenClipBackbone(OpenClipText, Backbone):
    """An open_clip ``CLIP`` / ``CustomTextCLIP``: image and text embeddings."""

    capabilities = frozenset({IMAGE_EMBEDDINGS, TEXT_EMBEDDINGS, GRAD_CHECKPOINTING})
    casts_inputs = False    # fp32 images meet bf16 weights as they are, outside autocast

    def _image_features(self, images: Tensor) -> Tensor:
        feats = self._tower_call(self.model.encode_image, "encode_image")(images)
        return feats[0] if isinstance(feats, tuple) else feats

    def _tower_call(self, encode: Any, what: str) -> Any:
        """``encode`` whose failure on float images of another dtype than the base weights, outside autocast, is a
        ValueError naming both dtypes and the fix (open_clip does not cast its inputs: ``encode_image`` of fp32 images
        on a bf16 base failed with torch's "Input type (torch.FloatTensor) and weight type (CPUBFloat16Type) should be
        the same"). The weights are read only once the call has failed. A batch of no images is refused naming
        ``what`` (the tower failed with torch's "cannot reshape tensor of 0 elements")."""
        def call(images: Tensor) -> Any:
            if images.shape[0] == 0:
                raise ValueError(f"{what}: no images (a batch of shape {tuple(images.shape)}); backbone {self.name!r} "
                                 "takes at least one image")
            try:
                return encode(images)
            except RuntimeError as e:
                weights = next((p.dtype for p in self.model.visual.parameters()   # (the base's, before any adapter's)
                                if p.is_floating_point() and p.numel() > 1), None)
                if (isinstance(e, torch.cuda.OutOfMemoryError) or weights is None or not images.is_floating_point()
                        or images.dtype == weights or torch.is_autocast_enabled(images.device.type)):
                    raise
                amp = (f", or call it under torch.autocast({images.device.type!r}, dtype={weights})"
                       if weights in (torch.bfloat16, torch.float16) else "")
                raise ValueError(f"{what}: the images are {images.dtype} but {self.name}'s image tower weights are "
                                 f"{weights}, and open_clip does not cast its inputs; give "
                                 f"backbone.preprocess_uint8(images, dtype={weights}) (or images.to({weights})){amp}"
                                 ) from e
        return call

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """open_clip's own switch: every tower (and CoCa's decoder) recomputes its blocks in backward."""
        self.model.set_grad_checkpointing(bool(enabled))

    @classmethod
    def load(cls, spec: BackboneSpec, device: str | torch.device = "cpu", base_dtype: str = "auto") -> Backbone:
        """``builtin``, ``open_clip:DIR`` or ``open_clip:NAME`` (with ``spec.pretrained``); fp32 weights unless
        ``base_dtype`` asks for bf16/fp16 (a small contrastive model: ``auto`` is fp32)."""
        dtype = resolve_base_dtype(base_dtype, device, large=False)
        if spec.kind == "builtin":
            folder, config, weights = builtin_files(spec.pretrained, spec.pretrained_as)
            bb = _from_files(config, folder, weights, BUILTIN_NAME, "built-in backbone", device)
        elif spec.kind == "open_clip_dir":
            bb = _load_dir(spec, device)
        else:
            bb = _load_named(spec, device)
        if dtype != torch.float32:
            _to_dtype(bb.model, dtype)
        return bb


def _to_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    """``model``'s weights in ``dtype``, but for its logit scale and bias: scalars kept fp32, as open_clip's own bf16 /
    fp16 precision keeps them (bf16 rounds CLIP's log-scale ln 100 to 4.594: a scale of 99.0)."""
    scalars = ("logit_scale", "logit_bias")
    kept = {n: p.detach().clone() for n, p in model.named_parameters(recurse=False) if n in scalars}
    model.to(dtype)
    for n, value in kept.items():
        getattr(model, n).data = value


class CoCaBackbone(OpenClipBackbone):
    """An open_clip ``CoCa``: embeddings plus a caption decoder (teacher-forced logits, generation)."""

    capabilities = OpenClipBackbone.capabilities | {LM_LOGITS, GENERATE}
    pads_to_context = False  # the decoder takes captions of any length; embeddings pad below

    def _text_features(self, tokens: Tensor) -> Tensor:
        # The text tower appends its CLS token after the last column, whose position it takes: a row's embedding
        # depends on the width unless every row is the full context (as open_clip's tokenizer gives them).
        return super()._text_features(self.pad_to_context(tokens))

    def check_caption_tokens(self) -> None:
        """Refuse a tokenizer whose rows do not begin with its start token: the decoder is trained to predict
        ``tokens[:, 1:]`` from ``tokens[:, 0]`` and generates from the start token, so a row that begins with its
        first word would never train that word, and generation would start from a token training never saw."""
        if self.bos_id is None:
            raise ValueError(f"backbone {self.name!r} (CoCa): its tokenizer has no start token (neither bos nor cls), "
                             "which the caption decoder starts from; use a tokenizer that puts a start token first "
                             "(a bos_token its post-processor adds), or caption with a LLaVA-style backbone")
        first = int(self.tokenizer(["a"])[0, 0])
        if first != self.bos_id:
            raise ValueError(f"backbone {self.name!r} (CoCa): its tokenizer's rows begin with token {first}, not its "
                             f"start token {self.bos_id}, which the caption decoder starts from (the first word would "
                             "never be trained; generation would start from an unseen token); use a tokenizer that "
                             "adds its bos token (a post-processor template '<bos> $A <eos>', or add_bos_token in "
                             "tokenizer_config.json), or caption with a LLaVA-style backbone")

    def caption_logits(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced decoder logits ``(B, L-1, vocab)``; position i predicts ``tokens[:, i + 1]``."""
        if tokens.dim() != 2 or tokens.shape[1] < 2:
            raise ValueError(f"caption tokens must be (B, L) with L >= 2, got shape {tuple(tokens.shape)}")
        if tokens.shape[0] != images.shape[0]:
            raise ValueError(f"caption_logits got {images.shape[0]} images but {tokens.shape[0]} token rows")
        tokens = self.fit_tokens(tokens)
        _, image_embs = self.resize.checked(self._tower_call(self.model._encode_image, "caption_logits"), images,
                                            "caption_logits", self.name)
        _, token_embs = self.model._encode_text(tokens)
        return self.model.text_decoder(image_embs, token_embs[:, :-1])

    @torch.no_grad()
    def generate(self, images: Tensor, max_len: int = 20, beam_size: int = 1,
                 prompts: Sequence[str] | None = None, use_cache: bool = True) -> list[str]:
        """One caption per image: greedy (``beam_size=1``) or beam search with length normalisation. Under a
        mixed ``route`` each image's beams use its task. With ``use_cache`` (and a model layout that allows
        it, :func:`.coca_decoding.supports_kv_cache`) each step runs only the new token over cached keys and
        values; without, each step re-runs the whole prefix."""
        if prompts is not None:
            raise ValueError(f"backbone {self.name!r} (CoCa) captions images without prompts; pass prompts=None")
        for name, value in (("max_len", max_len), ("beam_size", beam_size)):
            # (max_len 0.5 was taken as 1, 2.5 as 2; beam_size 2.0 failed inside torch's repeat_interleave)
            if isinstance(value, bool) or value < 1 or int(value) != value:
                raise ValueError(f"generate: {name} must be an integer >= 1, got {value!r}")
        max_len, beam_size = int(max_len), int(beam_size)
        if isinstance(images, Tensor) and images.dim() == 4 and images.shape[0] == 0:   # (torch: "cannot reshape")
            raise ValueError(f"generate: no images (a batch of shape {tuple(images.shape)}); backbone {self.name!r} "
                             "(CoCa) writes one caption per image: pass at least one")
        self.check_caption_tokens()
        warn_caption_cut(self, max_len, self.context_length)
        _, image_embs = self.resize.checked(self._tower_call(self.model._encode_image, "generate"), images,
                                            "generate", self.name)
        unk = getattr(self.tokenizer, "unk_id", None)
        best = caption_ids(self.model, image_embs, max(1, min(max_len, self.context_length - 1)), beam_size,
                           self.bos_id, self.eos_id, self.pad_id,
                           banned={self.pad_id, self.bos_id, *(() if unk is None else (unk,))}, use_cache=use_cache)
        return [self.decode(row) for row in best]


# -------------------------------------------------------------------------------------------------- building


def _split_config(config: dict) -> tuple[dict, dict]:
    if not isinstance(config, dict):
        raise TypeError(f"open_clip config must be a dict, got {type(config).__name__}")
    if "model_cfg" in config:
        return dict(config["model_cfg"]), dict(config.get("preprocess_cfg", {}))
    if "embed_dim" not in config or "vision_cfg" not in config or "text_cfg" not in config:
        raise ValueError(
            "open_clip config needs embed_dim, vision_cfg and text_cfg (a model config), or the "
            "{'model_cfg': ..., 'preprocess_cfg': ...} shape of open_clip_config.json"
        )
    return dict(config), {}


def _model_class(model_cfg: dict) -> type[nn.Module]:
    import open_clip

    text_cfg = model_cfg.get("text_cfg", {})
    if "multimodal_cfg" in model_cfg:
        return open_clip.CoCa
    custom = bool(model_cfg.get("custom_text", False)) or bool(text_cfg.get("hf_model_name"))
    return open_clip.CustomTextCLIP if custom else open_clip.CLIP


def _image_size(visual: nn.Module, fallback: Any) -> int:
    size = getattr(visual, "image_size", fallback)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square image size {size} is not supported")
        size = size[0]
    embed = getattr(getattr(visual, "trunk", None), "patch_embed", None)   # a timm tower: built at its own size
    own = getattr(embed, "img_size", None)
    if own is not None and getattr(embed, "strict_img_size", False) and tuple(own) != (int(size), int(size)):
        raise ValueError(f"the timm image tower takes {own[0]}x{own[1]} images, but vision_cfg.image_size is {size} "
                         f"(open_clip does not pass it to a timm model); set vision_cfg.image_size to {own[0]}, or "
                         "name a timm model of that size")
    return int(size)


def _wrap(model: nn.Module, model_cfg: dict, preprocess_cfg: dict, tokenizer: Tokenizer, name: str) -> OpenClipBackbone:
    """The Backbone of a built open_clip model: CoCaBackbone when it has a caption decoder."""
    text_cfg = model_cfg.get("text_cfg", {})
    tower = getattr(model, "text", None)
    tower_pad = getattr(tower, "pad_id", None)
    masks = getattr(tower, "use_pad_mask", False) or getattr(tower, "cls_emb", None) is not None
    if isinstance(tokenizer, HFTokenizer) and isinstance(tower_pad, int) and tokenizer.pad_id != tower_pad and masks:
        # A tower that masks padding (and CoCa's CLS token's view) by its own pad id (text_cfg.pad_id): a tokenizer
        # folder's own pad token (CLIP's: its end token) would be attended to. A tower that masks none reads the pad
        # tokens open_clip's tokenizer writes (SigLIP's: its end token, id 1, read by pool_type 'last'): kept.
        tokenizer.pad_id = tower_pad
    vision_cfg = model_cfg.get("vision_cfg", {})
    has_decoder = hasattr(model, "text_decoder") and hasattr(model, "_encode_image")
    cls = CoCaBackbone if has_decoder else OpenClipBackbone
    try:
        image_size = _image_size(model.visual, vision_cfg.get("image_size", 224))
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    try:
        resize = ImageResize.from_open_clip(image_size, preprocess_cfg)
    except ValueError as e:
        raise ValueError(f"{name}: preprocess_cfg: {e}") from None
    return cls(
        model=model,
        name=name,
        tokenizer=tokenizer,
        image_size=image_size,
        resize=resize,
        mean=as_rgb(preprocess_cfg.get("mean", OPENAI_MEAN), "preprocess_cfg.mean"),
        std=as_rgb(preprocess_cfg.get("std", OPENAI_STD), "preprocess_cfg.std"),
        embed_dim=int(model_cfg["embed_dim"]),
        pad_id=int(tokenizer.pad_id),
        bos_id=tokenizer.bos_id,
        eos_id=int(tokenizer.eos_id),
        context_length=int(text_cfg.get("context_length", getattr(tokenizer, "context_length", 77))),
        vocab_size=int(text_cfg.get("vocab_size", tokenizer.vocab_size)),
    )


def build_open_clip(config: dict, tokenizer_dir: str | os.PathLike | None = None, name: str = "open_clip:custom",
                    device: str | torch.device = "cpu") -> OpenClipBackbone:
    """Build a freshly initialised open_clip model from an in-memory config dict.

    ``config`` is an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg`` and, for CoCa,
    ``multimodal_cfg``) or the ``{"model_cfg": ..., "preprocess_cfg": ...}`` shape of
    ``open_clip_config.json``. ``tokenizer_dir`` is a Hugging Face tokenizer directory (e.g. from
    :func:`build_word_tokenizer`); without it the config's local ``hf_tokenizer_name`` or open_clip's
    bundled BPE tokenizer is used. Used for tiny test models and by the built-in loader.
    """
    model_cfg, preprocess_cfg = _split_config(config)
    hf_model = (model_cfg.get("text_cfg") or {}).get("hf_model_name")
    if hf_model and not Path(str(hf_model)).is_dir():   # open_clip would fetch its config (and weights) from the hub
        raise ValueError(hf_text_tower_message(name, hf_model))
    tokenizer = open_clip_tokenizer(model_cfg, tokenizer_dir, name)
    check_pooling(model_cfg, tokenizer, name)
    cls = _model_class(model_cfg)
    kwargs = {k: v for k, v in model_cfg.items() if k != "custom_text"}
    with offline():
        model = cls(**kwargs)
    decoder = getattr(model, "text_decoder", None)
    if isinstance(getattr(decoder, "text_projection", None), nn.Parameter):
        # open_clip's CoCa leaves its decoder's output projection as torch.empty (its init_parameters is
        # never called); give a fresh model a proper init so its logits are finite and reproducible.
        nn.init.normal_(decoder.text_projection, std=int(decoder.width) ** -0.5)
    model.to(device)
    return _wrap(model, model_cfg, preprocess_cfg, tokenizer, name)


def registry_config(architecture: str, model: nn.Module) -> dict | None:
    """The ``open_clip_config.json`` document of a local directory holding ``model``, an ``open_clip:NAME``
    model (NAME = ``architecture``) that has no folder of its own: open_clip's registry config for NAME and the
    model's preprocessing. None when the registry has no such name."""
    import open_clip

    model_cfg = open_clip.get_model_config(architecture)
    if model_cfg is None:
        return None
    preprocess = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    return {"model_cfg": model_cfg, "preprocess_cfg": {k: list(v) if isinstance(v, tuple) else v
                                                       for k, v in preprocess.items()}}


# -------------------------------------------------------------------------------------------------- loading


def _load_state(model: nn.Module, path: Path, what: str) -> None:
    """Load a safetensors (or weights-only torch) state dict into ``model``, casting to its dtypes."""
    from safetensors.torch import load_file

    try:   # (safetensors and pickle raise their own error types for a truncated or corrupt file)
        if path.name.endswith(".safetensors.index.json"):   # shards: each file the index's weight_map names
            state = {}
            for shard in sorted(set(json.loads(read_whole(path))["weight_map"].values())):
                if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
                    raise ValueError(f"the index names the shard {shard!r}, not a file name beside it")
                state.update(load_file(str(path.parent / shard)))
        elif path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{what} weights {path} are unreadable ({type(e).__name__}: {e}); re-create or re-download "
                         "them") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, dict) and state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # a DDP-wrapped model's save (open_clip's training)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{what} weights {path} do not fit the model architecture: {e}") from e


def _from_files(config: dict, tokenizer_dir: Path | None, weights: Path, name: str, what: str,
                device: str | torch.device) -> OpenClipBackbone:
    model_cfg, preprocess_cfg = _split_config(config)
    for tower, model, flag in (("text_cfg", "hf_model_name", "hf_model_pretrained"),
                               ("vision_cfg", "timm_model_name", "timm_model_pretrained")):
        cfg = model_cfg.get(tower)
        if isinstance(cfg, dict) and cfg.get(model) and cfg.get(flag, tower == "text_cfg"):
            # the checkpoint holds the whole model, as open_clip reads it: its Hugging Face text model (or timm
            # tower) is built from its config only, not loaded from its folder (which may hold no weights) or fetched
            model_cfg[tower] = {**cfg, flag: False}
    bb = build_open_clip({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, tokenizer_dir=tokenizer_dir,
                         name=name)
    _load_state(bb.model, weights, what)
    bb.model.float().eval()
    return bb.to(device)


def _load_dir(spec: BackboneSpec, device: str | torch.device) -> OpenClipBackbone:
    """An open_clip local directory: open_clip_config.json, weights and (optionally) tokenizer files."""
    from open_clip.factory import _find_checkpoint_in_dir

    local = spec.path
    assert local is not None
    config_path = local / OPEN_CLIP_CONFIG
    if not config_path.is_file() and (local / "config.json").is_file():
        raise FileNotFoundError(f"{local} has no open_clip_config.json but a Hugging Face config.json; load it with "
                                f"--backbone hf:{local}")
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{local} has no open_clip_config.json; an open_clip model directory needs open_clip_config.json "
            "({'model_cfg': ..., 'preprocess_cfg': ...}) plus weights (open_clip_model.safetensors or "
            "model.safetensors) and, for a non-BPE vocabulary, the tokenizer files"
        )
    try:
        config = json.loads(read_whole(config_path, encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path} is not valid JSON ({e}); fix or re-create the file") from None
    cfg = config.get("model_cfg", config) if isinstance(config, dict) else None
    text_cfg = cfg.get("text_cfg") if isinstance(cfg, dict) else None
    tokenizer_dir = folder_tokenizer(local, text_cfg, spec.label)   # (open_clip's BPE where the config names none)
    named = text_cfg.get("hf_tokenizer_name") if isinstance(text_cfg, dict) else None
    if tokenizer_dir is None and named and not text_cfg.get("hf_model_name") and local_folder(str(named)) is None:
        raise FileNotFoundError(f"{local} has no tokenizer files ({', '.join(TOKENIZER_FILES)}) and the tokenizer its "
                                f"{OPEN_CLIP_CONFIG} names (hf_tokenizer_name {named!r}) is neither a local folder "
                                "nor in the local Hugging Face cache; copy the model's tokenizer files "
                                f"(tokenizer.json, tokenizer_config.json) into {local}, or set hf_tokenizer_name to "
                                "their folder")
    index = sorted(local.glob("*.safetensors.index.json"))
    ckpt = index[0] if index else _find_checkpoint_in_dir(local)
    if ckpt is None:
        raise FileNotFoundError(f"no weights (*.safetensors, *.bin, *.pth) found in {local}")
    try:
        return _from_files(config, tokenizer_dir, Path(ckpt), spec.label, spec.label, device)
    except (TypeError, AttributeError, KeyError) as e:   # a key open_clip's config classes do not take, a list
        raise ValueError(f"{config_path}: does not describe an open_clip model ({type(e).__name__}: {e}); "
                         "compare its keys with open_clip's model configs (open_clip/model_configs/*.json)") from e


def _name_hint(name: str, known: list[str]) -> str:
    """What to use instead of an unknown ``name``: the close names (in any case: open_clip's are case-sensitive),
    else a few of the ``known`` ones."""
    by_lower = {k.lower(): k for k in known}
    model, sep, tag = name.partition(":")   # open_clip's (name, pretrained tag) written as one
    if sep and model.lower() in by_lower:
        return (f": {by_lower[model.lower()]!r} is the model and {tag!r} a pretrained tag, which this package does "
                f"not download; give open_clip:{by_lower[model.lower()]} with --pretrained /path/to/checkpoint")
    close = [by_lower[c] for c in difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)]
    if close:
        return f" (did you mean {' or '.join(map(repr, close))}?); use a name from open_clip.list_models()"
    return f"; use a name from open_clip.list_models() ({len(known)} names, e.g. {', '.join(known[:6])}, ...)"


def _load_named(spec: BackboneSpec, device: str | torch.device) -> OpenClipBackbone:
    """An open_clip architecture by name with a local checkpoint file."""
    import open_clip
    from open_clip.factory import get_model_config

    name, label, pretrained = spec.name, spec.label, spec.pretrained
    model_cfg = get_model_config(name)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip model {name!r}{_name_hint(name, open_clip.list_models())} or a local "
                         f"directory. Accepted backbone forms: {SPEC_FORMS}")
    if not pretrained:
        raise ValueError(
            f"backbone {label} needs local weights: this package never downloads. Pass the checkpoint file, e.g. "
            f"`--backbone {label} --pretrained /path/to/open_clip_pytorch_model.bin` "
            "(load_backbone(spec, pretrained=PATH)), or use a local Hugging Face directory with "
            "`--backbone hf:/path/to/dir`"
        )
    path = Path(pretrained).expanduser()
    tag_cfg: dict[str, Any] = {}
    if not path.is_file():
        cached = cached_open_clip_weights(name, pretrained)
        if cached is None:
            raise FileNotFoundError(
                f"pretrained {pretrained!r} (the weights given for {label}) is "
                f"{'a folder, not a checkpoint file,' if path.is_dir() else 'not a local file,'} nor a pretrained "
                f"tag whose weights are in the local cache ({hf_hub_cache()} or {clip_url_cache()}); downloading "
                "them would need the network, which this package never does. Download the checkpoint elsewhere and "
                f"give its path as pretrained (--pretrained FILE, or load_backbone({label!r}, pretrained=FILE))"
            )
        path, tag_cfg = cached
        if bool(tag_cfg.get("quick_gelu", False)) != bool(model_cfg.get("quick_gelu", False)):
            logger.warning("open_clip %s: the %r weights were trained with quick_gelu=%s but the architecture has "
                           "quick_gelu=%s; use the matching name (e.g. %s-quickgelu)", name, pretrained,
                           tag_cfg.get("quick_gelu", False), model_cfg.get("quick_gelu", False), name)
    tokenizer = open_clip_tokenizer(model_cfg, None, label, architecture=name)
    with offline():
        try:
            model = open_clip.create_model(name, pretrained=str(path), device=device, weights_only=True)
        except (RuntimeError, KeyError, ValueError, AssertionError) as e:   # (open_clip asserts on some shapes)
            if "TorchScript" in str(e):   # OpenAI's own archives (what clip.load writes to ~/.cache/clip)
                raise ValueError(
                    f"{path} is a TorchScript archive (OpenAI's clip.load format), which this package does not "
                    f"execute; pass a state-dict checkpoint: the {name} weights from open_clip's Hugging Face "
                    "cache, or save the state_dict of open_clip.load_openai_model(path, jit=False)"
                ) from e
            raise ValueError(
                f"could not load {path} as open_clip {name} weights: {e}. Check that the checkpoint was "
                f"made for {name} (open_clip.list_pretrained() shows which names go with which checkpoints)"
            ) from e
        except (pickle.UnpicklingError, EOFError) as e:   # (torch.load's: torch's own advice is weights_only=False)
            why = str(e).partition("WeightsUnpickler error:")[2].strip().split("\n")[0] or str(e).split("\n")[0]
            raise ValueError(
                f"the pretrained weights file {path} given for {label} is not a weights-only PyTorch checkpoint "
                f"({type(e).__name__}"
                f"{': ' + why if why else ': it ends early'}): "
                "it is empty, truncated or not a checkpoint, or it pickles objects besides tensors (a training "
                "checkpoint's optimizer state or arguments), which this package does not unpickle. Re-download it, "
                "or save the model's state_dict alone from a copy you trust: torch.save(checkpoint['state_dict'], path)"
            ) from e
    model.eval()
    pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    pp.update({k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg})
    return _wrap(model, model_cfg, pp, tokenizer, label)
