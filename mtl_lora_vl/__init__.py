"""mtl-lora-vl: MTL-LoRA adapters for multi-task fine-tuning of vision-language models.

The public API (DESIGN §4)::

    cfg = MTLLoRAConfig(tasks=["vqa", "retrieval"], r=8, alpha=16, n_up=3, temperature=0.5)
    model = attach(model, cfg)
    with route(model, task_ids):
        ...

or, in PEFT's shape, ``MTLLoRAModel(model, cfg)`` / ``MTLLoRAModel.from_pretrained(base_model, adapter_dir)``.

The names below are imported when first read (:mod:`.lazy_names`): ``import mtl_lora_vl`` -- and with it the
command line's ``--help`` and option errors -- does not import torch and the model libraries.
"""

from typing import TYPE_CHECKING

from . import process_start  # noqa: F401  (first: reads the parent before the seconds of imports of torch)
from ._version import __version__
from .lazy_names import lazy_names as _lazy_names  # (as: mtl_lora_vl.lazy_names stays the module)

if TYPE_CHECKING:   # what the table below names, for type checkers and editors
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

#: Each public name -> the module it is imported from when first read.
_IMPORTED_FROM = {
    **dict.fromkeys(["AttachError", "attach", "merge", "merged_state_dict", "parameter_report",
                     "trainable_parameters", "unmerge"], "mtl_lora_vl.adapters.attach"),
    "add_task": "mtl_lora_vl.adapters.grow",
    "RoutingError": "mtl_lora_vl.adapters.routing",
    **dict.fromkeys(["disabled", "may_recompute", "route"], "mtl_lora_vl.adapters.scopes"),
    **dict.fromkeys(["ConfigError", "MTLLoRAConfig"], "mtl_lora_vl.config"),
    "FAMILIES": "mtl_lora_vl.families",
    **dict.fromkeys(["AdapterFileError", "export_lora", "load_adapter", "load_pretrained", "read_adapter_config",
                     "save_adapter", "save_merged"], "mtl_lora_vl.io"),
    "MTLLoRAModel": "mtl_lora_vl.mtl_lora_model",
}

__getattr__, __dir__ = _lazy_names(globals(), _IMPORTED_FROM)

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
