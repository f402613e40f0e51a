"""Reading and writing what training produces, one concept per module.

- :mod:`.atomic`: atomic writes of a file or a directory (checkpoints, adapters, exports);
- :mod:`.locks`: the advisory locks of run directories and benchmark grids;
- :mod:`.identity`: which base model an adapter fits (projections, shapes, fingerprint);
- :mod:`.layout`: the file names of an adapter directory, and telling it from a PEFT or run directory;
- :mod:`.tensor_files`: safetensors files (write, read, header and metadata only) and the recorded digests;
- :mod:`.base_check`: an adapter file against the base model it is loaded onto, before anything is touched;
- :mod:`.adapter_files`: the native adapter directory (``save_adapter``, ``load_adapter``);
- :mod:`.adapter_images`: how the adapter's images were read (``base.image_reading``, Qwen2-VL's pixel area),
  written from the model's image record and put back on load;
- :mod:`.source_files`: what a merged folder copies from its source folder, and what save_pretrained writes;
- :mod:`.exports`: tasks as PEFT or plain LoRAs (one, or several named), or a merged base-model checkpoint;
- :mod:`.pretrained`: ``load_pretrained``, base model + task heads + adapter in one call.
"""

from .adapter_files import load_adapter, read_adapter_config, save_adapter
from .atomic import atomic_dir, atomic_file
from .exports import apply_plain_lora, export_lora, save_merged
from .identity import model_identity
from .layout import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    HEADS_WEIGHTS,
    LEGACY_ADAPTER_CONFIG,
    LEGACY_ADAPTER_WEIGHTS,
    AdapterFileError,
    find_adapter_dir,
    is_adapter_dir,
)
from .pretrained import Pretrained, load_pretrained

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "HEADS_WEIGHTS",
    "LEGACY_ADAPTER_CONFIG",
    "LEGACY_ADAPTER_WEIGHTS",
    "AdapterFileError",
    "Pretrained",
    "apply_plain_lora",
    "atomic_dir",
    "atomic_file",
    "export_lora",
    "find_adapter_dir",
    "is_adapter_dir",
    "load_adapter",
    "load_pretrained",
    "model_identity",
    "read_adapter_config",
    "save_adapter",
    "save_merged",
]
