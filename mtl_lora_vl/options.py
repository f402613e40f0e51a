"""The options of each command, one typed source for the command line, ``--config`` files and the Python API.

Each command's options are a plain dataclass of typed fields: the annotation is the type
(``Literal[...]`` lists the allowed choices), and the field's metadata carries the help text and, for
numbers, the allowed range (``ge``/``gt``/``le``/``lt``, as in annotated-types). The command line
(:mod:`mtl_lora_vl.cli`) is generated from these dataclasses, and :func:`check_ranges` applies the
same ranges to an instance built in Python. ``metadata["required"]`` marks an option without which the
command cannot run (given on the command line or in the config file); ``metadata["unless"]`` =
``(other, hint)`` excuses it where option ``other`` is given (``hint`` says what that does).

- :class:`TrainOptions`: ``mtl-lora-vl train`` (``scripts/train_vl.py``, ``mtl-lora-vl-train``);
- :class:`EvalOptions`: ``mtl-lora-vl eval`` (``scripts/evaluate_vl.py``, ``mtl-lora-vl-eval``);
- :class:`ExportOptions`: ``mtl-lora-vl export`` (``scripts/export_merged.py``).
"""

from __future__ import annotations

import functools
import json
import math
import operator
import types
import typing
from collections.abc import Collection
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

from .config import MIN_TEMPERATURE, check_targets

__all__ = ["PATH_DEFAULTS", "EvalOptions", "ExportOptions", "TrainOptions", "check_ranges", "describe_allowed",
           "field_types", "non_none", "range_text"]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Split = Literal["train", "val", "test"]

#: config.json's key for what a run resolved (``rundir.record_resolved``): a record, not an option (``--config`` of
#: a run's config.json skips it).
RESOLVED = "resolved"
#: The adapter's shape: an --extend run takes it from the adapter it extends.
ADAPTER_SHAPE = ("rank", "alpha", "n_up", "temperature", "lambda_type", "dropout", "method", "targets")


def _same_value(name: str, mine: Any, theirs: Any) -> bool:
    """An option's value against the adapter's; targets compare as parsed JSON (key order and spacing aside)."""
    if name == "targets" and mine != "default" and theirs != "default":
        return json.loads(mine) == (json.loads(theirs) if isinstance(theirs, str) else theirs)
    return mine == theirs


#: Options whose default depends on the path the task kinds take on the chosen backbone (DESIGN §3):
#: ``(contrastive, generative)``. Left unset (None), an option takes its path's value once the backbone is
#: loaded (:meth:`TrainOptions.with_path_defaults`); the run's ``config.json`` records the value used. The
#: generative values fit the LLaVA main job (``--backbone builtin-llava --tasks vqa,captioning``) into a few
#: minutes on 2 CPU cores: a language-model row is ~90 tokens (64 of them image tokens) instead of one
#: pooled embedding, and evaluation decodes text.
PATH_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "steps": (400, 200),
    "batch_size": (64, 16),
    "eval_batch_size": (256, 100),
}


def _opt(default: Any, help: str, **kw: Any) -> Any:
    """A field with a default, its help text and (optional) range: ``ge``, ``gt``, ``le``, ``lt``."""
    return field(default=default, metadata={"help": help, **kw})


def _path_opt(name: str, help: str, **kw: Any) -> Any:
    """A field of :data:`PATH_DEFAULTS`: unset (None) until the run's path is known."""
    contrastive, generative = PATH_DEFAULTS[name]
    return _opt(None, f"{help} (default {contrastive}; {generative} when the tasks run through a generative "
                      "backbone's language model, e.g. --backbone builtin-llava)", **kw)


@dataclass
class TrainOptions:
    """Every option of a training run; the command line and ``--config FILE`` set the same names."""

    #: An option given on the command line clears these when they come from the ``--config`` file: the
    #: command line wins, and ``epochs`` (a file's, or the one a reused config.json records) would win over
    #: ``--steps``.
    command_line_clears: ClassVar[dict[str, tuple[str, ...]]] = {"steps": ("epochs",)}

    tasks: str = _opt("vqa,retrieval", "comma-separated task names (built-in specs) or paths to task TOML files")
    backbone: str = _opt("builtin", "builtin | builtin-llava | open_clip:NAME (with --pretrained FILE or TAG) | "
                         "open_clip:DIR (a folder with open_clip_config.json and weights: a CLIP or CoCa) | hf:DIR "
                         "or hf:ORG/NAME (a local Hugging Face CLIP, LLaVA, LLaVA-NeXT, LLaVA-OneVision, PaliGemma, "
                         "Gemma 3, Qwen2-VL, Idefics3 / SmolVLM or Mistral 3 directory, or a hub id in the local "
                         "cache)")
    pretrained: str | None = _opt(None, "local checkpoint file for open_clip:NAME, or a pretrained tag whose "
                                  "weights are already in open_clip's local cache")
    base_dtype: Literal["auto", "fp32", "bf16", "fp16"] = _opt(
        "auto", "dtype of the frozen base weights: auto = bf16 for a language model (LLaVA-style) on a GPU (fp16 on "
        "one without native bf16; fp32 for Gemma 3, which overflows fp16), else fp32; adapters stay fp32")
    image_max_pixels: int | None = _opt(None, "largest image area, in pixels, for a backbone that keeps each image's "
                                        "own size (Qwen2-VL / Qwen2.5-VL; default 448² = 200704, 256 image tokens; "
                                        "its processor's own max_pixels still bounds it); eval and export read it "
                                        "from the adapter", ge=1)
    image_reading: Literal["native", "square"] | None = _opt(
        None, "how a backbone that can read images either way reads them (LLaVA-NeXT, LLaVA-OneVision, Idefics3 / "
        "SmolVLM, Mistral 3): native = each at its own aspect, as its processor does (their default: anyres tiles, "
        "Idefics3's crops); square = squashed to one square (fewer image tokens for large pictures, no splitting); "
        "default: the backbone's own. The adapter records it; eval, export and --extend read it from there")
    data_root: str | None = _opt(None, "folder that task specs' data paths are relative to (--extend: the new "
                                 "tasks'; the adapter's tasks are read from the folders it records)")
    method: Literal["mtl_lora", "lora", "task_lora", "multi_lora", "moe_lora"] = _opt("mtl_lora", "adapter method")
    rank: int = _opt(8, "adapter rank r", ge=1)
    alpha: float = _opt(16.0, "adapter scaling numerator (s = alpha / r)", gt=0)
    n_up: int = _opt(3, "number of shared up-projections B_i (experts for moe_lora / multi_lora)", ge=1)
    temperature: float = _opt(0.5, "temperature tau of softmax(w_t / tau) (below 1e-6 it overflows to NaN)",
                               ge=MIN_TEMPERATURE)
    lambda_type: Literal["full", "diagonal", "none"] = _opt("full", "task-specific Lambda_t")
    dropout: float = _opt(0.0, "dropout on adapter inputs", ge=0, lt=1)
    targets: str = _opt("default", "'default' or a JSON dict {\"image\": [regex], \"text\": [regex]}")
    steps: int | None = _path_opt("steps", "optimizer steps (ignored when --epochs is given; --steps on the command "
                                   "line clears epochs set in the --config file)", ge=1)
    epochs: float | None = _opt(None, "train for this many passes over all tasks' training data instead of --steps "
                                "(one pass = as many samples as the training splits hold together; under temperature "
                                "or round-robin sampling, and in mixed batches, whose floor of one row per task per "
                                "step takes its share from the large tasks, a large task sees less than a pass of its "
                                "own)", gt=0)
    batch_size: int | None = _path_opt("batch_size", "samples per step and per process (before accumulation)", ge=1)
    lr: float = _opt(2e-3, "learning rate of the adapters", gt=0)
    head_lr: float = _opt(3e-3, "learning rate of the task heads", gt=0)
    task_lr_mult: float = _opt(1.0, "learning-rate multiplier for the task-specific adapter tensors "
                               "Lambda_t and w_t (lora_lambda, lora_w)", gt=0)
    weight_decay: float = _opt(0.01, "AdamW weight decay of every trained adapter tensor (A, B_i, Lambda_t, "
                               "w_t; in an --extend run, the new tasks' own, as in a joint run) and of the heads' "
                               "weight matrices (not their biases, nor retrieval's temperature)", ge=0)
    warmup: int = _opt(20, "linear warm-up steps before the cosine schedule", ge=0)
    grad_clip: float = _opt(1.0, "clip the gradient norm to this (0 = off)", ge=0)
    accumulate: int = _opt(1, "gradient accumulation: micro-batches per optimizer step", ge=1)
    precision: Precision = _opt("auto", "auto = bf16 on a GPU that supports it, else fp32; with half-precision base "
                                        "weights "
                                      "(--base-dtype, or auto on a GPU), their dtype")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    workers: int = _opt(-1, "data loader workers (-1 = this rank's share of its machine's usable cores, at most 4; "
                        "at most 4 per usable core)", ge=-1)
    batch_mode: Literal["mixed", "homogeneous"] = _opt(
        "mixed", "mixed: several tasks per batch; homogeneous: one task per optimizer step (all its --accumulate "
                 "micro-batches)")
    sampling: Literal["proportional", "temperature", "round_robin"] = _opt(
        "temperature", "how tasks are drawn: in mixed batches each task's rows a step (its loss is its rows' mean, "
                       "weighed by loss_weight alone); in homogeneous batches the task of each step (a task weight)")
    sampling_temperature: float = _opt(2.0, "T of temperature sampling, p ~ n^(1/T) (a large T tends to equal "
                                       "shares; --sampling round_robin gives them exactly)", gt=0)
    eval_every: int = _opt(0, "score the adapted model on the validation split every N steps during training (0 = "
                           "never; the end scores --eval-split, and val too with --eval-val)", ge=0)
    keep_best: bool = _opt(False, "with --eval-every: finish with the adapter and heads of the validation evaluation "
                           "(the last step's included) whose mean headline metric over the tasks is highest")
    patience: int = _opt(0, "with --keep-best: stop training after N validation evaluations in a row without a "
                         "higher score (0 = never)", ge=0)
    save_every: int = _opt(100, "write a checkpoint every N steps (and on Ctrl-C)", ge=1)
    log_every: int = _opt(10, "log training metrics every N steps", ge=1)
    eval_batch_size: int | None = _path_opt("eval_batch_size", "batch size of evaluation", ge=1)
    eval_split: Split = _opt("test", "split scored at the end (test falls back to val when a task has no test "
                             "split; a task without a val split is not scored on val)")
    eval_val: bool = _opt(False, "also score the adapted model on the validation split at the end (eval.json 'val')")
    skip_zero_shot: bool = _opt(False, "skip the zero-shot score of the base model at the end (benchmarks compute it "
                                       "once)")
    predictions: bool = _opt(False, "also write each task's per-row predictions (input, reference, the adapted and "
                             "zero-shot answers) to OUT/predictions/<task>.jsonl, for error analysis")
    out: str | None = _opt(None, "run directory (default runs/<tasks>-<method>-<time>)")
    resume: str | None = _opt(None, "continue the killed or stopped run in this directory, with the options its "
                                    "config.json records: only --workers and --device may differ (and --data-root or "
                                    "--extend in place of a recorded folder that moved); any other option given that "
                                    "differs (more --steps too) is refused: start a new run for those")
    extend: str | None = _opt(None, "add --tasks to the trained adapter of this run directory (or adapter directory), "
                              "training only their heads and their own adapter rows (Lambda_t, w_t; moe_lora: w_t; "
                              "task_lora: A_t, B_t); the other tasks stay bit-identical")
    overwrite: bool = _opt(False, "replace an existing run directory")
    seed: int = _opt(0, "random seed", ge=-(2**63), lt=2**64)
    compile: bool = _opt(False, "torch.compile the training forward pass (towers, adapters and heads)")
    grad_checkpointing: bool = _opt(False, "activation (gradient) checkpointing in the backbone's towers: less memory, "
                                    "about a third more compute; refused by backbones that cannot")
    max_bad_steps: int = _opt(5, "stop after this many non-finite losses in a row", ge=1)
    config: str | None = _opt(None, "JSON or TOML file with any of these options (flags given on the command line win)")

    def validate(self) -> None:
        """Raise ValueError naming the option when a value is not of its type or out of its range."""
        check_ranges(self)   # (first: a fractional count is "must be a whole number")
        problem = type_problem(self)   # a Python caller's tasks=["vqa"] or lr="1e-3" failed deep in the run, unnamed
        if problem:
            listed = isinstance(self.tasks, (list, tuple)) and all(isinstance(t, str) for t in self.tasks)
            hint = f"; give tasks={','.join(self.tasks)!r}" if problem.startswith("--tasks") and listed else ""
            raise ValueError(problem + hint)
        if self.targets != "default":
            try:
                targets = json.loads(self.targets)
            except json.JSONDecodeError as e:
                raise ValueError(f"--targets: not valid JSON ({e}); give 'default' or a JSON dict such as "
                                 '\'{"image": ["regex"], "text": ["regex"]}\'') from None
            if not isinstance(targets, dict):
                raise ValueError(f"--targets: must be 'default' or a JSON dict of tower -> regex list, got {targets!r}")
            check_targets(targets, "--targets")   # (else refused once the backbone had loaded, as "targets: ...")
        unused = {"n_up": ("mtl_lora", "multi_lora", "moe_lora"), "temperature": ("mtl_lora", "moe_lora"),
                  "lambda_type": ("mtl_lora",)}
        default = TrainOptions()
        for name, users in unused.items():
            if not self.extend and self.method not in users and getattr(self, name) != getattr(default, name):
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: method {self.method} does not use "
                                 f"it (only {', '.join(users)} do), so it would change nothing; drop it")
        if self.sampling != "temperature" and self.sampling_temperature != default.sampling_temperature:
            raise ValueError(f"--sampling-temperature {self.sampling_temperature:g}: only --sampling temperature "
                             f"uses it (this run samples {self.sampling}), so it would change nothing; drop it")
        if self.keep_best and not self.eval_every:
            raise ValueError("--keep-best chooses among the validation evaluations of --eval-every N, which is 0 "
                             "(never); give --eval-every")
        if self.patience and not self.keep_best:
            raise ValueError(f"--patience {self.patience}: counts evaluations without a better --keep-best score; "
                             "give --keep-best (and --eval-every N)")
        if self.task_lr_mult != 1.0 and not self.extend and self.method not in ("mtl_lora", "moe_lora"):
            raise ValueError(f"--task-lr-mult {self.task_lr_mult:g}: method {self.method} has no task-specific "
                             "Lambda_t / w_t tensors (only mtl_lora and moe_lora do), so it would change nothing; drop "
                             "it (or raise --lr)")

    def check_extend_shape(self, shape: dict[str, Any], given: Collection[str] | None = None) -> None:
        """Refuse adapter-shape options an ``--extend`` run was asked for that differ from the adapter's own
        ``shape`` (option name -> value), which the new tasks take. ``given``: the options named on the command
        line or in the config file (None: those not at their default) -- ``--rank 8`` given explicitly against a
        rank-16 adapter counts even though 8 is the default."""
        default = TrainOptions()
        asked = (lambda k: k in given) if given is not None else (lambda k: getattr(self, k) != getattr(default, k))
        off = [f"--{k.replace('_', '-')} {getattr(self, k)} (the adapter's: {shape[k]})" for k in ADAPTER_SHAPE
               if asked(k) and not _same_value(k, getattr(self, k), shape[k])]
        if off:
            raise ValueError(f"--extend {self.extend}: the new tasks take the adapter's own shape (rank, alpha, n_up, "
                             f"temperature, Lambda type, dropout, method, targets), so {', '.join(off)} would be "
                             "ignored; drop them (from the command line or the --config file)")

    def with_path_defaults(self, generative: bool) -> TrainOptions:
        """A copy whose unset path-dependent options (:data:`PATH_DEFAULTS`) take the value of the run's path:
        ``generative`` = the task kinds run through the backbone's language model."""
        return replace(self, **{k: v[int(generative)] for k, v in PATH_DEFAULTS.items() if getattr(self, k) is None})


@dataclass
class EvalOptions:
    """Options of ``mtl-lora-vl eval``: score a trained adapter against the zero-shot base model, or (no
    ``--adapter``) any base model zero-shot on ``--tasks``."""

    adapter: str | None = _opt(None, "adapter directory (RUN_DIR/adapter, or any save_adapter output); leave it out to "
                               "score the base model (--backbone) zero-shot on --tasks, without training",
                               required=True, unless=("tasks", "to score a base model zero-shot without an adapter, "
                                                      "give --tasks (and --out), e.g. --tasks vqa,retrieval --out DIR"))
    tasks: str | None = _opt(None, "comma-separated subset of the adapter's tasks (default: all); a spec file "
                             "(.toml) named as one of them scores that task on the spec's data. Without --adapter "
                             "(required then): task names (built-in specs) or paths to task TOML files, as train "
                             "takes them")
    backbone: str | None = _opt(None, "override the base model recorded in the adapter file; without --adapter, the "
                                "model to score, as train takes it (default builtin)")
    pretrained: str | None = _opt(None, "override the base model's local weights file (or cached open_clip tag)")
    data_root: str | None = _opt(None, "folder that file-based task specs are relative to (default: the folder "
                                 "each task was trained on, as the adapter records it; without --adapter, needed by "
                                 "file-based tasks, as in train)")
    split: Split = _opt("test", "split to score (test falls back to val when a task has no test split; a task "
                        "without a val split is not scored on val)")
    base_dtype: Literal["auto", "fp32", "bf16", "fp16"] = _opt(
        "auto", "dtype of the frozen base weights: auto = bf16 for a language model (LLaVA-style) on a GPU (fp16 on "
        "one without native bf16; fp32 for Gemma 3, which overflows fp16), else fp32; adapters stay fp32")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    precision: Precision = _opt("auto", "auto = bf16 on a GPU that supports it, else fp32; with half-precision base "
                                        "weights "
                                      "(--base-dtype, or auto on a GPU), their dtype")
    batch_size: int = _opt(256, "evaluation batch size", ge=1)
    workers: int = _opt(0, "image-decoding workers (at most 4 per usable core)", ge=0)
    image_max_pixels: int | None = _opt(None, "without --adapter: the largest image area, in pixels, for a backbone "
                                        "that keeps each image's own size (Qwen2-VL / Qwen2.5-VL; default 448²), as "
                                        "train takes it; an adapter records its own", ge=1)
    image_reading: Literal["native", "square"] | None = _opt(
        None, "without --adapter: how a backbone that can read images either way reads them (LLaVA-NeXT, "
        "LLaVA-OneVision, Idefics3 / SmolVLM, Mistral 3: native = at their own aspect, square = on one square; "
        "default the backbone's own), as train takes it; an adapter records its own")
    out: str | None = _opt(None, "where eval.json, report.md and plots/ go (default: ADAPTER/../eval-<split>; "
                           "required without --adapter)")
    predictions: bool = _opt(False, "also write each task's per-row predictions (input, reference, the adapted and "
                             "zero-shot answers) to OUT/predictions/<task>.jsonl, for error analysis")
    overwrite: bool = _opt(False, "replace an earlier evaluation in --out (a folder holding eval.json; never an "
                                     "adapter, a run directory or a folder of other files)")
    config: str | None = _opt(None, "JSON or TOML file with any of these options (flags given on the command line win)")


@dataclass
class ExportOptions:
    """Options of ``mtl-lora-vl export``: one or more tasks of an adapter as merged weights or plain LoRAs."""

    adapter: str | None = _opt(None, "adapter directory written by save_adapter / train", required=True)
    task: str | None = _opt(None, "the task to export, or several comma-separated (each to OUT/<task>)",
                            required=True)
    out: str | None = _opt(None, "merged: FILE.safetensors (open_clip) or an output directory; lora formats: "
                           "an output directory", required=True)
    format: Literal["merged", "auto", "peft", "plain"] = _opt(
        "merged", "merged: the base model with the task merged into its weights; peft / plain: the task as a "
        "standard LoRA (auto: PEFT where PEFT loads the base model, else plain)")
    backbone: str | None = _opt(None, "override the base model recorded in the adapter")
    pretrained: str | None = _opt(None, "override the base checkpoint recorded in the adapter")
    base_dtype: Literal["source", "fp32", "bf16", "fp16"] = _opt(
        "source", "dtype the base model loads in and merged weights are written in (the merge itself is fp32): "
        "source = the base checkpoint's own (a Hugging Face directory's config.json dtype), fp32 otherwise")
    overwrite: bool = _opt(False, "replace an earlier export in --out (a folder holding mtl_lora_export.json, or a "
                                     "merged .safetensors that export wrote)")
    config: str | None = _opt(None, "JSON or TOML file with any of these options (flags given on the command line win)")


# ----------------------------------------------------------------------------------------------- ranges

_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def range_text(metadata: Any, value: Any = None) -> str:
    """The range of a field as text, e.g. ``>= 1`` or ``>= 0 and < 1`` (empty when unbounded); ``a finite
    number > 0`` when ``value`` is infinite or NaN."""
    text = " and ".join(f"{sym} {metadata[k]}" for k, (_, sym) in _BOUNDS.items() if k in metadata)
    return f"a finite number {text}".strip() if _non_finite(value) else text


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def out_of_range(metadata: Any, value: Any) -> bool:
    """Whether a number violates the field's range or is infinite or NaN (``None`` and non-numbers are not
    range-checked): ``lr = inf`` trained to a non-finite stop, ``epochs = inf`` failed deep in the set-up."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return _non_finite(value) or any(k in metadata and not op(value, metadata[k]) for k, (op, _) in _BOUNDS.items())


def check_ranges(options: Any) -> None:
    """Raise ValueError for the first field of a dataclass instance outside its range, or given a fractional
    number where it counts something (Python callers; ``batch_size=2.7`` was truncated to 2)."""
    hints = field_types(type(options))
    for f in fields(options):
        value = getattr(options, f.name)
        allowed = typing.get_args(hints[f.name]) or (hints[f.name],)
        if isinstance(value, float) and int in allowed and float not in allowed:
            raise ValueError(f"--{f.name.replace('_', '-')}: must be a whole number, got {value}")
        if out_of_range(f.metadata, value):
            raise ValueError(f"--{f.name.replace('_', '-')}: must be {range_text(f.metadata, value)}, got {value}")


def type_problem(options: Any) -> str | None:
    """The first field of a dataclass instance whose value is not of its type (a hand-edited config.json: "tasks":
    5 failed later as "'int' object has no attribute 'split'"), as "--name: expected T, got V"; None when all are."""
    hints = field_types(type(options))
    for f in fields(options):
        value, hint = getattr(options, f.name), hints[f.name]
        allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        ok = False
        for t in allowed:
            if typing.get_origin(t) is typing.Literal:
                ok = value in typing.get_args(t)
            elif t is type(None):
                ok = value is None
            elif t is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif t is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(t, type):
                ok = isinstance(value, t)
            if ok:
                break
        if not ok:
            return f"--{f.name.replace('_', '-')}: expected {describe_allowed(f, hint)}, got {value!r}"
    return None


def non_none(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return functools.reduce(operator.or_, args), True
    return tp, False


def describe_allowed(f: Field, tp: Any) -> str:
    """What a field of type ``tp`` accepts, in words: ``one of "a", "b"``, ``an integer >= 1``, ``true or false``,
    ... (its range from the metadata; "or leave it out" where it may be None): the one description of a field, in
    the command line's and config files' messages and :func:`type_problem`'s."""
    inner, optional = non_none(tp)
    rng = range_text(f.metadata)
    if typing.get_origin(inner) is Literal:
        text = "one of " + ", ".join(json.dumps(c) for c in typing.get_args(inner))
    elif inner is bool:
        text = "true or false"
    elif inner is int:
        text = "an integer"
    elif inner is float:
        text = "a number"
    elif inner is str:
        text = "a string"
    else:
        text = f"a value of type {getattr(inner, '__name__', str(inner))}"
    if rng:
        text += f" {rng}"
    if optional:
        text += " (or leave it out)"
    return text


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of an options dataclass (the module uses postponed annotations)."""
    return typing.get_type_hints(cls)
