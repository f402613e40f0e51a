"""mtl-lora-vl: MTL-LoRA adapters for multi-task fine-tuning of vision-language models."""

__version__ = "0.1.0"
