"""The family table: the one place that names model families and what the package knows of each.

A leaf module (it imports nothing from the package but its own functions, :mod:`.family_images` (which reads the
anyres families' per-image arithmetic from :mod:`.family_anyres`) and :mod:`.family_processors`, leaves too), so
adapters, backbones and exports can all read it without import cycles. Everything else asks the table
(``find_family``, ``family_named``, ``peft_export``, ``merged_format``) instead of comparing family names.

A family's classes are written ``"package.prefix.ClassName"``: a model belongs to the family when a
class in its MRO has that name **and** lives in that module or below it. So ``open_clip.CLIP`` matches
``open_clip.model.CLIP`` (and would survive a move to ``open_clip.models.clip``), while a
``VisionTransformer`` from open_clip or torchvision is not taken for timm's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .family_images import (
    idefics3_row_images,
    image_token_rows,
    llava_next_row_tiles,
    llava_onevision_row_tiles,
    pixtral_image_rows,
    pixtral_keep_one_row,
    pixtral_row_images,
    qwen_image_rows,
    qwen_row_images,
)
from .family_processors import (
    gemma3_fields,
    idefics3_fields,
    llava_fields,
    llava_onevision_fields,
    paligemma_fields,
    pixtral_fields,
    qwen_fields,
)

__all__ = ["FAMILIES", "MERGED_CONFIG", "MERGED_WEIGHTS", "OPEN_CLIP_CONFIG", "Family", "family_named", "find_family",
           "merged_format", "peft_export"]

# Weights file of a merged checkpoint per non-Hugging-Face format ("hf" is a save_pretrained directory).
MERGED_WEIGHTS = {"open_clip": "open_clip_model.safetensors", "safetensors": "model.safetensors"}
# The config file of an open_clip local directory (what create_model("local-dir:...") reads).
OPEN_CLIP_CONFIG = "open_clip_config.json"
# The config file a merged directory of a format needs beside its weights file, to load (and where none: absent).
MERGED_CONFIG = {"open_clip": OPEN_CLIP_CONFIG}


@dataclass(frozen=True)
class Family:
    """A model family and what the package knows of it.

    * ``classes``: ``"module.prefix.ClassName"`` entries, matched anywhere in the MRO (see the module doc);
    * ``targets``: default adapter targets per tower (regexes over ``named_modules`` names);
    * ``packed_qkv``: regex of ``nn.Linear`` layers whose output is ``[q; k; v]``;
    * ``backbone``: registry key of the :class:`mtl_lora_vl.backbones.Backbone` class that wraps it, or
      None when no backbone class exists yet; ``no_backbone`` then says why and what to do instead;
    * ``peft_export``: ``export_lora`` writes PEFT LoRA by default (else the plain layout);
    * ``merged_format``: ``"hf"`` (``save_pretrained`` directory), ``"open_clip"`` or ``"safetensors"``
      (one state-dict file, named by :data:`MERGED_WEIGHTS`, in a merged export directory);
    * ``unused``: given a model, regexes of projections it computes but whose output it discards (LLaVA's
      vision layers after ``vision_feature_layer``): default targets leave them out, since their adapters
      would never get a gradient (which also stops DDP at its second step).
    * ``packed_tower``: regex of a module that packs every image's rows into one 2-D (rows, dim) sequence
      (Qwen2-VL's vision tower: each image's patches, image after image; Pixtral's: one (1, rows, dim) batch of one)
      instead of a batch dimension;
      adapters inside it read k rows per routed sample, and ``image_rows`` (given that module's forward
      ``args`` and ``kwargs``, and the module) says how many rows each image has, so that a mixed-task route is
      checked there;
    * ``row_images`` (given the model and its forward ``args`` and ``kwargs``) says how many images each input row
      holds (LLaVA-NeXT: how many tiles; None: the call encodes no image; a :class:`CountsOnly`: counts that cannot
      route images; a :class:`PerCall`: each tower call's own, Qwen2-VL's images then videos), so that under a
      mixed-task route each row's images take its task: the vision tower takes the images without the rows they
      belong to (one that takes an ``image_counts`` keyword gets each row's images where the caller knows them
      on the host: :func:`~mtl_lora_vl.adapters.row_images.host_image_counts`);
    * ``image_path``: regex of the modules that take the batch's images (vision tower, projector), routed image by
      image by those counts (``packed_tower`` routes its own);
    * ``image_views``: each image reaches the vision tower as several views (anyres: a base view and tiles), so the
      tower's batch is never one image per row (PEFT's per-row ``adapter_names`` cannot route it);
    * ``count_fields``: given its Hugging Face processor, the model's config and the image-token count the model
      fills, what to set in the processor so that it writes that many (a count mismatch's message says it);
    * ``mends``: ``(regex, forward hook)`` pairs mending a transformers bug in the modules the regex names (Mistral
      3's batch of one image token, :func:`~.family_images.pixtral_keep_one_row`), outputs the bug does not touch
      left as they are: ``attach`` installs each where it is missing (a backbone's stays), unload takes off its own.
    """

    name: str
    classes: tuple[str, ...]
    targets: dict[str, tuple[str, ...]]
    packed_qkv: str | None = None
    backbone: str | None = None
    no_backbone: str = ""
    peft_export: bool = False
    merged_format: str = "safetensors"
    unused: Callable[[Any], tuple[str, ...]] | None = None
    packed_tower: str | None = None
    image_rows: Callable[[tuple, dict, Any], list[int]] | None = None
    row_images: Callable[[Any, tuple, dict], list[float] | None] | None = None
    image_path: str | None = None
    image_views: bool = False
    count_fields: Callable[[Any, Any, int], str] | None = None
    mends: tuple[tuple[str, Callable[[Any, tuple, Any], Any]], ...] = ()

    def matches(self, cls: type) -> bool:
        """True when a class in ``cls``'s MRO is one of this family's (qualified) classes."""
        return any(_is_class(c, ref) for c in cls.__mro__ for ref in self.classes)


def _is_class(c: type, ref: str) -> bool:
    prefix, _, name = ref.rpartition(".")
    module = getattr(c, "__module__", "") or ""
    return c.__name__ == name and (module == prefix or module.startswith(prefix + "."))


_OC_BLOCK = r"\.resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)$"
# An open_clip image tower that is a timm ViT (open_clip's TimmModel: visual.trunk), as timm_vit's blocks.
_OC_TIMM_TRUNK = r"^visual\.trunk\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc1_g|mlp\.fc1_x|mlp\.fc2)$"
_HF_CLIP_BLOCK = r"\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$"

# Hugging Face image-text-to-text models (transformers 5 names: model.vision_tower.encoder.layers.N...,
# model.language_model.layers.N...; the projector, model.multi_modal_projector, only when targets name it).
_HF_VLM_TARGETS = {
    "image": (r"(^|\.)vision_tower(\.\w+)*" + _HF_CLIP_BLOCK,),
    # (qkv_proj and gate_up_proj: language models that pack them, e.g. Phi-3; each adapts as one projection)
    "text": (r"(^|\.)language_model\.(.*\.)?layers\.\d+\."
             r"(self_attn\.(q|k|v|o|qkv)_proj|mlp\.(gate|up|down|gate_up)_proj)$",),
}

# The modules of an HF VLM that take the batch's images: its vision tower and its projector.
_IMAGE_PATH = r"(^|\.)(vision_tower|multi_modal_projector)$"

# Mistral 3's Pixtral tower packs every image's patches into one (1, patches, dim) sequence, and its projector takes
# them as (patches, dim) rows: both are routed image by image by the images' own sizes.
_PIXTRAL_PACKED = r"(^|\.)(vision_tower|multi_modal_projector)$"

# Idefics3 / SmolVLM name their language model model.text_model (a Llama-style decoder).
_IDEFICS3_TEXT = (r"(^|\.)text_model\.(.*\.)?layers\.\d+\."
                  r"(self_attn\.(q|k|v|o|qkv)_proj|mlp\.(gate|up|down|gate_up)_proj)$")


def _llava_unused_vision_layers(model: Any) -> tuple[str, ...]:
    """The vision layers after the deepest one LLaVA reads (``vision_feature_layer``, -2 in LLaVA-1.5:
    hidden_states[v] is the output of layer v - 1, hidden_states[0] the embeddings)."""
    cfg = getattr(model, "config", None)
    layers = getattr(getattr(cfg, "vision_config", None), "num_hidden_layers", None)
    chosen = getattr(cfg, "vision_feature_layer", -1)
    if not isinstance(layers, int):
        return ()
    picks = chosen if isinstance(chosen, (list, tuple)) else [chosen]
    first_unused = max(v + layers + 1 if v < 0 else v for v in picks)
    return tuple(rf"(^|\.)vision_tower(\.\w+)*\.encoder\.layers\.{i}\." for i in range(first_unused, layers))


#: Every model family the package knows, in match order (``find_family(model)`` takes the first whose classes the
#: model's MRO holds); ``mlv.FAMILIES`` lists them, e.g. ``[f.name for f in mlv.FAMILIES]``.
FAMILIES: tuple[Family, ...] = (
    Family(
        "open_clip",
        ("open_clip.CLIP", "open_clip.CustomTextCLIP", "open_clip.CoCa"),
        {
            "image": (r"^visual\.transformer" + _OC_BLOCK, _OC_TIMM_TRUNK),   # a timm trunk: the SigLIP models
            "text": (r"^(text\.)?transformer" + _OC_BLOCK,
                     r"^text_decoder\.(resblocks|cross_attn)\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)$"),
        },
        packed_qkv=r"^visual\.trunk\.blocks\.\d+\.attn\.qkv$",
        backbone="open_clip",
        merged_format="open_clip",
    ),
    Family(
        "hf_clip",
        ("transformers.models.clip.CLIPModel",),
        {"image": (r"^vision_model" + _HF_CLIP_BLOCK,), "text": (r"^text_model" + _HF_CLIP_BLOCK,)},
        backbone="hf_clip",
        peft_export=True,
        merged_format="hf",
    ),
    Family(
        "llava",
        ("transformers.models.llava.LlavaForConditionalGeneration",),
        _HF_VLM_TARGETS,
        backbone="llava",
        count_fields=llava_fields,
        peft_export=True,
        merged_format="hf",
        unused=_llava_unused_vision_layers,
        row_images=image_token_rows,
        image_path=_IMAGE_PATH,
    ),
    Family(
        "llava_next",
        ("transformers.models.llava_next.LlavaNextForConditionalGeneration",),
        _HF_VLM_TARGETS,
        backbone="llava_next",
        count_fields=llava_fields,
        peft_export=True,
        merged_format="hf",
        unused=_llava_unused_vision_layers,
        row_images=llava_next_row_tiles,
        image_path=_IMAGE_PATH,
        image_views=True,
    ),
    Family(
        "llava_onevision",
        ("transformers.models.llava_onevision.LlavaOnevisionForConditionalGeneration",),
        _HF_VLM_TARGETS,  # SigLIP layers under model.vision_tower, Qwen2's under model.language_model
        backbone="llava_onevision",
        count_fields=llava_onevision_fields,
        peft_export=True,
        merged_format="hf",
        unused=_llava_unused_vision_layers,
        row_images=llava_onevision_row_tiles,
        image_path=_IMAGE_PATH,
        image_views=True,
    ),
    Family(
        "paligemma",
        ("transformers.models.paligemma.PaliGemmaForConditionalGeneration",),
        _HF_VLM_TARGETS,  # SigLIP layers are named like CLIP's, Gemma's like Llama's
        backbone="paligemma",
        count_fields=paligemma_fields,
        peft_export=True,
        merged_format="hf",
        row_images=image_token_rows,
        image_path=_IMAGE_PATH,
    ),
    Family(
        "gemma3",
        ("transformers.models.gemma3.Gemma3ForConditionalGeneration",),
        _HF_VLM_TARGETS,  # SigLIP layers under model.vision_tower, Gemma 3's under model.language_model
        backbone="gemma3",
        count_fields=gemma3_fields,
        peft_export=True,
        merged_format="hf",
        row_images=image_token_rows,
        image_path=_IMAGE_PATH,
    ),
    Family(
        "mistral3",
        ("transformers.models.mistral3.Mistral3ForConditionalGeneration",),
        {"image": (r"(^|\.)vision_tower\.transformer\.layers\.\d+\."
                   r"(attention\.(q|k|v|o)_proj|feed_forward\.(gate|up|down)_proj)$",),
         "text": _HF_VLM_TARGETS["text"]},
        backbone="mistral3",
        count_fields=pixtral_fields,
        peft_export=True,
        merged_format="hf",
        packed_tower=_PIXTRAL_PACKED,
        image_rows=pixtral_image_rows,
        row_images=pixtral_row_images,
        mends=((r"(^|\.)multi_modal_projector$", pixtral_keep_one_row),),
    ),
    Family(
        "qwen2_vl",
        ("transformers.models.qwen2_vl.Qwen2VLForConditionalGeneration",
         "transformers.models.qwen2_5_vl.Qwen2_5_VLForConditionalGeneration"),
        {"image": (r"(^|\.)visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2|gate_proj|up_proj|down_proj))$",),
         "text": _HF_VLM_TARGETS["text"]},   # the merger (visual.merger.mlp.N) only when targets name it
        packed_qkv=r"(^|\.)visual\.blocks\.\d+\.attn\.qkv$",
        backbone="qwen2_vl",
        count_fields=qwen_fields,
        peft_export=True,
        merged_format="hf",
        packed_tower=r"(^|\.)visual$",
        image_rows=qwen_image_rows,
        row_images=qwen_row_images,
    ),
    Family(
        "idefics3",
        ("transformers.models.idefics3.Idefics3ForConditionalGeneration",
         "transformers.models.smolvlm.SmolVLMForConditionalGeneration"),
        {"image": (r"(^|\.)vision_model" + _HF_CLIP_BLOCK,),   # SigLIP layers under model.vision_model
         "text": (_IDEFICS3_TEXT,)},   # the connector (connector.modality_projection.proj) only when targets name it
        backbone="idefics3",
        count_fields=idefics3_fields,
        peft_export=True,
        merged_format="hf",
        row_images=idefics3_row_images,
        image_path=r"(^|\.)(vision_model|connector)$",
    ),
    Family(
        "timm_vit",
        ("timm.models.VisionTransformer",),
        # fc1_g/x: SwiGLU
        {"image": (r"^blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc1_g|mlp\.fc1_x|mlp\.fc2)$",)},
        packed_qkv=r"(^|\.)qkv$",
        no_backbone="a timm VisionTransformer is image-only (it has no text tower), so it cannot serve the "
                    "package's image-text task kinds; attach adapters to it directly with mtl_lora_vl.attach(model, "
                    "cfg) (image tower only) and train it in your own loop under mtl_lora_vl.route(model, task_ids)",
    ),
)


#: A family's inner multimodal model (``model.model``), adapted on its own with given targets (family "custom"):
#: the family whose hooks it needs at run time (its rows' image count; Qwen2-VL's packed vision tower), so a mixed
#: route through it is checked and routed as through the whole model.
INNER_MODELS: tuple[tuple[str, str], ...] = (
    ("transformers.models.llava.LlavaModel", "llava"),
    ("transformers.models.llava_next.LlavaNextModel", "llava_next"),
    ("transformers.models.llava_onevision.LlavaOnevisionModel", "llava_onevision"),
    ("transformers.models.paligemma.PaliGemmaModel", "paligemma"),
    ("transformers.models.gemma3.Gemma3Model", "gemma3"),
    ("transformers.models.mistral3.Mistral3Model", "mistral3"),
    ("transformers.models.idefics3.Idefics3Model", "idefics3"),
    ("transformers.models.smolvlm.SmolVLMModel", "idefics3"),
    ("transformers.models.qwen2_vl.Qwen2VLModel", "qwen2_vl"),
    ("transformers.models.qwen2_5_vl.Qwen2_5_VLModel", "qwen2_vl"),
)


def inner_family(model: object) -> Family | None:
    """The family whose inner multimodal model ``model`` is (:data:`INNER_MODELS`), else None."""
    cls = type(model)
    return next((family_named(name) for ref, name in INNER_MODELS if any(_is_class(c, ref) for c in cls.__mro__)),
                None)


def find_family(model: object) -> Family | None:
    """The first family of the table that ``model`` (an instance or a class) belongs to, else None."""
    cls = model if isinstance(model, type) else type(model)
    return next((fam for fam in FAMILIES if fam.matches(cls)), None)


def family_named(name: str) -> Family | None:
    """The family called ``name`` (as recorded in adapter files), else None (e.g. ``"custom"``)."""
    return next((fam for fam in FAMILIES if fam.name == name), None)


def peft_export(name: str) -> bool:
    """Whether ``export_lora(format="auto")`` writes PEFT LoRA for family ``name``."""
    fam = family_named(name)
    return fam is not None and fam.peft_export


def merged_format(name: str, model: object) -> str:
    """Merged-checkpoint format of family ``name``; for a model of no known family, ``"hf"`` when it can
    ``save_pretrained``, else ``"safetensors"``."""
    fam = family_named(name)
    if fam is not None:
        return fam.merged_format
    return "hf" if hasattr(model, "save_pretrained") else "safetensors"
