"""mtl-lora-vl: MTL-LoRA adapters for multi-task fine-tuning of vision-language models.

The public API (DESIGN §4)::

    cfg = MTLLoRAConfig(tasks=["vqa", "retrieval"], r=8, alpha=16, n_up=3, temperature=0.5)
    model = attach(model, cfg)
    with route(model, task_ids):
        ...

or, in PEFT's shape, ``MTLLoRAModel(model, cfg)`` / ``MTLLoRAModel.from_pretrained(base_model, adapter_dir)``.
"""

from . import process_start  # noqa: F401  (first: reads the parent before the seconds of imports below)
from ._version import __version__
from .adapters.attach import (
    AttachError,
    attach,
    merge,
    merged_state_dict,
    parameter_report,
    trainable_parameters,
    unmerge,
)
from .adapters.grow import add_task
from .adapters.routing import RoutingError
from .adapters.scopes import disabled, may_recompute, route
from .config import ConfigError, MTLLoRAConfig
from .families import FAMILIES
from .io import (
    AdapterFileError,
    export_lora,
    load_adapter,
    load_pretrained,
    read_adapter_config,
    save_adapter,
    save_merged,
)
from .mtl_lora_model import MTLLoRAModel

__all__ = [
    "__version__",
    "FAMILIES",
    "MTLLoRAModel",
    "AdapterFileError",
    "add_task",
    "export_lora",
    "load_adapter",
    "load_pretrained",
    "read_adapter_config",
    "save_adapter",
    "save_merged",
    "AttachError",
    "ConfigError",
    "MTLLoRAConfig",
    "RoutingError",
    "attach",
    "disabled",
    "merge",
    "may_recompute",
    "merged_state_dict",
    "parameter_report",
    "route",
    "trainable_parameters",
    "unmerge",
]
