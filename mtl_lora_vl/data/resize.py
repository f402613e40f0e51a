"""How an image of any shape becomes a model's input: the resize modes of open_clip and of Hugging Face
image processors, done on PIL images in the loader workers.

A model is only right on the pixels it was trained on: CLIP and LLaVA resize the shorter side and crop
the centre, SigLIP and PaliGemma squash the whole image to the square, open_clip's ``longest`` mode
fits the longer side and pads, and Qwen2-VL takes each image at its own aspect (``native``: both sides
rounded to a multiple of its patch grid, the area kept within bounds). :class:`ImageResize` names one of
these; a backbone carries the one its checkpoint declares (open_clip's ``preprocess_cfg``, a Hugging Face
``preprocessor_config.json``), and :func:`resize_to_square` applies it with the same arithmetic as
``open_clip.image_transform`` (sizes floored, crops and pads centred as torchvision does) and, for
``native``, as the Qwen2-VL image processor's ``smart_resize``. ``anyres`` (LLaVA-NeXT, LLaVA-OneVision) makes
the processor's views of the image at its own aspect (:mod:`mtl_lora_vl.data.anyres`; Idefics3 / SmolVLM's
crops and global image: :mod:`mtl_lora_vl.data.splits`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .anyres import AnyresGeometry
from .splits import SplitGeometry

RESIZE_MODES = ("shortest", "longest", "squash", "native", "anyres")
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_PIL_NAMES = {int(v): k for k, v in INTERPOLATIONS.items()}  # Hugging Face's `resample` is PIL's number


def check_float_images(images: Any, what: str) -> None:
    """Refuse integer images (uint8 pixels) where normalised float ones go: a tower casts them to its dtype and reads
    0..255 as normalised values (a LLaVA-style model generated and scored from them without a word)."""
    if isinstance(images, torch.Tensor) and not images.is_floating_point():
        raise ValueError(f"{what}: images must be normalised float images, got dtype {images.dtype}; give uint8 "
                         "images to backbone.preprocess_uint8 first (it resizes, scales and normalises them)")


@dataclass(frozen=True)
class ImageResize:
    """``size``: the square side the model takes. ``mode``: ``"shortest"`` resizes the shorter side to
    ``resize_to`` (default ``size``) and crops the centre; ``"longest"`` resizes the longer side to
    ``size`` and pads the rest with black; ``"squash"`` resizes both sides to ``size``, aspect not kept;
    ``"native"`` keeps the image's aspect: both sides rounded to a multiple of ``factor`` and the area
    brought within ``[min_pixels, max_pixels]`` (default ``max_pixels``: ``size²``, the square's budget), as
    the Qwen2-VL image processor's ``smart_resize`` computes (it also refuses an aspect ratio over 200), with no
    crop (images of one batch then differ in size); with ``longest``, as the Pixtral image processor does instead:
    shrunk (never enlarged) to fit a ``size`` square, aspect kept, sides floored, then each rounded up to ``factor``.
    ``interpolation``: one of :data:`INTERPOLATIONS`. ``floor_crop``: the centre crop starts at
    ``(side - size) // 2``, as Hugging Face image processors crop; otherwise rounded, as torchvision's
    ``center_crop`` (open_clip) does -- the two differ by one pixel when the difference is 3 mod 4.
    ``pad_square``: an RGB fill; the image is first padded to a square of its longer side with it, centred
    (LLaVA-1.5's "pad" aspect mode: ``LlavaImageProcessor(do_pad=True)`` fills with the image mean).
    ``alpha``: a transparent image composited on white (``"white"``, as Hugging Face processors convert it) or its
    stored colours kept (``"drop"``: ``convert("RGB")``, as open_clip's training loader does; its
    ``image_transform`` converts after resizing, when Pillow has turned transparent pixels black)."""

    size: int
    mode: str = "shortest"
    interpolation: str = "bicubic"
    resize_to: int | None = None
    floor_crop: bool = False
    pad_square: tuple[int, int, int] | None = None
    alpha: str = "white"   # "white": composite on white (Hugging Face); "drop": convert("RGB") (open_clip)
    factor: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    anyres: AnyresGeometry | SplitGeometry | None = None
    longest: bool = False   # native: Pixtral's fit of the longest side (no area bounds)

    def __post_init__(self) -> None:
        for name in ("size", "resize_to", "factor", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is None and name != "size":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ImageResize: {name} must be a positive int, got {value!r}")
        if self.alpha not in ("white", "drop"):
            raise ValueError(f"ImageResize: alpha must be 'white' (transparency composited on white, as Hugging Face "
                             f"processors do) or 'drop' (convert('RGB'), as open_clip does), got {self.alpha!r}")
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"ImageResize: unknown resize mode {self.mode!r}; known: {list(RESIZE_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"ImageResize: unknown interpolation {self.interpolation!r}; "
                             f"known: {list(INTERPOLATIONS)}")
        if self.resize_to is not None and self.mode != "shortest":
            raise ValueError(f"ImageResize: resize_to applies to mode 'shortest' only, not {self.mode!r}")
        if (self.mode == "anyres") != (self.anyres is not None):
            raise ValueError("ImageResize: mode 'anyres' needs anyres (the model's AnyresGeometry or SplitGeometry), "
                             "and only it")
        native = (self.factor, self.min_pixels, self.max_pixels)
        if self.mode == "native":
            if self.factor is None or self.pad_square is not None:
                raise ValueError("ImageResize: mode 'native' needs factor (the side's multiple) and takes no "
                                 "pad_square")
            if self.min_pixels is not None and self.min_pixels > self.budget:
                raise ValueError(f"ImageResize: min_pixels {self.min_pixels} is above max_pixels {self.budget}")
            if self.budget < self.factor ** 2:
                raise ValueError(f"ImageResize: max_pixels {self.budget} is below one {self.factor}x{self.factor} "
                                 "block")
            if self.longest and (self.min_pixels is not None or self.max_pixels is not None):
                raise ValueError("ImageResize: longest (Pixtral's fit within the size square) takes no min_pixels / "
                                 "max_pixels")
        elif any(v is not None for v in native) or self.longest:
            raise ValueError(f"ImageResize: factor, min_pixels, max_pixels and longest apply to mode 'native' "
                             f"only, not {self.mode!r}")

    @property
    def native(self) -> bool:
        """Whether images keep their own aspect (and so their own size: a batch is not one square)."""
        return self.mode == "native"

    @property
    def keeps_size(self) -> bool:
        """Whether images reach the device at sizes of their own (``native``; ``anyres``: strips of views), not
        ``size`` squares."""
        return self.mode in ("native", "anyres")

    def checked(self, encode: Callable[[Any], Any], images: Any, what: str, name: str) -> Any:
        """``encode(images)`` for a ``(B, 3, H, W)`` batch; where it fails on images that are not ``size`` squares
        (and the mode does not keep sizes, :attr:`keeps_size`), a ValueError naming ``what`` took them, the size
        backbone ``name`` takes and the fix, with the tower's own error (a shape error deep inside, Hugging Face
        CLIP's ValueError, a timm trunk's AssertionError) at its end. A tower that takes other sizes (a
        convolutional trunk pools any) still gets them."""
        shape = tuple(images.shape)
        message = (f"{what} expects float images of shape (B, 3, {self.size}, {self.size}) for backbone {name!r}, "
                   f"got {shape}; give uint8 images of any size to backbone.preprocess_uint8 (it resizes them) or "
                   f"resize them to {self.size}x{self.size} yourself")
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(message)
        check_float_images(images, what)
        try:
            return encode(images)
        except (RuntimeError, ValueError, AssertionError) as e:
            oom = isinstance(e, torch.cuda.OutOfMemoryError)   # out of memory stays so (a caller may retry)
            if shape[2:] != (self.size, self.size) and not self.keeps_size and not oom:
                said = str(e).strip().splitlines()
                raise ValueError(f"{message} (the image tower said: {said[0] if said else type(e).__name__})") from e
            raise

    @property
    def budget(self) -> int:
        """The largest area a ``native`` resize makes (``max_pixels``, default ``size²``)."""
        return self.max_pixels if self.max_pixels is not None else self.size * self.size

    @classmethod
    def of(cls, value: ImageResize | int) -> ImageResize:
        """``value`` itself, or for a side ``S`` the default: shorter side to ``S``, centre crop, bicubic."""
        return value if isinstance(value, ImageResize) else cls(value)

    @property
    def draft_side(self) -> int | None:
        """A JPEG may be decoded at reduced scale as long as both sides stay at least this long (None: not at
        all; a ``native`` size is computed from the image's own sides, as the model's processor does)."""
        return None if self.keeps_size else max(self.size, self.resize_to or 0)

    def resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) of a ``w`` x ``h`` image after the resize, before the centre crop to ``size`` (``anyres``:
        its size inside its best pinpoint; Idefics3's splitting: after the longest-edge resize)."""
        if self.anyres is not None:
            return self.anyres.resized(w, h)
        if self.native and self.longest:   # PixtralImageProcessor's arithmetic, at least one factor block a side
            f, ratio = self.factor or 1, max(h / self.size, w / self.size)
            if ratio > 1:
                h, w = int(math.floor(h / ratio)), int(math.floor(w / ratio))
            return max(f, -(-w // f) * f), max(f, -(-h // f) * f)
        if self.native:
            from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

            # the processor's own arithmetic, with at least one factor x factor block (a side shorter than
            # factor / 2 would round to 0)
            f = self.factor or 1
            h, w = smart_resize(h, w, f, max(self.min_pixels or 0, f * f), self.budget)
            return w, h
        s = self.size
        if self.pad_square is not None:
            w = h = max(w, h)
        if self.mode == "squash":
            return s, s
        if self.mode == "shortest":
            short = self.resize_to or s
            if min(w, h) == short:
                return w, h
            # the longer side floored, as torchvision's Resize(int) and transformers do
            return (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        if max(w, h) == s:
            return w, h
        ratio = max(w / s, h / s)   # longest: open_clip's ResizeKeepRatio(longest=1) rounds
        return max(1, round(w / ratio)), max(1, round(h / ratio))

    @classmethod
    def from_open_clip(cls, size: int, preprocess_cfg: Mapping[str, Any]) -> ImageResize:
        """From an open_clip ``preprocess_cfg`` (``resize_mode``, ``interpolation``; open_clip's defaults
        ``shortest`` and ``bicubic``). Its ``random`` interpolation is a training augmentation; evaluation
        uses bicubic, and so does this."""
        interp = str(preprocess_cfg.get("interpolation", "bicubic"))
        return cls(size, mode=str(preprocess_cfg.get("resize_mode", "shortest")), alpha="drop",
                   interpolation="bicubic" if interp == "random" else interp)

    @classmethod
    def from_hf(cls, size: int, processor: Any, label: str = "image processor") -> ImageResize:
        """From a Hugging Face image processor (an object, or its ``preprocessor_config.json`` as a dict):
        ``size: {"shortest_edge": S}`` plus a centre crop is CLIP's, ``{"height": H, "width": W}`` without a
        crop is SigLIP's squash; ``resample`` picks the interpolation."""
        get = processor.get if isinstance(processor, Mapping) else lambda k, d=None: getattr(processor, k, d)
        interp = _interpolation_name(get("resample", None), label)
        side = size_fields(get("size", None))
        crop = bool(get("do_center_crop", False))
        kind = str(get("image_processor_type", None) or type(processor).__name__)
        pad = None   # LLaVA's pad-to-square (other processors' do_pad pads a batch to its largest image)
        if kind.startswith("LlavaImageProcessor") and get("do_pad", False):
            pad = tuple(int(x * 255) for x in (get("image_mean", None) or (0.0, 0.0, 0.0)))
        if get("do_resize", True) is False:   # (pictures of the model's size then read the same; others fail in it)
            if crop:   # a valid processor whose pictures this package would read otherwise
                raise ValueError(f"{label}: do_resize is false and do_center_crop true: the processor cuts each "
                                 f"picture's centre at its own scale (a 640x480 photo: its middle {size}x{size} "
                                 "pixels) where the loader resizes it first; save the processor with do_resize=true")
            return cls(size, interpolation=interp, floor_crop=True, pad_square=pad)
        if "shortest_edge" in side:
            cut = size_fields(get("crop_size", None))
            cut_hw = (cut.get("height", cut.get("shortest_edge")), cut.get("width", cut.get("shortest_edge")))
            if crop and cut_hw[0] is not None and (int(cut_hw[0]), int(cut_hw[1] or cut_hw[0])) != (size, size):
                # the model refuses the processor's own output; cropping the model's size instead would keep a part
                raise ValueError(f"{label}: crops {cut_hw[0]}x{cut_hw[1] or cut_hw[0]} after resizing, but the model "
                                 f"takes {size}x{size} images; save the processor with crop_size {size}")
            return cls(size, mode="shortest", interpolation=interp, resize_to=int(side["shortest_edge"]),
                       floor_crop=True, pad_square=pad)
        if "height" in side and "width" in side:   # resized to exactly H x W (aspect not kept), cropped or not
            if int(side["height"]) != int(side["width"]):
                raise ValueError(f"{label}: resizes to {side['height']}x{side['width']}; only square inputs are "
                                 "supported")
            if crop and int(side["height"]) != size:
                raise ValueError(f"{label}: squashes images to {side['height']}x{side['width']} and then crops "
                                 f"{size}x{size}; only a squash to the model's own size is supported")
            return cls(size, mode="squash", interpolation=interp, pad_square=pad)
        return cls(size, interpolation=interp, floor_crop=True, pad_square=pad)


def _interpolation_name(resample: Any, label: str) -> str:
    """A Hugging Face ``resample`` (PIL's number, or an enum of either kind) as a key of INTERPOLATIONS."""
    if resample is None:
        return "bicubic"
    if isinstance(resample, int) and int(resample) in _PIL_NAMES:   # int, PIL.Image.Resampling
        return _PIL_NAMES[int(resample)]
    value = getattr(resample, "value", resample)   # torchvision's InterpolationMode("bicubic")
    if isinstance(value, str) and value.lower() in INTERPOLATIONS:
        return value.lower()
    raise ValueError(f"{label}: resample={resample!r} is not a resampling filter this package knows "
                     f"({', '.join(f'{v}={k}' for v, k in sorted(_PIL_NAMES.items()))})")


def size_fields(side: Any) -> dict[str, Any]:
    """A processor's ``size`` (a dict, transformers 5's ``SizeDict`` dataclass, or an int) as a dict of
    its set fields."""
    if isinstance(side, Mapping):
        return {k: v for k, v in side.items() if v is not None}
    if dataclasses.is_dataclass(side) and not isinstance(side, type):
        return {k: v for k, v in dataclasses.asdict(side).items() if v is not None}
    if isinstance(side, int) and not isinstance(side, bool):
        return {"shortest_edge": side}
    return {}


def resize_to_square(img: Image.Image, resize: ImageResize) -> Image.Image:
    """``img`` (PIL) resized by ``resize`` to ``resize.size`` square (``native``: to its own size; not ``anyres``,
    whose views :func:`mtl_lora_vl.data.anyres.anyres_views` makes)."""
    import torchvision.transforms.v2.functional as TF

    if resize.anyres is not None:
        raise ValueError("resize_to_square: an anyres resize makes views (mtl_lora_vl.data.anyres.anyres_views)")

    s = resize.size
    if resize.pad_square is not None and img.size[0] != img.size[1]:
        w, h = img.size
        side = max(w, h)
        square = Image.new(img.mode, (side, side), resize.pad_square)
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        img = square
    new = resize.resized_size(*img.size)
    if new != img.size:
        img = img.resize(new, INTERPOLATIONS[resize.interpolation])
    if img.size == (s, s) or resize.native:
        return img
    if resize.floor_crop:   # Hugging Face: pad a short side (more after than before), then crop at (side - s) // 2
        w, h = img.size
        if w < s or h < s:
            pw, ph = max(s - w, 0), max(s - h, 0)
            img = TF.pad(img, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2])
            w, h = img.size
        left, top = (w - s) // 2, (h - s) // 2
        return img.crop((left, top, left + s, top + s))
    return TF.center_crop(img, [s, s])   # pads with black where smaller
