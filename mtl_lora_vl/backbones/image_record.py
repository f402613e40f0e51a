"""How a model's images are read, recorded on the model itself: ``save_adapter`` writes it (``base.image_reading``,
``base.image_max_pixels``), ``load_adapter`` puts an adapter's on a bare model, a backbone built on that model reads
images so, and the exports fit the merged processor to it. ``base.image_min_pixels`` beside it marks a record of the
area the images were read within (the effective one); without it (adapters saved before), ``image_max_pixels`` is the
area asked for, which the loading processor's own ``max_pixels`` still bounds.

One typed record per model (:class:`ImageRecord`), set by the backbones that read images more than one way
(:mod:`.image_reading`) or within an area cap (:mod:`.qwen2_vl`), and by ``load_adapter``. What a loaded adapter set
is marked so, and ``unload`` takes it off again (:func:`forget_loaded`); what a backbone set stays. A family's whole
model shares its record with its inner multimodal model (``model.model``), so an adapter loaded onto that inner model
alone is checked against the backbone's reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..families import find_family, inner_family

__all__ = ["DEFAULT_MAX_PIXELS", "ImageRecord", "forget_loaded", "image_record", "set_area", "set_reading"]

_ATTR = "_mtl_image_record"
#: The area a capped reading that records no ``max_pixels`` reads within (Qwen2-VL's loader: ``preferred_side``²).
DEFAULT_MAX_PIXELS = 448 * 448


@dataclass
class ImageRecord:
    """``reading``: "native" (each image at its own aspect, as the processor reads it) or "square" (squashed to one
    square); None where nothing chose. ``capped``: images are read within an area cap (Qwen2-VL's loader), of
    ``max_pixels`` pixels asked for (None: the default, :data:`DEFAULT_MAX_PIXELS`; :attr:`area` says which).
    ``bounds``: the ``(min_pixels, max_pixels)`` images are read within, the asked area bounded by the processor's
    own (None: not known, an adapter saved before they were recorded). ``loaded``: the fields ("reading", "area") a
    loaded adapter set on a bare model."""

    reading: str | None = None
    capped: bool = False
    max_pixels: int | None = None
    bounds: tuple[int, int] | None = None
    loaded: set[str] = field(default_factory=set)

    @property
    def area(self) -> int:
        """The area cap in pixels where ``capped``: the bounds' maximum where known, else ``max_pixels``, else
        :data:`DEFAULT_MAX_PIXELS`."""
        return self.bounds[1] if self.bounds else self.max_pixels or DEFAULT_MAX_PIXELS


def image_record(model: nn.Module) -> ImageRecord:
    """``model``'s record, a family's whole model's its inner multimodal model's where it has none (an adapter loaded
    onto that inner model alone: a backbone built on the whole reads its area); an empty one, not stored, where
    nothing set it."""
    inner = _inner(model)
    return model.__dict__.get(_ATTR) or (inner.__dict__.get(_ATTR) if inner is not None else None) or ImageRecord()


def _inner(model: nn.Module) -> nn.Module | None:
    """The inner multimodal model (``model.model``) of ``model``, a family's whole model; else None."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and find_family(model) and inner_family(inner) else None


def _stored(model: nn.Module) -> ImageRecord:
    """``model``'s record, made where none is; a family's whole model shares it with its inner multimodal model (the
    inner model's own, a loaded adapter's, taken where the whole has none)."""
    inner = _inner(model)
    rec = model.__dict__.get(_ATTR) or (inner.__dict__.get(_ATTR) if inner is not None else None) or ImageRecord()
    for m in (model, inner) if inner is not None else (model,):
        m.__dict__[_ATTR] = rec
    return rec


def set_reading(model: nn.Module, reading: str, loaded: bool = False) -> None:
    """Record that ``model``'s images are read ``reading`` ("native" / "square"); ``loaded``: as a loaded adapter's."""
    rec = _stored(model)
    rec.reading = reading
    (rec.loaded.add if loaded else rec.loaded.discard)("reading")


def set_area(model: nn.Module, max_pixels: int | None, loaded: bool = False,
             bounds: tuple[int, int] | None = None) -> None:
    """Record that ``model``'s images are read within ``max_pixels`` asked for (None: the default cap), ``bounds``
    the ``(min_pixels, max_pixels)`` they are read within where known; ``loaded``: as a loaded adapter's."""
    rec = _stored(model)
    rec.capped, rec.max_pixels, rec.bounds = True, max_pixels, bounds
    (rec.loaded.add if loaded else rec.loaded.discard)("area")


def forget_loaded(model: nn.Module) -> None:
    """Take off what a loaded adapter set (``unload`` without a task: the base as it was)."""
    rec = model.__dict__.get(_ATTR)
    if rec is None:
        return
    if "reading" in rec.loaded:
        rec.reading = None
    if "area" in rec.loaded:
        rec.capped, rec.max_pixels, rec.bounds = False, None, None
    rec.loaded.clear()
