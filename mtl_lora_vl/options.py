"""TrainOptions: every option of a training run, one typed source for the command line and config files."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

#: Options whose default depends on the path the task kinds take on the chosen backbone (DESIGN §3):
#: ``(contrastive, generative)``. Left unset (None), an option takes its path's value once the backbone is
#: loaded (:meth:`TrainOptions.with_path_defaults`); the run's ``config.json`` records the value used. The
#: generative values fit the LLaVA main job (``--backbone builtin-llava --tasks vqa,captioning``) into a few
#: minutes on 2 CPU cores: a language-model row is ~90 tokens (64 of them image tokens) instead of one
#: pooled embedding, and evaluation decodes text.
PATH_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "steps": (400, 120),
    "batch_size": (64, 16),
    "eval_batch_size": (256, 100),
}


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


def _path_opt(name: str, help: str) -> Any:
    contrastive, generative = PATH_DEFAULTS[name]
    return _opt(None, f"{help} (default {contrastive}; {generative} when the tasks run through a generative "
                      "backbone's language model, e.g. --backbone builtin-llava)")


@dataclass
class TrainOptions:
    """Every option of a training run; the command line and ``--config FILE`` set the same names."""

    tasks: str = _opt("vqa,retrieval", "comma-separated task names (built-in specs) or paths to task TOML files")
    backbone: str = _opt("builtin", "builtin | builtin-llava | open_clip:NAME (with --pretrained FILE) | hf:DIR (local Hugging Face CLIP, "
                         "LLaVA or PaliGemma directory)")
    pretrained: str | None = _opt(None, "local checkpoint file for open_clip:NAME")
    base_dtype: str = _opt("auto", "dtype of the frozen base weights: auto = bf16 for a language model (LLaVA-style) on "
                           "a GPU, else fp32; adapters stay fp32", choices=["auto", "fp32", "bf16", "fp16"])
    data_root: str | None = _opt(None, "folder that task specs' data paths are relative to")
    method: str = _opt("mtl_lora", "adapter method", choices=["mtl_lora", "lora", "task_lora", "multi_lora", "moe_lora"])
    rank: int = _opt(8, "adapter rank r")
    alpha: float = _opt(16.0, "adapter scaling numerator (s = alpha / r)")
    n_up: int = _opt(3, "number of shared up-projections B_i (experts for moe_lora / multi_lora)")
    temperature: float = _opt(0.5, "temperature tau of softmax(w_t / tau)")
    lambda_type: str = _opt("full", "task-specific Lambda_t", choices=["full", "diagonal", "none"])
    dropout: float = _opt(0.0, "dropout on adapter inputs")
    targets: str = _opt("default", "'default' or a JSON dict {\"image\": [regex], \"text\": [regex]}")
    steps: int | None = _path_opt("steps", "optimizer steps (ignored when --epochs is given)")
    epochs: float | None = _opt(None, "train for this many passes over all tasks' training data instead of --steps")
    batch_size: int | None = _path_opt("batch_size", "samples per step and per process (before accumulation)")
    lr: float = _opt(2e-3, "learning rate of the adapters")
    head_lr: float = _opt(3e-3, "learning rate of the task heads")
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    warmup: int = _opt(20, "linear warm-up steps before the cosine schedule")
    grad_clip: float = _opt(1.0, "clip the gradient norm to this (0 = off)")
    accumulate: int = _opt(1, "gradient accumulation: micro-batches per optimizer step")
    precision: str = _opt("auto", "auto = bf16 on a GPU that supports it, else fp32", choices=["auto", "fp32", "bf16", "fp16"])
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    workers: int = _opt(-1, "data loader workers (-1 = choose from the CPU count)")
    batch_mode: str = _opt("mixed", "mixed: several tasks per batch; homogeneous: one task per step", choices=["mixed", "homogeneous"])
    sampling: str = _opt("temperature", "how tasks are drawn", choices=["proportional", "temperature", "round_robin"])
    sampling_temperature: float = _opt(2.0, "T of temperature sampling, p ~ n^(1/T)")
    eval_every: int = _opt(0, "evaluate the adapted model on the validation split every N steps (0 = only at the end)")
    save_every: int = _opt(100, "write a checkpoint every N steps (and on Ctrl-C)")
    log_every: int = _opt(10, "log training metrics every N steps")
    eval_batch_size: int | None = _path_opt("eval_batch_size", "batch size of evaluation")
    eval_split: str = _opt("test", "split scored at the end (falls back to val when a task has no test split)")
    out: str | None = _opt(None, "run directory (default runs/<tasks>-<method>-<time>)")
    resume: str | None = _opt(None, "continue the killed or stopped run in this directory")
    extend: str | None = _opt(None, "add --tasks to the trained adapter of this run directory (or adapter directory), "
                              "training only their Lambda_t, w_t and heads; the other tasks stay bit-identical")
    overwrite: bool = _opt(False, "replace an existing run directory")
    seed: int = _opt(0, "random seed")
    compile: bool = _opt(False, "torch.compile the training forward pass (towers, adapters and heads)")
    grad_checkpointing: bool = _opt(False, "activation (gradient) checkpointing in the backbone's towers: less memory, "
                                    "about a third more compute; refused by backbones that cannot")
    max_bad_steps: int = _opt(5, "stop after this many non-finite losses in a row")
    config: str | None = _opt(None, "JSON or TOML file with any of these options (flags given on the command line win)")

    def validate(self) -> None:
        for name in ("batch_size", "accumulate", "save_every", "log_every", "eval_batch_size", "max_bad_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
        if self.steps is not None and self.steps < 1 and not self.epochs:
            raise ValueError(f"--steps: must be >= 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"--epochs: must be > 0, got {self.epochs}")
        for name in ("lr", "head_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')}: must be > 0, got {getattr(self, name)}")


    def with_path_defaults(self, generative: bool) -> TrainOptions:
        """A copy whose unset path-dependent options (:data:`PATH_DEFAULTS`) take the value of the run's path:
        ``generative`` = the task kinds run through the backbone's language model."""
        return replace(self, **{k: v[int(generative)] for k, v in PATH_DEFAULTS.items() if getattr(self, k) is None})


def option_names() -> list[str]:
    return [f.name for f in fields(TrainOptions)]

