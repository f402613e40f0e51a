"""Task kinds (vqa, retrieval, classification, captioning, nlvr), their registry and the TOML task specs."""

from typing import Any

from mtl_lora_vl.backbones.base import Backbone
from mtl_lora_vl.data.records import Split

# Importing the kind modules registers them.
from mtl_lora_vl.tasks import captioning, classification, nlvr, retrieval, vqa  # noqa: F401
from mtl_lora_vl.tasks.base import TaskKind
from mtl_lora_vl.tasks.registry import available_kinds, get_kind, register_kind
from mtl_lora_vl.tasks.spec import SpecError, TaskSpec, available_specs, load_spec, resolve_tasks

__all__ = ["SpecError", "TaskKind", "TaskSpec", "available_kinds", "available_specs", "get_kind",
           "load_spec", "register_kind", "resolve_tasks", "build_kind"]


def build_kind(spec: TaskSpec, train: Split | None, backbone: Backbone,
               state: dict[str, Any] | None = None) -> TaskKind:
    """Instantiate the kind of ``spec`` on its training split (or a saved ``kind.state()``) and backbone."""
    kind = get_kind(spec.kind)(spec, train, backbone, state)
    if train is not None and kind.generative:
        kind.warn_lm_context(train.examples, backbone)
    return kind
