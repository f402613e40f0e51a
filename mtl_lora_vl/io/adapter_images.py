"""How an adapter's images were read, in its ``mtl_lora_config.json`` (``base.image_reading``,
``base.image_min_pixels`` / ``base.image_max_pixels``: the area they were read within; an adapter saved before the
minimum was recorded holds the maximum asked for, bounded by its processor's own, unknown here): written from the
model's :class:`~mtl_lora_vl.backbones.image_record.ImageRecord` by ``save_adapter``, checked when read, and put back
on a bare model (or a bare model's inner multimodal model, which a backbone built on the whole then reads) by
``load_adapter`` (a backbone's model that reads otherwise is warned about); and what a LoRA export's user gives the
base model's processor to read images so (:func:`image_note`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..adapters.attach import adapted_module, whole_model
from ..backbones import backbone_class
from ..backbones.image_reading import NativeImageReading
from ..backbones.image_record import DEFAULT_MAX_PIXELS, ImageRecord, image_record, set_area, set_reading
from ..families import family_named, find_family, inner_family
from ..log import warn_user
from .layout import AdapterFileError
from .source_files import hub_snapshot, loaded_from

__all__ = ["IMAGE_READINGS", "area_read", "check_image_fields", "image_note", "record_images", "recorded_bounds",
           "take_images"]

#: ``base.image_reading``: each image at its own aspect as the processor reads it, on one square
#: (``native_aspect(False)``), or as the model's own processor does (attached to a bare model, no backbone chose).
IMAGE_READINGS = ("native", "square", "processor")


def _processor_reading(family: str | None) -> str | None:
    """"processor" for a bare model of a family whose backbone can read images either way (its reading is its
    user's processor's); None for the rest, which read images one way."""
    fam = family_named(family) if family else None
    cls = backbone_class(fam.backbone) if fam is not None and fam.backbone else None
    return "processor" if cls is not None and issubclass(cls, NativeImageReading) else None


def written_family(model: nn.Module) -> tuple[nn.Module, str]:
    """The model a save or export of ``model`` is written from (:func:`whole_model`: the outer model of a family
    whose inner model was adapted on its own) and its family's name: the adapter's recorded family where that is
    the adapted module itself."""
    whole, inner = whole_model(model)[0], adapted_module(model)
    return whole, inner._mtl_lora.family if whole is inner else find_family(whole).name


def written_images(model: nn.Module) -> tuple[ImageRecord, str]:
    """How the images of the model a save or export is written from were read (the backbone records it on its
    model, the whole one where its inner model was adapted; else the adapted module's record), and its family."""
    whole, family = written_family(model)
    own, inner = image_record(whole), adapted_module(model)
    if own.reading or own.capped:
        return own, family
    fam = inner_family(inner) if whole is inner else None
    record = image_record(inner)
    if fam is not None and not (record.reading or record.capped):
        warn_user(f"a {type(inner).__name__} given alone, the inner model of a {fam.name} model: how a backbone read "
                  "its images (an image area, a reading) is recorded on the whole model and cannot be seen from this "
                  "one, so none is written, and the result reads images as its processor does; where a backbone "
                  "read them, pass the whole model (backbone.model: its adapter goes on the same inner model)")
    return record, family


def record_images(model: nn.Module, base: dict[str, Any]) -> None:
    """Add how ``model``'s images are read to ``base`` (a save's record), where the caller's ``base`` does not say
    (:func:`written_images`)."""
    record, family = written_images(model)
    reading = record.reading or _processor_reading(family)
    if reading and "image_reading" not in base:   # load_pretrained reads the adapter's images the same way
        base["image_reading"] = reading
    if record.bounds:   # the area read, whatever was asked for (the caller's image_max_pixels included)
        base["image_min_pixels"], base["image_max_pixels"] = (int(n) for n in record.bounds)
    elif record.max_pixels and "image_max_pixels" not in base:   # (an older adapter's, loaded on a bare model)
        base["image_max_pixels"] = int(record.max_pixels)


def recorded_bounds(base: dict[str, Any]) -> tuple[int, int] | None:
    """The ``(min_pixels, max_pixels)`` an adapter's images were read within (None: not recorded, an adapter saved
    before; its ``image_max_pixels`` is the area asked for)."""
    low, high = base.get("image_min_pixels"), base.get("image_max_pixels")
    return (int(low), int(high)) if low and high else None


def check_image_fields(base: dict[str, Any], cfg_file: Path) -> None:
    """Refuse a hand-edited ``base.image_min_pixels`` / ``base.image_max_pixels`` / ``base.image_reading`` naming the
    file and the field."""
    for key, what in (("image_max_pixels", "largest"), ("image_min_pixels", "smallest")):
        pixels = base.get(key)
        if pixels is not None and (not isinstance(pixels, int) or isinstance(pixels, bool) or pixels < 1):
            raise AdapterFileError(f"{cfg_file}: base.{key} must be a positive whole number (the {what} image area "
                                   f"the adapter was trained on), got {pixels!r}; fix the field or remove it")
    low, high = base.get("image_min_pixels"), base.get("image_max_pixels")
    if low is not None and (high is None or low > high):
        raise AdapterFileError(f"{cfg_file}: base.image_min_pixels {low} needs a base.image_max_pixels at least as "
                               f"large, got {high!r}; fix the fields or remove both")
    reading = base.get("image_reading")
    if reading is not None and reading not in IMAGE_READINGS:
        raise AdapterFileError(f"{cfg_file}: base.image_reading must be one of {list(IMAGE_READINGS)} (how the "
                               f"adapter's images were read), got {reading!r}; fix the field or remove it")


def take_images(model: nn.Module, base: dict[str, Any], path: Path) -> None:
    """After ``load_adapter``: a model no backbone set a reading (or Qwen2-VL's image area) on takes the recorded one
    (a save keeps it, a merged export's processor follows it, a backbone built on it -- on the whole model, where
    this is a family's inner model -- reads so); a backbone's model that reads otherwise is warned about."""
    recorded, area, bounds = base.get("image_reading"), base.get("image_max_pixels"), recorded_bounds(base)
    own = image_record(model)   # (a backbone's inner model: the backbone's, shared with its whole model)
    default = DEFAULT_MAX_PIXELS   # (a backbone's area without image_max_pixels)
    if not own.capped:   # (a Qwen2-VL backbone's model is capped; max_pixels None: the default)
        if area:
            set_area(model, area, loaded=True, bounds=bounds)
    elif bounds and own.bounds:
        if tuple(own.bounds) != bounds:
            warn_user(f"{path}: the adapter's images were read within {bounds[0]} to {bounds[1]} pixels "
                      f"(base.image_min_pixels / base.image_max_pixels), and this model's backbone reads them within "
                      f"{own.bounds[0]} to {own.bounds[1]}; call backbone.read_within({bounds[0]}, {bounds[1]}) "
                      "(load_pretrained does: it reads the recorded area on any processor), or load the backbone "
                      f"with image_max_pixels={bounds[1]} where its processor's own min_pixels is {bounds[0]} and "
                      f"its max_pixels at least {bounds[1]}")
    elif (own.max_pixels or default) != (area or default):   # (448² given or left out: the same)
        theirs, mine = (f"{n} pixels" if n else f"the default {default}" for n in (area, own.max_pixels))
        fix = f"with image_max_pixels={area}" if area else "without image_max_pixels"
        warn_user(f"{path}: the adapter's images were read within {theirs} (base.image_max_pixels), and this model's "
                  f"backbone reads them within {mine}; load the backbone {fix} (load_pretrained does)")
    if recorded not in ("native", "square"):
        return
    if own.reading is None:
        set_reading(model, recorded, loaded=True)
    elif own.reading != recorded:
        how = "at their own aspect" if recorded == "native" else "on one square"
        warn_user(f"{path}: the adapter's images were read {how}, and this model's backbone reads them otherwise; "
                  f"call backbone.native_aspect({recorded == 'native'}) (load_pretrained does)")


#: What a square-read adapter's LoRA user does with the base model's processor, per family that can read so.
_SQUARE_PROCESSOR = {
    "idefics3": "load the base model's processor with do_image_splitting=False (Idefics3 / SmolVLM)",
    **{family: f"{name}'s processor reads pictures at their own aspect only, not as the tasks were trained"
       for family, name in (("llava_next", "LLaVA-NeXT"), ("llava_onevision", "LLaVA-OneVision"),
                            ("mistral3", "Mistral 3 (Pixtral)"))},
}


def area_read(record: ImageRecord) -> int | None:
    """The largest image area ``record``'s images were read within (asked for, for an adapter saved before)."""
    return record.bounds[1] if record.bounds else record.max_pixels


def image_note(model: nn.Module) -> str:
    """What a LoRA's user gives the base model's processor so that it reads images as the adapter's were read
    ("": as its processor does, also where the processor of the folder the model was loaded from already reads the
    area: :func:`_processor_area`)."""
    record, family = written_images(model)
    if record.reading == "square":
        how = _SQUARE_PROCESSOR.get(family, "its processor reads pictures otherwise than the tasks were trained")
        return f"\nThe adapter's images were read on one square (backbone.native_aspect(False)): {how}.\n"
    own = _processor_area(model) if record.capped else None
    if record.capped and record.bounds:   # (Qwen2-VL: the area read, whatever the base's processor allows)
        low, high = record.bounds
        if own == (low, high):
            return ""
        return (f"\nThe adapter's images were read within {low} to {high} pixels: load the base model's processor "
                f"with min_pixels={low}, max_pixels={high} (size={{'shortest_edge': {low}, 'longest_edge': {high}}}), "
                "whatever its own files say (the released processors allow 3136 to 12.8 M pixels), so that it reads "
                "pictures at the sizes the tasks were trained on.\n")
    if record.capped:   # (an adapter saved before the area read was recorded: the cap asked for)
        area = record.area
        if own is not None and own[1] <= area:   # (its own max_pixels, where lower, is what bounded the reading)
            return ""
        return (f"\nThe adapter's images were read within {area} pixels (or the processor's own max_pixels, where "
                f"lower): load the base model's processor with max_pixels={area} at most (the released processors "
                "allow 12.8 M, larger pictures than the tasks were trained on).\n")
    return ""


def _processor_area(model: nn.Module) -> tuple[int, int] | None:
    """The ``(min_pixels, max_pixels)`` the image processor of the folder the written model was loaded from reads
    within, as its family's backbone tells (``processor_area``: Qwen2-VL's); for a model loaded by hub id, of its
    snapshot in the local hub cache (:func:`~.source_files.hub_snapshot`). None where that is not known: a model
    built from a config, a hub id whose snapshot is not known for sure, a folder without a readable image processor,
    a family that tells none."""
    whole, family = written_family(model)
    fam = family_named(family)
    read = getattr(backbone_class(fam.backbone), "processor_area", None) if fam is not None and fam.backbone else None
    folder = (loaded_from(whole) or hub_snapshot(whole)) if read is not None else None
    return read(folder) if read is not None and folder is not None else None
