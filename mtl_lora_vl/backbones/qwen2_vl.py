"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``) from a
local directory: the language-model API of :mod:`.hf_vlm` on the family's own image input and positions.

* **Images at their own aspect.** The loader resizes each image as the Qwen image processor does
  (``smart_resize``: each side a multiple of patch x merge, the aspect kept as nearly as that allows, the
  processor's resampling filter), with the area within the processor's ``min_pixels`` / ``max_pixels``, capped at
  448² (:func:`pixel_bounds`: the released processors allow 12.8 M pixels): a ``native``
  :class:`~mtl_lora_vl.data.resize.ImageResize`. Its nominal side ``S`` (448 for the released models, 256 image
  tokens; the largest such square within a smaller ``max_pixels``) is ``image_size``. A batch's images
  share one canvas, each at its top left with its ``(h, w)`` in ``image_sizes``; on the device each image is
  cut into the patches the processor makes (:func:`patchify`: ``(h/P · w/P, 3·T·P·P)``, in merge order) with
  its ``image_grid_thw`` row ``[1, h/P, w/P]``, and its prompt holds ``h/P · w/P / merge²`` image tokens. A
  merged export's processor files get the same bounds (:meth:`Qwen2VLBackbone.fit_processor_files`). A row may
  hold several images (NLVR2's pair, each at its own size; :mod:`mtl_lora_vl.adapters.packed` routes the packed
  tower's images, of any sizes and any number per row, by their own patches).
* **Prompts.** ``image_token`` is ``<|image_pad|>``; the collator expands it to ``<|vision_start|>``, the
  row's image tokens and ``<|vision_end|>``.
* **Positions.** M-RoPE: every forward gets ``mm_token_type_ids`` (1 on image tokens), so the model numbers
  the image tokens by their (t, h, w) place; scoring candidates from the KV cache numbers the candidate
  tokens as text after the prompt, shifted by the prompt's ``rope_deltas`` (one 1-D numbering would be
  silently wrong after an image).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..data.resize import ImageResize, size_fields
from ..log import warn_user
from .base import BackboneError, register_backbone
from .hf_processor import edit_image_processor_files
from .hf_vlm import HFVLMBackbone
from .image_record import DEFAULT_MAX_PIXELS, image_record, set_area

__all__ = ["Qwen2VLBackbone", "patchify", "pixel_bounds", "qwen_image_side"]


def patchify(images: Tensor, patch: int, merge: int, temporal: int) -> Tensor:
    """Normalised images ``(B, C, H, W)`` -> ``(B·(H/P)·(W/P), C·T·P·P)`` patches as the Qwen2-VL image
    processor lays them out (each image repeated ``temporal`` times in time, patches of each ``merge x merge``
    group together, image after image)."""
    B, C, H, W = images.shape
    gh, gw = H // patch, W // patch
    x = images.reshape(B, C, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)   # B, h/m, w/m, m, m, C, P, P
    x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, temporal, -1, -1)
    return x.reshape(B * gh * gw, C * temporal * patch * patch)


def qwen_image_side(factor: int, min_pixels: int | None, max_pixels: int | None, preferred: int = 448) -> int:
    """The square side nearest ``preferred`` that is a multiple of ``factor`` (patch x merge) and whose area lies
    within ``[min_pixels, max_pixels]``, the image processor's bounds (so it keeps such an image as it is)."""
    side = max(factor, round(preferred / factor) * factor)
    if max_pixels:
        while side > factor and side * side > max_pixels:
            side -= factor
    if min_pixels:
        while side * side < min_pixels:
            side += factor
    return side


@register_backbone("qwen2_vl")
class Qwen2VLBackbone(HFVLMBackbone):
    """``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration`` (see the module doc)."""

    preferred_side: ClassVar[int] = math.isqrt(DEFAULT_MAX_PIXELS)   # 448: the default area cap's side

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def _image_side(cls, config: Any, image_processor: Any, name: str) -> int:
        """The nominal square side (the image-token count of a square image; sizes of the prompts' budget)."""
        patch, merge, _ = _vision_geometry(config)
        size = size_fields(getattr(image_processor, "size", None))
        low = getattr(image_processor, "min_pixels", None) or size.get("shortest_edge")
        high = getattr(image_processor, "max_pixels", None) or size.get("longest_edge")
        side = qwen_image_side(patch * merge, low, high, cls.preferred_side)
        if high and side * side > high:
            raise BackboneError(f"{name}: the image processor's max_pixels ({high}) is below one {patch * merge}-pixel "
                                "merged patch; save the processor with a larger max_pixels")
        return side

    @classmethod
    def _image_tokens(cls, model: nn.Module, image_size: int) -> int:
        patch, merge, _ = _vision_geometry(model.config)
        return (image_size // patch) ** 2 // merge ** 2

    @classmethod
    def _image_resize(cls, config: Any, image_size: int, image_processor: Any, label: str) -> ImageResize:
        """The processor's ``smart_resize`` (each image at its own aspect) within its ``[min_pixels, max_pixels]``,
        the area capped at ``preferred_side²`` (:func:`pixel_bounds`), with its resampling filter."""
        filter_ = ImageResize.from_hf(image_size, {"resample": getattr(image_processor, "resample", None)}, label)
        patch, merge, _ = _vision_geometry(config)
        return _native_resize(image_size, patch * merge, *pixel_bounds(image_processor), filter_.interpolation)

    @classmethod
    def _image_wrap(cls, config: Any, processor: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        start, end = (getattr(config, k, None) for k in ("vision_start_token_id", "vision_end_token_id"))
        if start is None or end is None:
            raise BackboneError(f"{type(config).__name__} names no vision_start_token_id / vision_end_token_id")
        return (int(start),), (int(end),)

    @classmethod
    def from_model(cls, model: nn.Module, processor: Any, name: str = "hf:custom") -> Qwen2VLBackbone:
        """As :meth:`HFVLMBackbone.from_model`, with the image-token count of :meth:`_nominal_tokens`, within the
        image area an adapter loaded onto the bare model records."""
        bb = super().from_model(model, processor, name)
        bb.num_image_tokens = bb._nominal_tokens()
        record = image_record(model)   # (a loaded adapter's, on a bare model)
        area, bounds = record.max_pixels, record.bounds
        unit = bb._token_side()
        # the default cap, as read (load_adapter tells a backbone's model by it)
        set_area(model, None, bounds=(min(bb.resize.min_pixels or unit * unit, bb.resize.budget), bb.resize.budget))
        if bounds:
            bb.read_within(*bounds)
        elif area:
            bb.limit_pixels(area, recorded=True)
        return bb

    def _nominal_tokens(self) -> int:
        """The image-token count the prompts' length checks use: the nominal square's, or the area's whole tokens
        where a wide image fills more (a ``max_pixels`` that is not the square of a multiple of patch x merge)."""
        patch, merge, _ = _vision_geometry(self.model.config)
        return max((self.image_size // patch) ** 2 // merge ** 2, self.resize.budget // (patch * merge) ** 2)

    def limit_pixels(self, max_pixels: int, recorded: bool = False) -> None:
        """Resize images within ``max_pixels`` (still within the processor's own ``max_pixels``) instead of the
        448² cap (``--image-max-pixels``: more image tokens per image, a GPU run's choice); the nominal side and
        image-token count follow. ``recorded``: ``max_pixels`` is an adapter's ``base.image_max_pixels`` (one saved
        before the area read was recorded), not an area the user gave."""
        patch, merge, _ = _vision_geometry(self.model.config)
        unit = patch * merge
        if max_pixels < unit * unit:
            raise BackboneError(f"{self.name}: image_max_pixels {max_pixels} is below one {unit}x{unit} merged patch "
                                f"({unit * unit} pixels); give at least that")
        low, high = pixel_bounds(self.hf_processor.image_processor, max_pixels)
        if high < max_pixels and recorded:   # (the training processor's own max_pixels is not in the record)
            warn_user(f"{self.name}: the adapter was trained reading images within {max_pixels} pixels asked for "
                      f"(base.image_max_pixels; bounded by that run's processor, which it does not record), and this "
                      f"processor allows {high} (its max_pixels), so images are read within {high} pixels: fewer "
                      "than in training if its processor allowed more. Load the adapter on the processor it was "
                      "trained with, or raise this one's max_pixels (preprocessor_config.json) to that one's")
        elif high < max_pixels:   # (an adapter records the area read: this one)
            warn_user(f"{self.name}: image_max_pixels {max_pixels} is above its processor's own max_pixels {high}; "
                      f"images are read within {high} pixels, the area an adapter records. Give --image-max-pixels "
                      f"{high} or less, or raise the processor's max_pixels (preprocessor_config.json)")
        self.read_within(min(low or unit * unit, high), high, asked=max_pixels)

    def read_within(self, min_pixels: int, max_pixels: int, asked: int | None = None) -> None:
        """Resize images within exactly ``[min_pixels, max_pixels]`` whatever the processor allows (an adapter's
        recorded area, ``base.image_min_pixels`` / ``base.image_max_pixels``); ``asked``: the
        ``--image-max-pixels`` they came from (:meth:`limit_pixels`), default ``max_pixels``."""
        unit = self._token_side()
        if max_pixels < unit * unit or not 1 <= min_pixels <= max_pixels:
            raise BackboneError(f"{self.name}: an image area of {min_pixels} to {max_pixels} pixels is empty or below "
                                f"one {unit}x{unit} merged patch ({unit * unit} pixels); give a maximum of at least "
                                "that and a minimum no larger than it")
        side = qwen_image_side(unit, min_pixels, max_pixels, math.isqrt(max_pixels))
        self.image_size = side
        self.resize = _native_resize(side, unit, min_pixels, max_pixels, self.resize.interpolation)
        self.num_image_tokens = self._nominal_tokens()
        self._collators.clear()   # their layouts hold the image-token count
        # what save_adapter records, and save_merged's cap for the merged processor (io/exports.py)
        set_area(self.model, asked or max_pixels, bounds=(min_pixels, max_pixels))

    @classmethod
    def fit_processor_files(cls, folder: Path, max_pixels: int | None = None, reading: str | None = None,
                            min_pixels: int | None = None, shown_as: Path | None = None) -> None:
        """The processor reads within the area the adapter's images were read within: with ``min_pixels`` (a
        record's ``(min_pixels, max_pixels)``), exactly those, whatever the source processor allowed; without (an
        area asked for, ``image_max_pixels``) its ``max_pixels`` capped as the loader caps it (:func:`pixel_bounds`):
        a model merged from a task trained on images of at most 448² was otherwise fed released processors'
        12.8 M-pixel images (a 1080p photo: 2,691 image tokens where training used 252)."""
        def cap(fields: dict) -> None:
            size = fields.get("size") if isinstance(fields.get("size"), dict) else {}
            if min_pixels:   # (min_pixels / max_pixels override size in transformers; both written, to agree)
                for holder, key, n in ((fields, "min_pixels", min_pixels), (fields, "max_pixels", max_pixels),
                                       (size, "shortest_edge", min_pixels), (size, "longest_edge", max_pixels)):
                    if holder is fields or key in holder:
                        holder[key] = int(n)
                return
            _, high = pixel_bounds(fields, max_pixels or cls.preferred_side ** 2)
            if "longest_edge" in size:
                size["longest_edge"] = min(int(size["longest_edge"]), high)
            # written even where the file has none: the processor's default (28·28·1280 pixels) is not the cap
            fields["max_pixels"] = min(int(fields.get("max_pixels") or high), high)
            for holder, key in ((fields, "min_pixels"), (size, "shortest_edge")):   # a cap below the minimum
                if holder.get(key):
                    holder[key] = min(int(holder[key]), high)

        if min_pixels and not (max_pixels and 1 <= min_pixels <= max_pixels):
            raise ValueError(f"fit_processor_files: an image area of {min_pixels} to {max_pixels} pixels is empty; "
                             "give a max_pixels at least min_pixels")
        edit_image_processor_files(folder, cap)

    @classmethod
    def processor_area(cls, folder: Path) -> tuple[int, int] | None:
        """The ``(min_pixels, max_pixels)`` the image processor in ``folder`` reads within as transformers loads it
        (``min_pixels`` / ``max_pixels`` in its files, else ``size``, else transformers' defaults; uncapped); None
        where that is not known: no readable image processor, or one that reads without a bound."""
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        except Exception:  # noqa: BLE001 - no processor files, or unreadable ones: not known
            return None
        low, high = pixel_bounds(processor, cap=sys.maxsize)
        return (int(low), int(high)) if low and high != sys.maxsize else None

    # ------------------------------------------------------------------------------------------ inputs
    def _token_side(self) -> int:
        patch, merge, _ = _vision_geometry(self.model.config)
        return patch * merge if self.resize.native else 0

    def _vision_inputs(self, pixel_values: Tensor, image_sizes: list[tuple[int, int]] | None = None
                       ) -> dict[str, Tensor]:
        """Each image's patches, image after image, and its grid (see the module doc); ``image_sizes`` None: every
        image fills the batch's ``(H, W)``."""
        patch, merge, temporal = _vision_geometry(self.model.config)
        unit = patch * merge
        if pixel_values.dim() != 4:
            raise ValueError(f"{self.name}: expected images (B, 3, H, W), got {tuple(pixel_values.shape)}")
        sizes = self._sizes_of(pixel_values, image_sizes)
        odd = [s for s in sizes if s[0] % unit or s[1] % unit]
        if odd:
            raise ValueError(f"{self.name}: expected images whose sides are multiples of {unit} (patch {patch} x merge "
                             f"{merge}), got {odd[0][0]}x{odd[0][1]} in {tuple(pixel_values.shape)}; resize them with "
                             "backbone.resize (the loader does)")
        # (non_blocking: torch.tensor(grid, device=...) copies with a stream synchronise, a wait for the device)
        grid = torch.tensor(self._host_vision(pixel_values, sizes)["image_grid_thw"]).to(pixel_values.device,
                                                                                     non_blocking=True)
        if len(set(sizes)) == 1:   # one size: one reshape for the batch
            h, w = sizes[0]
            return {"pixel_values": patchify(pixel_values[..., :h, :w], patch, merge, temporal), "image_grid_thw": grid}
        parts = [patchify(x[None, :, :h, :w], patch, merge, temporal) for x, (h, w) in zip(pixel_values, sizes)]
        return {"pixel_values": torch.cat(parts), "image_grid_thw": grid}

    def _host_vision(self, pixel_values: Tensor, image_sizes: list[tuple[int, int]] | None = None
                     ) -> dict[str, list]:
        """Each image's ``image_grid_thw`` row on the host, ``[1, h/P, w/P]`` (the packed tower's hook takes it)."""
        patch = _vision_geometry(self.model.config)[0]
        return {"image_grid_thw": [[1, h // patch, w // patch] for h, w in self._sizes_of(pixel_values, image_sizes)]}

    def _extra_inputs(self, input_ids: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        """``mm_token_type_ids``: 1 on image tokens (the model's M-RoPE numbers them by their place in the image)."""
        return {"mm_token_type_ids": (input_ids == self.image_token_id).int()}

    def _prefill_positions(self, mask: Tensor) -> Tensor | None:
        return None   # the model's M-RoPE positions (it keeps each row's rope_deltas for the steps after)

    def _step_positions(self, step_mask: Tensor, prompt_len: int, k: int) -> Tensor:
        deltas = getattr(self.model.model, "rope_deltas", None)
        if deltas is None:
            raise RuntimeError(f"{self.name}: the prompts' prefill left no rope_deltas on the model")
        text = super()._step_positions(step_mask, prompt_len, k) + deltas.to(step_mask.device).repeat_interleave(k, 0)
        return text.unsqueeze(0).expand(3, -1, -1)


def pixel_bounds(image_processor: Any, cap: int = Qwen2VLBackbone.preferred_side ** 2) -> tuple[int | None, int]:
    """``(min_pixels, max_pixels)`` the loader resizes within: the image processor's (``min_pixels`` /
    ``max_pixels``, or ``size["shortest_edge"]`` / ``size["longest_edge"]``), the area capped at ``cap`` (448²
    unless ``image_max_pixels`` says otherwise: the released processors allow 12.8 M pixels, 16,384 image tokens,
    more than a training batch affords)."""
    get = image_processor.get if isinstance(image_processor, dict) else lambda k: getattr(image_processor, k, None)
    size = size_fields(get("size"))
    low = get("min_pixels") or size.get("shortest_edge")
    high = get("max_pixels") or size.get("longest_edge")
    return (int(low) if low else None), (min(int(high), cap) if high else cap)


def _native_resize(side: int, unit: int, low: int | None, high: int, interpolation: str) -> ImageResize:
    """The loader's resize: each image at its own aspect, sides multiples of ``unit``, area in ``[low, high]``."""
    return ImageResize(side, mode="native", interpolation=interpolation, factor=unit,
                       min_pixels=min(low, high) if low else None, max_pixels=high)


def _vision_geometry(config: Any) -> tuple[int, int, int]:
    """(patch size, spatial merge size, temporal patch size) of the vision tower."""
    vis = config.vision_config
    return int(vis.patch_size), int(vis.spatial_merge_size), int(getattr(vis, "temporal_patch_size", 2))
