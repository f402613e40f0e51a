"""Setup: the backbone, tasks, heads and adapters of a run, built once; used by training and evaluation."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.attach import attach, attach_info
from ..adapters.grow import add_task
from ..adapters.scopes import disabled
from ..backbones import load_backbone
from ..backbones.image_record import image_record
from ..config import MTLLoRAConfig
from ..data.common import same_folder
from ..data.records import Split
from ..io import ADAPTER_CONFIG, AdapterFileError, Pretrained, find_adapter_dir, load_pretrained, read_adapter_config
from ..io.identity import model_identity
from ..io.tensor_files import record_sha256
from ..options import TrainOptions
from ..tasks import TaskSpec, build_kind, resolve_tasks
from ..tasks.registry import get_kind
from ..tasks.spec import SpecError, spec_digests
from ..wording import tasks_named
from .model import MultiTaskModel

logger = logging.getLogger(__name__)


@dataclass
class Setup:
    """Everything built before the loop; also used by evaluation of a finished run.

    ``specs``/``kinds`` cover every task of the adapter (all are evaluated); ``train_splits`` only the
    tasks this run trains (all of them, or the new ones of an ``--extend`` run). ``model`` and ``config`` are
    None for a base model scored zero-shot without adapters or heads (``eval`` without ``--adapter``).
    """

    backbone: Any
    specs: list
    kinds: dict
    model: MultiTaskModel | None
    config: MTLLoRAConfig | None
    train_splits: dict = field(default_factory=dict)
    extended_from: list[str] = field(default_factory=list)
    #: The base model an --extend run loaded (backbone, pretrained, base_dtype): the adapter's recorded one unless
    #: --backbone/--pretrained/--base-dtype say.
    base: dict[str, Any] | None = None
    new_adapter_values: int | None = None
    #: An --extend run's source adapter: SHA-256 of its record (file digests, config); checkpoints record it.
    source_sha256: str | None = None
    #: Evaluation splits read so far, by (task, split): read once per run, not at every evaluation.
    eval_data: dict[tuple[str, str], Split] = field(default_factory=dict, repr=False)
    #: Tasks whose files are read from another folder than the run's --data-root: an --extend run's old tasks
    #: (the folder their adapter recorded), an evaluation's tasks when no --data-root is given.
    data_roots: dict[str, str] = field(default_factory=dict)
    #: The folders the --extend source recorded for its tasks: what the extended adapter records for them.
    source_data_roots: dict[str, str] = field(default_factory=dict)

    @property
    def spec_sha256(self) -> dict[str, str]:
        """Each task's spec file settings as this run read them (tasks with a file): checkpoints record them."""
        return spec_digests(self.specs)

    @cached_property
    def data_sha256(self) -> dict[str, str]:
        """Each trained task's training rows (``Split.rows_sha256``): checkpoints record them."""
        return {name: split.rows_sha256 for name, split in self.train_splits.items()}

    @cached_property
    def base_samples(self) -> dict[str, list[float]]:
        """A few values of each frozen base weight (``weight_samples`` of :func:`~..io.identity.model_identity`, the
        trainable ones left out): checkpoints record them, as the base is read again on resume."""
        inner = self.model.model
        trained = {n for n, p in inner.named_parameters() if p.requires_grad}
        return {n: v for n, v in model_identity(inner)["weight_samples"].items() if n not in trained}

    @property
    def inputs(self) -> dict[str, Any]:
        """Digests of what the run reads -- spec files, training rows, an --extend source, the base weights (sampled)
        -- that a checkpoint records and a resume checks; and the folders an --extend run reads old tasks from
        (``data_roots``)."""
        return {"spec_sha256": self.spec_sha256, "data_sha256": self.data_sha256, "base_samples": self.base_samples,
                **({"source_sha256": self.source_sha256} if self.source_sha256 else {}),
                **({"extend_task_roots": dict(self.data_roots)} if self.extended_from else {})}

    def data_root(self, task: str, default: str | None) -> str | None:
        """The folder task ``task``'s files are read from: its own (``data_roots``), else ``default``."""
        return self.data_roots.get(task, default)

    def recorded_roots(self, data_root: str | None) -> dict[str, str | None]:
        """The folder of each file-based task for the adapter to record: the new tasks' ``data_root``; an
        --extend source's tasks keep what the source recorded (nothing when it recorded nothing)."""
        return {s.name: self.source_data_roots.get(s.name) if s.name in self.extended_from else data_root
                for s in self.specs if s.data.source == "files"}

    def split_data(self, spec: TaskSpec, split: str, data_root: str | None) -> Split:
        """Split ``split`` of task ``spec`` for scoring (from ``data_root`` unless the task has its own folder),
        read on first use and kept."""
        key = (spec.name, split)
        if key not in self.eval_data:
            self.eval_data[key] = spec.load_split(split, self.data_root(spec.name, data_root))
        return self.eval_data[key]


def task_kinds(specs: list[TaskSpec], backbone: Any, data_root: str | None,
               train_splits: dict[str, Split] | None = None) -> tuple[dict[str, Split], dict[str, Any]]:
    """Each task's training split and kind, built on it (its vocabulary: class names, answer lists); a task the
    backbone cannot serve is refused before any data is read here. ``train_splits``: the splits if already read
    (``train`` reads built-in ones before the backbone loads where they may refuse --batch-size). (``train``,
    ``--extend`` and ``eval`` without an adapter build them so.)"""
    for s in specs:
        get_kind(s.kind).check_backbone(s, backbone)
    if train_splits is None:
        train_splits = {s.name: s.load_split("train", data_root) for s in specs}
    return train_splits, {s.name: build_kind(s, train_splits[s.name], backbone) for s in specs}


def check_data_root_read(specs: list[TaskSpec], data_root: str | None, extended: Collection[TaskSpec] = (),
                         own: dict[str, str] | None = None) -> None:
    """Refuse a ``--data-root`` that no task reads: built-in tasks are made by the built-in world, so ``--tasks vqa
    --data-root /data/vqav2`` trained and scored the world's VQA, not the files. ``extended``: an --extend run's
    old tasks (the adapter's), which may read it too, unless ``own`` holds the folder one reads instead (as
    :func:`own_folders` found it)."""
    elsewhere = [s.name for s in extended if s.data.source != "builtin" and s.name in (own or {})]
    every = [*extended, *specs]
    if data_root and every and all(s.data.source == "builtin" or s.name in elsewhere for s in every):
        which = "of --tasks" if not extended else "of --tasks or of the adapter --extend grows"
        builtin = ", ".join(s.name for s in every if s.name not in elsewhere)
        folders = sorted({(own or {})[t] for t in elsewhere})
        others = (f"; {tasks_named(elsewhere, 'read')} the folder{'s' if len(folders) > 1 else ''} the adapter "
                  f"records ({', '.join(folders)})" if elsewhere else "")
        raise SpecError(f"--data-root {data_root}: no task {which} reads files ({builtin} are built-in tasks, made by "
                        f"the built-in world{others}), so it would change nothing; drop it, or name task spec files "
                        "(.toml) whose [data] reads files under it (README: Tasks)")


def build_setup(opts: TrainOptions, device: torch.device, specs: list[TaskSpec] | None = None,
                train_splits: dict[str, Split] | None = None) -> Setup:
    """Backbone, task specs and kinds, heads (initialised to the zero-shot rule), adapters. ``specs``: the
    ``--tasks`` specs if already read (else they are read here); ``train_splits``: their training splits if
    already read."""
    specs = resolve_tasks(opts.tasks) if specs is None else specs
    if not opts.resume:   # (a resumed run keeps what it started with)
        check_data_root_read(specs, opts.data_root)
    backbone = load_backbone(opts.backbone, opts.pretrained, device, base_dtype=opts.base_dtype,
                             image_max_pixels=opts.image_max_pixels, image_reading=opts.image_reading,
                             pretrained_as="--pretrained")
    if opts.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    train_splits, kinds = task_kinds(specs, backbone, opts.data_root, train_splits)
    heads = nn.ModuleDict({name: kind.build_head(backbone) for name, kind in kinds.items()})
    targets: Any = opts.targets if opts.targets == "default" else json.loads(opts.targets)
    cfg = MTLLoRAConfig(tasks=list(kinds), r=opts.rank, alpha=opts.alpha, n_up=opts.n_up,
                        temperature=opts.temperature, dropout=opts.dropout, lambda_type=opts.lambda_type,
                        method=opts.method, targets=targets)
    attach(backbone.model, cfg)
    model = MultiTaskModel(backbone, kinds, heads).to(device)
    return Setup(backbone, specs, kinds, model, cfg, train_splits)


def extend_setup(opts: TrainOptions, device: torch.device, specs: list[TaskSpec] | None = None,
                 given_names: Collection[str] | None = None, train_splits: dict[str, Split] | None = None) -> Setup:
    """A trained adapter plus new tasks: only the new Λ_t, w_t and heads will train (see add_task).
    ``specs``: the new tasks' specs (``--tasks``) if already read; ``given_names``: the options named on the
    command line or in the config file (None: those not at their default), so that an explicit ``--backbone
    builtin`` is checked against the adapter's base like any other, not taken for the default; ``train_splits``:
    the new tasks' training splits if already read."""
    new_specs = resolve_tasks(opts.tasks) if specs is None else specs
    src = Path(opts.extend)
    named = ("backbone" in given_names if given_names is not None and not opts.resume
             else opts.backbone != "builtin")   # (a resumed run's config.json holds what its first start used)
    given = opts.backbone if named else None
    adapter_dir = find_adapter_dir(src)
    # an old task saved without its state rebuilds it from its own folder, as it is scored (not --data-root); a config
    # that cannot be read is said as such (not as a base model to give elsewhere: the AdapterFileError below)
    own = own_folders(read_adapter_config(adapter_dir, verify=False), opts.data_root)
    try:
        lp = load_pretrained(adapter_dir, device, backbone=given, pretrained=opts.pretrained,
                             data_root=opts.data_root, data_roots=own, is_trainable=True, base_dtype=opts.base_dtype,
                             backbone_as="--backbone", pretrained_as="--pretrained")
    except AdapterFileError as e:
        if given is None and opts.pretrained is None:
            raise
        raise AdapterFileError(f"{e} (--extend reads the adapter's own base model: give --backbone / --pretrained "
                               "only where that model now lives elsewhere, or leave them out)") from e
    old = list(lp.config.tasks)
    missing = [t for t in old if t not in lp.kinds or t not in lp.heads]
    if missing:
        raise ValueError(f"--extend {src}: the adapter has no saved spec or head for {tasks_named(missing)}; "
                         "it cannot be evaluated or re-saved whole")
    clash = [s.name for s in new_specs if s.name.casefold() in {t.casefold() for t in old}]   # (add_task's rule)
    if clash:
        raise ValueError(f"--extend {src}: {tasks_named(clash, 'are')} already in the adapter {old} (names that "
                         "differ only in case count as one: one file per task); --tasks must name new tasks")
    if not opts.resume:   # (a resumed run keeps what it started with)
        check_data_root_read(new_specs, opts.data_root, [lp.specs[t] for t in old], own)
    bb = lp.backbone
    train_splits, new_kinds = task_kinds(new_specs, bb, opts.data_root, train_splits)
    if opts.grad_checkpointing:
        bb.set_grad_checkpointing(True)
    kinds = dict(lp.kinds)
    heads = nn.ModuleDict(lp.heads)
    for head in heads.values():
        head.requires_grad_(False)
    added = 0
    for spec in new_specs:
        kinds[spec.name] = new_kinds[spec.name]
        added += add_task(bb.model, spec.name).trainable
        with disabled(bb.model):  # the new head starts from the base model's zero-shot rule
            heads[spec.name] = kinds[spec.name].build_head(bb)
    head_values = sum(p.numel() for s in new_specs for p in heads[s.name].parameters() if p.requires_grad)
    if not added and not head_values:
        raise ValueError(f"--extend {src}: method {lp.config.method!r} shares every adapter tensor across tasks and "
                         f"the new {tasks_named([s.name for s in new_specs], 'have')} no head parameters, so "
                         "nothing would train; extend an mtl_lora, moe_lora or task_lora adapter, or train a new run "
                         "with all tasks")
    specs = [lp.specs[t] for t in old] + new_specs
    roots = _old_task_roots(lp, old, opts.data_root, src, own, resuming=bool(opts.resume))
    model = MultiTaskModel(bb, kinds, heads).to(device)
    recorded = lp.doc.get("base") or {}
    base = {"backbone": recorded.get("backbone") if opts.backbone == "builtin" else opts.backbone,
            "pretrained": recorded.get("pretrained") if opts.pretrained is None else opts.pretrained,
            "base_dtype": recorded.get("base_dtype", "auto") if opts.base_dtype == "auto" else opts.base_dtype,
            **({"image_max_pixels": recorded["image_max_pixels"]} if recorded.get("image_max_pixels") else {}),
            # how the backbone reads images, as load_pretrained set it from the adapter's record (None: one way only)
            "image_reading": image_record(bb.model).reading}
    source = record_sha256({"files": lp.doc.get("files") or {}, "config": lp.doc.get("config")})
    return Setup(bb, specs, kinds, model, attach_info(bb.model).config, train_splits, extended_from=old,
                 new_adapter_values=added, base=base, source_sha256=source, data_roots=roots,
                 source_data_roots={t: r for t, r in (lp.doc.get("data_roots") or {}).items() if t in old})


def extended_options(opts: TrainOptions, setup: Setup, given: Collection[str] | None = None) -> TrainOptions:
    """An --extend run's options completed from the adapter it extends (``setup``, :func:`extend_setup`): the new
    tasks take its shape, base model, image area and image reading; another one asked for (``given``: as
    :meth:`TrainOptions.check_extend_shape` takes it) is refused by name, as it would be ignored. A resumed run keeps
    the image reading its config.json records (:func:`~mtl_lora_vl.rundir.check_options_unchanged` compares it)."""
    c = setup.config
    shape = dict(rank=c.r, alpha=c.alpha, n_up=c.n_up, temperature=c.temperature, dropout=c.dropout,
                 lambda_type=c.lambda_type, method=c.method,
                 targets=c.targets if isinstance(c.targets, str) else json.dumps(c.targets))
    opts.check_extend_shape(shape, given)
    area, reading = setup.base.get("image_max_pixels"), setup.base.get("image_reading")
    if opts.image_max_pixels is not None and opts.image_max_pixels != area:
        raise ValueError(f"--extend {opts.extend}: the new tasks take the adapter's image area (image_max_pixels "
                         f"{area if area else 'not recorded: the 448² default'}), so --image-max-pixels "
                         f"{opts.image_max_pixels} would be ignored; drop it (from the command line or the --config "
                         "file), or train a new run with all tasks at that area")
    if opts.image_reading is not None and opts.image_reading != reading:
        raise ValueError(f"--extend {opts.extend}: the new tasks read images as the adapter's were read (image_reading "
                         f"{reading if reading else 'none: its backbone reads images one way only'}), so "
                         f"--image-reading {opts.image_reading} would be ignored; drop it (from the command line or "
                         "the --config file), or train a new run with all tasks read that way")
    if opts.resume:   # as its config.json has it (none from before the option: its checkpoints must record none)
        reading = opts.image_reading
    return replace(opts, backbone=setup.base["backbone"], pretrained=setup.base["pretrained"],
                   base_dtype=setup.base["base_dtype"], image_max_pixels=area, image_reading=reading, **shape)


def own_folders(doc: dict[str, Any], data_root: str | None) -> dict[str, str]:
    """The folders an adapter (``doc``: its config) records for its tasks that differ from ``data_root`` and are
    still folders: a task saved without its state is rebuilt from its own (``load_pretrained(data_roots=)``: the
    head's rows are that folder's classes, answers), where ``eval`` scores it on ``data_root`` and an --extend run
    on its own folder."""
    return {task: root for task, root in (doc.get("data_roots") or {}).items()
            if not same_folder(root, data_root) and Path(root).is_dir()}


def _old_task_roots(lp: Pretrained, old: list[str], data_root: str | None, src: Path, own: dict[str, str],
                    resuming: bool = False) -> dict[str, str]:
    """The folders an --extend run reads its old file-based tasks from: the ones their adapter recorded (the
    run's --data-root is the new tasks'), when they differ from --data-root and still exist (``own``, as
    :func:`own_folders` found them for ``load_pretrained``). ``resuming``: a ``--resume`` (which takes no per-task
    folder; its checkpoint check refuses a task that loses its own)."""
    recorded = lp.doc.get("data_roots") or {}
    roots = {}
    for task in old:
        root = recorded.get(task)
        if lp.specs[task].data.source != "files" or same_folder(root, data_root):
            continue
        if not root:
            logger.warning("--extend %s: the adapter does not record the folder task %r was trained on (saved before "
                           "adapters recorded it); it is read from --data-root %s: if that folder holds other files "
                           "under the same names, its scores are on other data", src, task, data_root)
            continue
        if task in own:
            roots[task] = own[task]
        elif resuming:
            logger.warning("--extend %s: task %r was trained on files under %s, which is no longer a folder; put it "
                           "back, or write the folder it moved to as data_roots[%r] in %s", src, task, root, task,
                           find_adapter_dir(src) / ADAPTER_CONFIG)
        elif data_root is None:
            logger.warning("--extend %s: task %r was trained on files under %s, which is no longer a folder; give "
                           "the folder it moved to with --data-root DIR", src, task, root)
        else:
            logger.warning("--extend %s: task %r was trained on files under %s, which is no longer a folder; it is "
                           "scored on --data-root %s instead", src, task, root, data_root)
    return roots

