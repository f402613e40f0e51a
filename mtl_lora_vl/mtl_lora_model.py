"""MTLLoRAModel: an adapted model in the shape of PEFT's ``PeftModel``, built on the package's functions.

Everything here delegates to the functional API (``attach``, ``route``, ``disabled``, ``merge``,
``save_adapter``, ``load_adapter``), which stays the reference; the class only gives it PEFT's names
and habits (frozen loading for inference, ``merge_and_unload``, attribute pass-through). :func:`unload`
(in :mod:`.unloading`) takes the adapters out of a model again, with or without one task merged into the weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters.attach import attach, attach_info, check_config, merge, unmerge
from .adapters.compiled import compiled_call_running, skip_top_frame, traced_routing_error, watch_in_place
from .adapters.grow import AddedTask, add_task
from .adapters.layers import AdapterBank
from .adapters.routing import RoutingError, check_module, find_router
from .adapters.scopes import EagerScope, disabled, named, route
from .backbones.coca_generate import coca_generate, is_open_clip_coca
from .config import MTLLoRAConfig
from .io.adapter_files import load_adapter, read_adapter_config, require_head_modules, save_adapter
from .io.layout import AdapterFileError, check_adapter_path, state_file
from .log import warn_user
from .unloading import unload
from .whole_files import FileTooLarge, read_whole

__all__ = ["MTLLoRAModel", "unload"]

TaskSpec = str | int | torch.Tensor | Sequence[str] | Sequence[int]


class MTLLoRAModel(nn.Module):
    """A model with MTL-LoRA adapters on both towers, used the way a PEFT ``PeftModel`` is.

    ``MTLLoRAModel(model, config)`` attaches adapters to ``model`` (like ``peft.get_peft_model``);
    ``MTLLoRAModel(adapted_model)`` wraps a model ``attach`` already adapted. ``heads`` (task -> module)
    are the task heads that go with the adapter (PEFT's ``modules_to_save``). Load a saved adapter with
    :meth:`from_pretrained`, frozen for inference unless ``is_trainable=True``::

        model = MTLLoRAModel.from_pretrained(base_model, "run/adapter")      # eval mode, nothing trains
        with model.route(["vqa", "captioning"]):                             # one task per input row
            out = model.generate(input_ids=..., pixel_values=..., max_new_tokens=20)
        out = model(input_ids=..., pixel_values=..., tasks=["vqa", "captioning"])   # the same, one call
        plain = model.merge_and_unload("vqa")                                # the base class, vqa merged in

    Attributes the wrapper does not have (``generate``'s friends, ``config``, ``encode_image``, ...) come
    from the base model, as with PEFT.

    PEFT names and ours (the adapter math is DESIGN §2; with ``n_up=1`` and Λ_t = I it is plain LoRA)::

        PEFT                          mtl-lora-vl
        LoraConfig                    MTLLoRAConfig (one config for all tasks: tasks=[...])
        r                             r (rank of the shared A)
        lora_alpha                    alpha (scaling alpha / r in both)
        target_modules                targets: "default" (the family table) or {"image": [regex], "text": [regex]}
        lora_dropout                  dropout (on the adapter input, before A)
        modules_to_save               the task heads (heads=...; heads.safetensors)
        adapter / adapter_name        task (every task in one adapter directory)
        adapter_names=[...]           tasks=[...] or route(ids): one task per input row
        set_adapter(name)             route(name), a context manager
        disable_adapter()             disable_adapters() (both spellings work)
        merge_and_unload()            merge_and_unload(task); merge_adapter(task), unmerge_adapter(), unload()
                                      (task may be left out of a one-task adapter)
        get_peft_model(model, cfg)    MTLLoRAModel(model, cfg) or mlv.attach(model, cfg)
        adapter_config.json           mtl_lora_config.json (names of their own, so PEFT cannot take
        adapter_model.safetensors     mtl_lora_model.safetensors   the directory for one of its own)

    ``mlv.export_lora(model, tasks, path)`` writes PEFT's own files for some tasks.
    ``config`` stays the base model's (e.g. a Hugging Face config); the adapter's is :attr:`mtl_lora_config`.
    """

    def __init__(self, model: nn.Module, config: MTLLoRAConfig | None = None,
                 heads: dict[str, nn.Module] | None = None):
        super().__init__()
        if isinstance(model, MTLLoRAModel):
            raise TypeError("MTLLoRAModel: the model is already wrapped; use it as it is")
        check_module(model, "MTLLoRAModel")
        if config is not None:
            check_config(config, "MTLLoRAModel")
        require_head_modules(heads or {}, "MTLLoRAModel")
        try:
            tasks = list(config.tasks) if config is not None else attach_info(model).config.tasks
        except RoutingError as e:
            if "has no MTL-LoRA adapters" not in str(e):
                raise
            raise RoutingError(f"MTLLoRAModel: {type(model).__name__} has no MTL-LoRA adapters; pass a config to "
                               "attach them, MTLLoRAModel(model, MTLLoRAConfig(tasks=[...])), or load trained ones "
                               "with MTLLoRAModel.from_pretrained(model, ADAPTER_DIR)") from None
        unknown = sorted(set(heads or {}) - set(tasks))
        if unknown:  # checked before attaching: a corrected retry can still attach to the same model
            raise ValueError(f"MTLLoRAModel: heads for {unknown}, which are not tasks of the adapter {tasks}")
        if config is not None:
            attach(model, config)
        self.base_model = model
        self.heads = nn.ModuleDict(heads or {})

    # ------------------------------------------------------------------------------------------ loading, saving

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, adapter_dir: str | Path, is_trainable: bool = False,
                        heads: dict[str, nn.Module] | None = None, *,
                        check_base_weights: bool = True) -> MTLLoRAModel:
        """Load the adapter directory ``adapter_dir`` (``save_pretrained`` / ``save_adapter`` / a run's
        ``adapter/``) onto a fresh ``base_model``, and ``heads`` from it when given.

        As PEFT: frozen for inference (adapters and heads ``requires_grad=False``, eval mode) unless
        ``is_trainable=True``. A PEFT directory is refused with a message saying how to load it instead.
        ``check_base_weights=False``: load onto other weights of the same architecture (see ``load_adapter``).
        """
        check_adapter_path(adapter_dir, "MTLLoRAModel.from_pretrained(base_model, adapter_dir)", "adapter_dir")
        load_adapter(base_model, adapter_dir, heads=heads, is_trainable=is_trainable,
                     check_base_weights=check_base_weights)
        model = cls(base_model, heads=heads)
        # save_pretrained keeps what it recorded (base, specs, vocabularies), from any working directory
        model._source = Path(adapter_dir).expanduser().absolute()
        if not is_trainable:
            model.eval()
        return model

    def save_pretrained(self, save_directory: str | Path, *, heads: dict[str, nn.Module] | None = None,
                        task_specs: dict[str, str | Path] | None = None, base: dict[str, Any] | None = None,
                        kinds: dict[str, Any] | None = None, overwrite: bool = False,
                        data_roots: dict[str, str | Path] | None = None, safe_serialization: bool = True) -> Path:
        """Write the native adapter directory (every task, and the heads) with ``save_adapter``; return it.

        ``heads`` defaults to the wrapper's own; ``task_specs``, ``base``, ``kinds`` and ``data_roots`` are as in
        ``save_adapter``, and for a model :meth:`from_pretrained` loaded default to what its directory
        recorded (base model, task specs, answer / class vocabularies, data folders), so a round trip keeps them;
        the per-task ones given add to (or replace, task by task) the recorded ones. Unlike
        PEFT, an existing non-empty directory is replaced only with ``overwrite=True``. For PEFT LoRA files
        of some tasks use ``mlv.export_lora``. ``safe_serialization`` is PEFT's argument: the files are always
        safetensors (False is refused).
        """
        check_adapter_path(save_directory, "MTLLoRAModel.save_pretrained(save_directory)", "save_directory")
        if safe_serialization is not True:
            raise ValueError("MTLLoRAModel.save_pretrained writes safetensors only (no pickled .bin files): leave "
                             "safe_serialization out")
        heads = dict(self.heads) if heads is None else heads
        self._check_adapted()
        source = getattr(self, "_source", None)
        if source is not None:
            base, task_specs, kinds, data_roots = self._recorded(source, heads, base, task_specs, kinds, data_roots)
        return save_adapter(self.base_model, save_directory, heads=heads, task_specs=task_specs, base=base,
                            kinds=kinds, overwrite=overwrite, data_roots=data_roots)

    def _recorded(self, source: Path, heads: dict[str, nn.Module], base: dict[str, Any] | None,
                  task_specs: dict[str, str | Path] | None, kinds: dict[str, Any] | None,
                  data_roots: dict[str, str | Path] | None) -> tuple:
        """``base``, ``task_specs``, ``kinds`` and ``data_roots`` where not given: those the loaded directory
        recorded."""
        try:
            doc = read_adapter_config(source, verify=False)
        except AdapterFileError as e:   # e.g. a temporary download folder, removed since
            warn_user(f"save_pretrained: the directory this model was loaded from cannot be read any more ({e}); "
                          "its base model, task specs, vocabularies and data folders are not saved (pass base=, "
                          "task_specs=, kinds=, data_roots=)")
            return base, task_specs, kinds, data_roots
        tasks = set(self.tasks)
        # a recorded head without tensors (a generative task's) loses nothing: load_pretrained rebuilds it
        dropped = sorted(t for t, keys in (doc.get("heads") or {}).items() if keys and t not in heads)
        if dropped:
            warn_user(f"save_pretrained: {source} holds heads for {dropped}, which are not saved (load them with "
                          "from_pretrained(..., heads={task: module}) or pass heads=...)")
        if base is None:
            base = doc.get("base") or None
        recorded_specs = {t: source / f for t, f in (doc.get("task_specs") or {}).items()
                          if t in tasks and (source / f).is_file()}
        try:
            recorded_kinds = {t: _SavedState(json.loads(read_whole(source / state_file(t))))
                              for t in tasks if (source / state_file(t)).is_file()}
        except FileTooLarge as e:
            raise AdapterFileError(f"{e}; it is not the task state save_adapter wrote: copy {source} again") from None
        recorded_roots = {t: r for t, r in (doc.get("data_roots") or {}).items() if t in tasks}
        return (base, {**recorded_specs, **(task_specs or {})}, {**recorded_kinds, **(kinds or {})},
                {**recorded_roots, **(data_roots or {})})

    # ------------------------------------------------------------------------------------------ the adapter

    @property
    def mtl_lora_config(self) -> MTLLoRAConfig:
        """The adapter's :class:`MTLLoRAConfig` (PEFT's ``peft_config``)."""
        self._check_adapted()
        return attach_info(self.base_model).config

    @property
    def tasks(self) -> list[str]:
        """The adapter's task names, in id order (PEFT's adapter names)."""
        return list(self.mtl_lora_config.tasks)

    def get_base_model(self) -> nn.Module:
        """The adapted base model itself (adapter layers in place), as PEFT's ``get_base_model``."""
        return self.base_model

    def route(self, tasks: TaskSpec, *, recompute: bool = True) -> AbstractContextManager:
        """Context manager: every forward inside serves ``tasks`` (a name, or one name / id per input row);
        ``recompute=False`` where no forward inside is checkpointed (see :func:`mtl_lora_vl.route`). This wrapper
        compiled in place (``model.compile()``) is watched toward Dynamo's recompile limit as the scope's model is; a
        ``torch.compile(model)`` wrapper cannot be seen from here: route it by ``mlv.route(compiled, tasks)``."""
        self._check_adapted()
        self._watch_in_place(routed=True)
        return named(route(self.base_model, tasks, recompute=recompute), "model.route(tasks)")

    def disable_adapters(self) -> AbstractContextManager:
        """Context manager: the base model without adapters inside (zero-shot); PEFT's ``disable_adapter``.
        Called as a statement (transformers' in-place ``disable_adapters()``) it would do nothing: a warning
        says so when the returned scope is dropped without being entered. Compiled in place, watched as
        :meth:`route`'s."""
        self._check_adapted()
        self._watch_in_place(routed=False)
        return named(disabled(self.base_model), "model.disable_adapters()")

    disable_adapter = disable_adapters  # PEFT's spelling

    #: The keywords by which a call routes itself (:meth:`forward`), which a compiled call notes by their value.
    route_keywords = ("tasks", "adapter_names")

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``nn.Module.compile`` (compile in place), then watch this wrapper toward Dynamo's recompile limit from its
        first call: a call given its own tasks (``model(x, tasks=[...])``) opens no scope that would watch it. A base
        model whose adapters ``unload(model.base_model)`` (the function) took out compiles unwatched, as before."""
        super().compile(*args, **kwargs)
        if self.__dict__.get("_unloaded") is None:
            try:
                router = find_router(self._modules["base_model"])
            except RoutingError:   # no adapters left: nothing routes it
                return
            watch_in_place(self, router, routed=True)

    def _watch_in_place(self, routed: bool) -> None:
        """Watch this wrapper, where it is compiled in place (``model.compile()``), toward Dynamo's recompile limit for
        one of its scopes (``routed``: a route scope's). Uncompiled (``_compiled_call_impl`` unset) nothing is looked
        up: the scope costs what it did before the wrapper was watched (the router lookup and compiled-entry search
        raised an eager ``disable_adapters`` scope 19.2 -> 30.4 µs, review 463)."""
        if self.__dict__.get("_compiled_call_impl") is None or torch.compiler.is_compiling():
            return
        # the base model's router, no module walk; read from _modules (self.base_model is nn.Module.__getattr__'s
        # fallback after a failed lookup: 1 us, the most of this call)
        watch_in_place(self, find_router(self._modules["base_model"]), routed)

    # PEFT / transformers adapter methods with other shapes here: a clear error, not transformers' own
    # (reached through attribute pass-through, it asked for another PEFT version or a PEFT adapter file).
    def set_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Refused: PEFT's method has no MTL-LoRA meaning here; the error names what to use instead."""
        raise _no_such("set_adapter(name)", "a route scope: `with model.route(name):` (or tasks=... per call)")

    def enable_adapters(self, *args: Any, **kwargs: Any) -> None:
        """Refused: PEFT's method has no MTL-LoRA meaning here; the error names what to use instead."""
        raise _no_such("enable_adapters()", "adapters are on unless inside `with model.disable_adapters():`")

    def load_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Refused: PEFT's method has no MTL-LoRA meaning here; the error names what to use instead."""
        raise _no_such("load_adapter(path)", "MTLLoRAModel.from_pretrained(base_model, path), or "
                       "mlv.load_adapter(model, path) on a model without adapters")

    def add_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Refused: PEFT's method has no MTL-LoRA meaning here; the error names what to use instead."""
        raise _no_such("add_adapter(name, config)", "model.add_task(name): one adapter serves every task")

    def delete_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Refused: PEFT's method has no MTL-LoRA meaning here; the error names what to use instead."""
        raise _no_such("delete_adapter(name)", "a task cannot be taken out of the adapter; model.unload() takes the "
                       "adapters out of the model (merge_and_unload(task) keeps one task merged in)")

    def get_adapter_state_dict(self, *args: Any, **kwargs: Any) -> None:
        """Refused: PEFT's method has no MTL-LoRA meaning here; the error names what to use instead."""
        raise _no_such("get_adapter_state_dict()", "model.save_pretrained(dir) writes every task's tensors; "
                       "mlv.export_lora(model, task, dir) one task's as a PEFT LoRA")

    def push_to_hub(self, *args: Any, **kwargs: Any) -> None:
        """Refused: the base model's own ``push_to_hub`` would upload its full weights, not the adapter."""
        raise _no_such("push_to_hub(repo_id)", "model.save_pretrained(dir), then huggingface_hub's "
                       "upload_folder(folder_path=dir, repo_id=...) uploads the adapter (the base model's "
                       "push_to_hub, which this wrapper would otherwise reach, uploads the whole base model)")

    def add_task(self, name: str) -> AddedTask:
        """Grow the adapter by task ``name`` (only its own tensors train); see ``mlv.add_task``. Returns the
        handle whose ``trainable`` counts the new values and whose ``freeze_old_rows(optimizer)`` keeps the
        old tasks exact through that optimizer's steps."""
        self._check_adapted()
        return add_task(self.base_model, name)

    def merge_adapter(self, task: str | None = None) -> None:
        """Fold ``task`` into the base weights in place (undo with :meth:`unmerge_adapter`); ``task`` may be left
        out of a one-task adapter only (PEFT's argument-free call)."""
        self._check_adapted()
        merge(self.base_model, self._one_task(task, "merge_adapter"))

    def unmerge_adapter(self) -> None:
        """Restore the exact base weights after :meth:`merge_adapter`."""
        self._check_adapted()
        unmerge(self.base_model)

    def merge_and_unload(self, task: str | None = None) -> nn.Module:
        """The plain base model (its own class, no adapter modules left) with ``task`` merged into its
        weights; modifies the wrapped model in place, so use the returned model afterwards. ``task`` may be left
        out of a one-task adapter only."""
        self._check_adapted()
        task = self._one_task(task, "merge_and_unload")
        model = unload(self.base_model, task)
        self._unloaded = f"merge_and_unload({task!r})"
        return model

    def _one_task(self, task: str | None, call: str) -> str:
        """``task``, or the adapter's only task when it was left out (as a PEFT user calls ``merge_and_unload()``)."""
        if task is not None:
            return task
        tasks = self.tasks
        if len(tasks) == 1:
            return tasks[0]
        raise TypeError(f"{call}() needs the task to merge: each task merges into different weights, and this "
                        f"adapter has {len(tasks)} ({tasks}); e.g. {call}({tasks[0]!r})")

    def unload(self) -> nn.Module:
        """The plain base model with the adapters taken out and the original weights (nothing merged)."""
        self._check_adapted()
        model = unload(self.base_model)
        self._unloaded = "unload()"
        return model

    def _check_adapted(self) -> None:
        """RoutingError naming the call that took the adapters out, where :meth:`unload` or :meth:`merge_and_unload`
        did (the base model's own 'has no MTL-LoRA adapters; call attach first' misled: this wrapper had them)."""
        call = self.__dict__.get("_unloaded")
        if call is not None:
            raise RoutingError(
                f"MTLLoRAModel: its adapters were taken out of the {type(self.base_model).__name__} by {call}; use "
                "the model that call returned (a plain model now), or MTLLoRAModel(model, MTLLoRAConfig(...)) / "
                "MTLLoRAModel.from_pretrained(fresh_base_model, ADAPTER_DIR) for adapters again")

    # ------------------------------------------------------------------------------------------ counting

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, all)`` parameter counts of the base model with adapters, and the heads (as PEFT);
        after ``add_task``, the old tasks' rows of a grown tensor are not trainable (they stay exact)."""
        trainable = total = 0
        for p in self.parameters():
            total += p.numel()
            if p.requires_grad:
                trainable += p.numel()
        for m in self.modules():
            if not isinstance(m, AdapterBank):
                continue
            trainable -= m.frozen_values()
            if m.frozen_task_rows and not m.lora_B.requires_grad and not m.lora_B.any():
                # add_task's `idle`: every B_i frozen at zero, so the grown rows get zero gradients (not counted,
                # as added.trainable and the trainer's report leave them out)
                trainable -= sum(getattr(m, n).numel() for n in m.task_tensor_names()
                                 if getattr(m, n).requires_grad) - m.frozen_values()
        return trainable, total

    def print_trainable_parameters(self) -> None:
        """Print the counts of :meth:`get_nb_trainable_parameters` in PEFT's format."""
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / max(total, 1):.4f}")

    # ------------------------------------------------------------------------------------------ pass-through

    def _routed(self, tasks: TaskSpec | None, adapter_names: Sequence[str] | None) -> AbstractContextManager:
        if tasks is not None and adapter_names is not None:
            raise TypeError("MTLLoRAModel: pass tasks= or adapter_names= (PEFT's name for it), not both")
        chosen = tasks if tasks is not None else adapter_names
        if chosen is not None:
            self._check_adapted()
        return nullcontext() if chosen is None else route(self.base_model, chosen)

    @torch.compiler.disable   # (Dynamo would convert it as a frame of its own: see forward)
    def _routed_eagerly(self, tasks: TaskSpec | None, adapter_names: Sequence[str] | None) -> AbstractContextManager:
        return EagerScope(self._routed(tasks, adapter_names), find_router(self._modules["base_model"]))

    #: The module whose forward Dynamo converts where this wrapper is compiled (its own runs eagerly: see forward).
    compiled_submodule = "base_model"

    def forward(self, *args: Any, tasks: TaskSpec | None = None, adapter_names: Sequence[str] | None = None,
                **kwargs: Any) -> Any:
        """The base model's forward; ``tasks`` (or PEFT's ``adapter_names``) routes it like ``route``. Compiled, this
        frame runs eagerly and the base model's is compiled (:func:`skip_top_frame`): the route is set up outside the
        graph, a graph per set of tasks, not per list, and a tensor of ids breaks none. Inside another module's
        compiled forward it is traced, a graph per list (Dynamo guards on its values). A compiled call given no task and
        no route scope raises the RoutingError, with ``fullgraph=True`` too (Dynamo's 'Observed exception' replaced)."""
        _check_pixel_values(kwargs, "MTLLoRAModel.forward")
        eager = torch.compiler.is_compiling() or not compiled_call_running()   # (else a compiled call's top frame)
        if tasks is None and adapter_names is None:
            if eager:
                return self.base_model(*args, **kwargs)
            try:   # (in this frame: a function it calls would be converted as a frame of its own, fullgraph too)
                return self.base_model(*args, **kwargs)
            except torch._dynamo.exc.Unsupported as e:
                error = self._unrouted(e)
                if error is None:
                    raise
                raise error from e   # (Dynamo's, kept: the layer and the user code it traced)
        with self._routed(tasks, adapter_names) if eager else self._routed_eagerly(tasks, adapter_names):
            return self.base_model(*args, **kwargs)

    @torch.compiler.disable   # (as _routed_eagerly)
    def _unrouted(self, error: BaseException) -> RoutingError | None:
        """Ours in place of Dynamo's ``error`` from a compiled call given no tasks (:func:`traced_routing_error`): with
        ``fullgraph=True`` the adapted layers' RoutingError, traced, became Dynamo's 'Observed exception'."""
        return traced_routing_error(error, self._modules["base_model"], "MTLLoRAModel (compiled)")

    def generate(self, *args: Any, tasks: TaskSpec | None = None, adapter_names: Sequence[str] | None = None,
                 **kwargs: Any) -> Any:
        """The base model's ``generate``; ``tasks`` gives one task per input row, through every step. On an open_clip
        CoCa, open_clip's ``generate`` call (its arguments; greedy or beam search) run by the package's own caption
        decoding (:func:`~.backbones.coca_generate.coca_generate`): open_clip's needs transformers 4."""
        _check_pixel_values(kwargs, "MTLLoRAModel.generate")
        with self._routed(tasks, adapter_names):
            if is_open_clip_coca(self.base_model):
                return coca_generate(self.base_model, args, kwargs)
            return self.base_model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_model", "heads"):  # not set yet (inside __init__): no recursion
                raise
            if name.startswith("_mtl_lora"):  # the base model's adapter marker: this wrapper is not what attach adapted
                raise
            if name in ("active_adapters", "active_adapter"):   # PEFT's: hasattr / getattr(m, n, None) must work
                raise _NoSuchAttribute(f"MTLLoRAModel has no PEFT-style {name}: every task is served; a route "
                                       "scope chooses each row's task (model.tasks lists them)") from None
            return getattr(self.base_model, name)


skip_top_frame(MTLLoRAModel.forward)


def _check_pixel_values(kwargs: dict[str, Any], what: str) -> None:
    """Refuse integer ``pixel_values`` (uint8 pictures): a Hugging Face model casts them to its tower's dtype and reads
    0..255 as normalised values without a word, as the backbones' own calls refuse (``check_float_images``)."""
    pixels = kwargs.get("pixel_values")
    if isinstance(pixels, torch.Tensor) and not pixels.is_floating_point():
        raise ValueError(f"{what}: pixel_values must be normalised float images, got dtype {pixels.dtype}; give the "
                         "pictures to the model's image processor (AutoProcessor.from_pretrained(folder)(images=...)) "
                         "or to backbone.preprocess_uint8 first (they resize, scale and normalise them)")


class _SavedState:
    """A task kind's saved vocabulary (``tasks/<task>.state.json``) in the shape ``save_adapter`` writes."""

    def __init__(self, doc: dict[str, Any]):
        self.kind, self._state = doc.get("kind", ""), doc.get("state", {})

    def state(self) -> dict[str, Any]:
        return self._state


class _NoSuchAttribute(AttributeError):
    """A PEFT attribute MTLLoRAModel does not have (an AttributeError: hasattr is False)."""


def _no_such(peft_name: str, instead: str) -> RuntimeError:
    # For PEFT's methods, called rather than probed (attributes get _NoSuchAttribute, which hasattr reads as absent).
    return RuntimeError(f"MTLLoRAModel has no PEFT-style {peft_name}: {instead}")

