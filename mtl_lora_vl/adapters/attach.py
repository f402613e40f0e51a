"""Where adapters go in each model family, how they are put there, and what they cost.

Model-family knowledge (which classes, which module names of each tower) lives in
:mod:`mtl_lora_vl.families`; everything here is generic.
"""

from __future__ import annotations

import copy
import inspect
import re
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..config import TOWERS, MTLLoRAConfig
from ..families import FAMILIES, find_family, inner_family
from ..family_images import mend_outputs
from ..log import warn_user
from .attention import LoRAMultiheadAttention
from .fold_dtype import folded, refuse_float8
from .formation import Formation
from .generation import install_routed_generate
from .layers import ADAPTER_PARAM_NAMES, AdapterBank, LoRALinear
from .packed import pack_towers
from .routing import Router, check_module, find_adapted
from .row_images import RowImagesCheck, route_image_path


class AttachError(ValueError):
    """The model or the targets cannot take adapters as asked."""


@dataclass
class AttachInfo:
    """What ``attach`` records on the model (as ``model._mtl_lora``).

    While a task is merged (``router.merged_task``), every bank in ``layers`` holds the exact base
    weight in its ``merge_backup`` buffer.
    """

    config: MTLLoRAConfig
    router: Router
    family: str
    layers: dict[str, AdapterBank]  # adapted projection name -> its adapter bank
    towers: dict[str, str]          # adapted projection name -> "image" | "text"
    hooks: list[RemovableHandle] = field(default_factory=list)   # on the model's modules (adapters/packed.py)
    #: The one-image-per-row check and the module it is hooked on (generate runs it too: adapters/generation.py)
    row_check: tuple[nn.Module, RowImagesCheck] | None = None


def _batch_dim(model: nn.Module, name: str) -> int | None:
    """1 when the nearest enclosing module says ``batch_first=False`` (sequence-first layout), 0 when it says
    True, None when none says (the caller takes 0). torch's ``nn.Transformer*Layer`` keep the flag on their
    ``self_attn`` only."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        owner = model.get_submodule(".".join(parts[:i])) if i else model
        bf = getattr(owner, "batch_first", None)
        if not isinstance(bf, bool) and isinstance(getattr(owner, "self_attn", None), nn.MultiheadAttention):
            bf = owner.self_attn.batch_first
        if isinstance(bf, bool):
            return 0 if bf else 1
    return None


def _has_sequence_first(model: nn.Module) -> bool:
    return any(getattr(m, "batch_first", None) is False for m in model.modules())


#: A q, k or v projection that is a layer of its own (Hugging Face naming), which ``qkv_slices`` selects whole.
_SEPARATE_QKV = re.compile(r"(?:^|\.)([qkv])_proj$")


def select_targets(model: nn.Module, cfg: MTLLoRAConfig,
                   warn_overlap: bool = True) -> list[tuple[str, nn.Module, str, tuple[bool, ...] | None]]:
    """The projections ``attach`` would adapt, as ``(name, module, tower, out_slices)``; touches nothing.

    ``out_slices`` is set for packed q/k/v ``nn.Linear`` layers (from ``cfg.qkv_slices``), else None.
    Raises AttachError like ``attach`` for an unsupported class or targets that match nothing.
    """
    fam = find_family(model)
    if cfg.targets == "default":
        if fam is None:
            supported = ", ".join(f"{f.name} ({'/'.join(f.classes)})" for f in FAMILIES)
            raise AttachError(
                f"{type(model).__name__} is not a supported model class; supported: {supported}. For any other "
                "model pass explicit targets, e.g. MTLLoRAConfig(..., targets={'image': "
                "[r'blocks\\.\\d+\\.mlp\\.fc1$'], 'text': [...]})"
            )
        targets = fam.targets
    else:
        targets = {t: tuple(p) for t, p in cfg.targets.items()}
    packed = re.compile(fam.packed_qkv) if fam is not None and fam.packed_qkv else None
    unused = fam.unused(model) if cfg.targets == "default" and fam is not None and fam.unused else ()

    chosen: list[tuple[str, nn.Module, str, tuple[bool, ...] | None]] = []
    covered: list[str] = []
    both: list[str] = []   # custom targets: modules that more than one tower's regexes match
    other: list[tuple[str, str]] = []   # modules the targets name that are neither kind (no adapter)
    named: set[str] = set()   # towers whose regexes match some module name
    for name, module in model.named_modules():
        if any(name.startswith(c + ".") for c in covered):
            continue  # inside a MultiheadAttention already taken whole
        supported = isinstance(module, (nn.Linear, nn.MultiheadAttention))
        towers = [t for t in TOWERS if any(re.search(p, name) for p in targets.get(t, ()))]
        named.update(towers if name else ())
        tower = towers[0] if towers else None
        if tower is None or any(re.search(p, name) for p in unused):
            continue
        if not supported:
            other.append((name, type(module).__name__))
            continue
        if len(towers) > 1:
            both.append(name)
        own = _SEPARATE_QKV.search(name) if isinstance(module, nn.Linear) else None
        if own and own.group(1) not in cfg.qkv_slices:   # q_proj / k_proj / v_proj as their own layers
            continue
        _check_called(model, name, module)
        slices = None
        if isinstance(module, nn.Linear) and packed and packed.search(name):
            slices = tuple(c in cfg.qkv_slices for c in "qkv")
        chosen.append((name, module, tower, slices))
        if isinstance(module, nn.MultiheadAttention):
            covered.append(name)
    other = [(n, c) for n, c in other if n and not any(m.startswith(n + ".") for m, _, _, _ in chosen)]
    if other and warn_overlap:   # e.g. open_clip's own Attention (qk_norm, scaled_cosine_attn, scale_heads blocks)
        warn_user(f"attach: {len(other)} module(s) that the targets name are neither nn.Linear nor "
                  f"nn.MultiheadAttention and get no adapter (e.g. {other[0][0]!r}, class {other[0][1]}); name the "
                  "linear layers inside them in targets to adapt them")
    whole = [n for n, m, _, sl in chosen if isinstance(m, nn.Linear) and sl is None and re.search(r"qkv(_proj)?$", n)]
    if whole and cfg.qkv_slices != "qkv" and warn_overlap:
        warn_user(f"attach: qkv_slices={cfg.qkv_slices!r} does not apply to {len(whole)} packed q/k/v layer(s) "
                  f"(e.g. {whole[0]!r}), which this model family adapts whole (its q, k and v parts may differ in "
                  "size, as with grouped-query attention): every part of them is adapted")
    if both and warn_overlap:
        warn_user(f"attach: {len(both)} module(s) match the target regexes of more than one tower (e.g. "
                      f"{both[0]!r}); each is counted in the first tower, {TOWERS[0]!r}. The regexes are searched in "
                      "the full module names: anchor each to its tower's prefix (e.g. '^visual\\.' and "
                      "'^transformer\\.' on open_clip)")
    if not chosen:
        names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.MultiheadAttention))][:8]
        raise AttachError(
            f"targets {targets} matched no nn.Linear or nn.MultiheadAttention in {type(model).__name__}; "
            f"some candidate names: {names}"
        )
    bare = [t for t in targets if targets[t] and not any(tower == t for _, _, tower, _ in chosen)]
    typo = [t for t in bare if t not in named]   # custom targets: a typo in one tower's regexes, a silent half
    if (cfg.targets == "default" and bare) or (cfg.targets != "default" and typo):
        taken = {n for n, *_ in chosen}
        names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.MultiheadAttention))
                 and n not in taken and not any(n.startswith(c + ".") for c in covered)][:6]
    if cfg.targets != "default" and typo:
        raise AttachError(
            f"targets[{typo[0]!r}]: {list(targets[typo[0]])} match no module of this {type(model).__name__}, so its "
            f"{typo[0]} tower would get no adapters; fix the regexes (searched in the full module names; unadapted "
            f"layers include {names}), or leave the tower out of targets to adapt only the other")
    if cfg.targets == "default" and bare:  # e.g. an open_clip ResNet or timm-trunk image tower: a silent half
        raise AttachError(
            f"the default targets of the {fam.name} family match nothing in the {' and '.join(bare)} tower of this "
            f"{type(model).__name__} (a tower built differently from the family's usual one); pass targets for both "
            f"towers, e.g. targets={{'image': [r'...'], 'text': [...]}} (--targets JSON), naming its layers "
            f"(unadapted ones include {names})")
    return chosen


#: The hooks a module keeps (forward, forward pre-, backward), which a replacement module does not have.
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")

#: Forwards of nn.Linear subclasses that compute F.linear(x, weight, bias) (timm's casts only under TorchScript).
_PLAIN_LINEAR_FORWARDS = ("timm.layers.linear.Linear.forward",)


def _check_called(model: nn.Module, name: str, module: nn.Module) -> None:
    """Refuse a target whose owner uses its weights without calling it: an adapter there would never run
    (and a merge would still fold its update in); and an nn.Linear subclass whose own forward the adapter replaces."""
    parts = name.split(".")
    owners = [(".".join(parts[:i]), model.get_submodule(".".join(parts[:i]))) for i in range(len(parts))]
    parent_name, parent = owners[-1]
    if isinstance(parent, nn.MultiheadAttention) and isinstance(module, nn.Linear):
        raise AttachError(
            f"target {name!r} is the output projection of nn.MultiheadAttention {parent_name or '(the model)'!r}, "
            "which reads its weight directly instead of calling it, so an adapter there would never run; target "
            f"the attention module itself (a pattern matching {parent_name!r}: adapters on its in- and output "
            "projections)"
        )
    forward = type(module).forward
    if isinstance(module, nn.Linear) and forward is not nn.Linear.forward and \
            f"{forward.__module__}.{forward.__qualname__}" not in _PLAIN_LINEAR_FORWARDS:
        raise AttachError(
            f"target {name!r} is a {type(module).__name__}, an nn.Linear subclass with its own forward, which its "
            "adapted layer would replace by F.linear(x, weight, bias) (changing the base model's outputs); leave it "
            "out of the targets")
    layer = next(((n, m) for n, m in owners if isinstance(m, nn.TransformerEncoderLayer)), None)
    if layer is not None and torch.backends.mha.get_fastpath_enabled():
        raise AttachError(
            f"target {name!r} is inside {type(layer[1]).__name__} {layer[0] or '(the model)'!r}, whose inference "
            "fast path reads its layers' weights directly, so adapters there would be skipped in eval mode; "
            "build the block from nn.MultiheadAttention and nn.Linear modules your forward calls, or turn "
            "PyTorch's fast path off first (torch.backends.mha.set_fastpath_enabled(False))"
        )


def _check_rank(chosen: list[tuple[str, nn.Module, str, tuple[bool, ...] | None]], r: int) -> None:
    """Warn when ``r`` is above some target's min(input, output width), the most rank a LoRA update of it can have:
    the extra rank costs memory and adds nothing (an absurd --rank ended in the allocator's "can't allocate
    512000000000 bytes" with nothing naming the option)."""
    def width(module: nn.Module, slices: tuple[bool, ...] | None) -> int:
        if isinstance(module, nn.MultiheadAttention):
            return module.embed_dim
        out = module.out_features // len(slices) if slices else module.out_features
        return min(module.in_features, out)

    widths = {name: width(module, slices) for name, module, _, slices in chosen}
    over = [n for n, w in widths.items() if r > w]
    if over:
        warn_user(f"attach: r = {r} (--rank) is above min(input, output width) of {len(over)} of {len(widths)} "
                  f"targets (e.g. {over[0]!r}: {widths[over[0]]}), the most rank their updates can have; the extra "
                  "rank only costs memory")


def attach(model: nn.Module, cfg: MTLLoRAConfig) -> nn.Module:
    """Put adapters on both towers of ``model`` in place, freeze every base parameter, return it."""
    check_module(model, "attach")
    check_config(cfg, "attach")
    if getattr(model, "_mtl_lora", None) is not None:
        raise AttachError(
            f"{type(model).__name__} already has MTL-LoRA adapters; build a fresh base model to attach again, "
            "or use mtl_lora_vl.add_task to add a task to these adapters"
        )
    held = next((n for n, m in model.named_modules() if m.__dict__.get("_mtl_lora") is not None), None)
    if held is not None:   # a wrapper (MTLLoRAModel, DDP) or a model around an adapted one: not an unsupported class
        raise AttachError(
            f"attach: this {type(model).__name__} holds a model that has MTL-LoRA adapters already ({held!r}, a "
            f"{type(model.get_submodule(held)).__name__}); use it as it is (mtl_lora_vl.add_task adds a task to its "
            "adapters), or build a fresh base model to attach again")
    cfg = copy.deepcopy(cfg)  # the model's own: add_task grows its task list, never the caller's object
    fam = find_family(model)
    chosen = select_targets(model, cfg)
    _check_rank(chosen, cfg.r)

    names: dict[int, list[str]] = {}   # every name of each module (one reachable under several is adapted under all)
    for n, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(n)
    router = Router(cfg.tasks)
    router.reads_positions = cfg.method == "mtl_lora"
    formation = Formation() if cfg.method == "mtl_lora" else None   # the layers' M_t formed together
    built: list[tuple[list[str], nn.Module, dict[str, AdapterBank], str, int]] = []
    for name, module, tower, slices in chosen:   # every replacement first: one that fails changes nothing
        try:
            new: nn.Module = (LoRAMultiheadAttention(module, cfg) if isinstance(module, nn.MultiheadAttention)
                              else LoRALinear(module, cfg, slices))
        except (RuntimeError, MemoryError) as e:   # (torch.OutOfMemoryError is a RuntimeError)
            if "alloc" not in str(e).lower() and not isinstance(e, MemoryError):
                raise
            raise AttachError(f"attach: the adapter tensors of {name!r} do not fit in memory at r = {cfg.r} (--rank) "
                              f"and n_up = {cfg.n_up}; give a smaller rank (LoRA ranks are usually 4-64): "
                              f"{e}") from None
        if isinstance(new, LoRAMultiheadAttention):
            banks = {name + ".in_proj": new.in_proj, name + ".out_proj": new.out_proj}
            bdim = 0  # the replacement attends batch-first internally
        else:
            banks = {name: new}
            found = _batch_dim(model, name)
            if found is None and cfg.targets != "default" and _has_sequence_first(model):
                warn_user(f"attach: no module around target {name!r} says whether its input is batch-first, so "
                              "per-sample routes take dim 0 as the batch; this model has sequence-first attention "
                              "(batch_first=False), and if this layer's input is (seq, batch, ...) too, mixed-task "
                              "routes would pick rows along the sequence: route one task per batch there, or wrap "
                              "the layer in a module with batch_first = False")
            bdim = found or 0
        new.train(module.training)   # a new module starts in train mode: an eval() model stays in eval
        built.append((names[id(module)], new, banks, tower, bdim))
    hooked = [n for n, m, _, _ in chosen if any(getattr(m, h) for h in _HOOK_DICTS)]
    if hooked:   # the replacement is a new module: hooks on the old one would stop firing, silently
        warn_user(f"attach: {len(hooked)} target(s) have hooks registered on them (e.g. {hooked[0]!r}), which their "
                  "adapted replacements do not run; register them again after attach, on the adapted modules")
    for p in model.parameters():
        p.requires_grad_(False)
    layers: dict[str, AdapterBank] = {}
    towers: dict[str, str] = {}
    for aliases, new, banks, tower, bdim in built:
        for bname, bank in banks.items():
            bank.router, bank.formation, bank.layer_name, bank.batch_dim = router, formation, bname, bdim
            layers[bname], towers[bname] = bank, tower
        for alias in aliases:
            parent_name, _, child = alias.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    runs_as = fam if fam is not None else inner_family(model)   # (a family's inner model adapted on its own)
    hooks, row_check = [], None
    row_images = runs_as.row_images if runs_as is not None else None
    if row_images is not None:   # on the inner multimodal model where there is one, which
        inner = getattr(model, "model", None)             # the outer forward calls: both entry points are counted
        takes = isinstance(inner, nn.Module) and "pixel_values" in inspect.signature(inner.forward).parameters
        row_check = (inner if takes else model, RowImagesCheck(router, row_images))
        hooks.append(row_check[0].register_forward_pre_hook(row_check[1], with_kwargs=True))
        hooks.append(row_check[0].register_forward_hook(row_check[1].after, always_call=True))
        if runs_as.image_path:
            hooks += route_image_path(model, runs_as.image_path, row_check[1], router, layers)
    if runs_as is not None:   # transformers bugs the family mends (Mistral 3's batch of one image token)
        hooks += mend_outputs(model, runs_as.mends)
    if runs_as is not None and runs_as.packed_tower and runs_as.image_rows:
        hooks += pack_towers(model, runs_as.packed_tower, runs_as.image_rows, router, layers,
                             row_check[1] if row_check else None)
    model._mtl_lora = AttachInfo(cfg, router, fam.name if fam else "custom", layers, towers, hooks, row_check)
    install_routed_generate(model)
    return model


def check_config(cfg: object, what: str) -> None:
    """TypeError unless ``cfg`` is an :class:`MTLLoRAConfig`, saying how to make one from what was given."""
    if isinstance(cfg, MTLLoRAConfig):
        return
    if isinstance(cfg, dict):
        raise TypeError(f"{what}: the config is a dict; pass MTLLoRAConfig.from_dict(d) (or MTLLoRAConfig(**d))")
    if type(cfg).__name__ == "LoraConfig":
        raise TypeError(f"{what}: a PEFT LoraConfig is not an MTLLoRAConfig; build one with the task names: "
                        "MTLLoRAConfig(tasks=[...], r=cfg.r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout) "
                        "(targets: 'default', or {'image': [regex], 'text': [regex]})")
    raise TypeError(f"{what}: expected an MTLLoRAConfig, got {type(cfg).__name__}")


def attach_info(model: nn.Module) -> AttachInfo:
    """The AttachInfo of ``model`` (or of the adapted module inside a wrapper such as DDP)."""
    return adapted_module(model)._mtl_lora


def adapted_module(model: nn.Module) -> nn.Module:
    """The module that ``attach`` adapted: ``model`` itself, or the one inside a wrapper (DDP, MTLLoRAModel);
    RoutingError for none, or for several adapted models in one wrapper."""
    return find_adapted(model)


def whole_model(model: nn.Module) -> tuple[nn.Module, str]:
    """The model a merged or PEFT export of ``model`` is written from, and the adapted module's path in it (``""``,
    or ``"model."`` for a family's inner model adapted on its own): the outermost model of a family in the table that
    holds the adapted module, so a LLaVA whose inner model was adapted is written whole, with its LM head, also
    inside a wrapper (DDP, torch.compile, MTLLoRAModel); else the adapted module, never a wrapper's keys."""
    inner = adapted_module(model)
    path = next(n for n, m in model.named_modules() if m is inner)
    parts = path.split(".") if path else []
    for i in range(len(parts) + 1):   # the model, then each module on the way down to the adapted one
        outer = model.get_submodule(".".join(parts[:i]))
        if find_family(outer) is not None:
            rest = ".".join(parts[i:])
            return outer, rest + "." if rest else ""
    return inner, ""


def _adapter_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if n.rpartition(".")[2] in ADAPTER_PARAM_NAMES]


def trainable_parameters(model: nn.Module) -> int:
    """Number of adapter parameter values of ``model`` (heads excluded): the adapters' size, whether they train
    or not -- after ``load_adapter`` (frozen) or ``add_task`` (old rows fixed) count what trains with
    ``requires_grad`` or ``added.trainable``."""
    check_module(model, "trainable_parameters")
    return sum(p.numel() for _, p in _adapter_params(model))


def parameter_report(model: nn.Module) -> dict[str, int]:
    """Adapter parameter counts per tower and in total, and the frozen base count, for logs."""
    model = adapted_module(model)  # a wrapper's own modules (an MTLLoRAModel's heads) are not the base
    info = model._mtl_lora
    per = {t: 0 for t in TOWERS}
    for name, bank in info.layers.items():
        per[info.towers[name]] += sum(p.numel() for n, p in bank.named_parameters(recurse=False)
                                      if n in ADAPTER_PARAM_NAMES)
    total = trainable_parameters(model)
    base = sum(p.numel() for p in model.parameters()) - total
    return {"image": per["image"], "text": per["text"], "adapter_total": total, "base_frozen": base,
            "adapted_projections": len(info.layers)}


# Merging ---------------------------------------------------------------------------------------
def _weight_pairs(model: nn.Module) -> list[tuple[AdapterBank, nn.Parameter]]:
    pairs = []
    for m in model.modules():
        if isinstance(m, (LoRALinear, LoRAMultiheadAttention)):
            pairs.extend(m.adapted_weights())
    return pairs


def base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict name -> the base weight each adapter bank updates, as it was before any merge."""
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    return {names[id(w)]: (bank.merge_backup if bank.merge_backup is not None else w).detach()
            for bank, w in _weight_pairs(model)}


@torch.no_grad()
def merge(model: nn.Module, task: str) -> nn.Module:
    """Fold task ``task``'s update into the base weights (zero inference overhead); see unmerge.

    Each adapted bank keeps the exact base weight in its ``merge_backup`` buffer (non-persistent, so it
    follows ``.to()`` and stays out of ``state_dict``) until :func:`unmerge` puts it back.
    """
    info = attach_info(model)
    t = info.config.task_index(task)
    router = info.router
    open_scope = ("a disabled() scope" if router.disabled else
                  f"a route() scope for {[router.tasks[i] for i in router.current.present]}"
                  if router.current is not None and router.current.present != (t,) else None)
    if open_scope:   # the merged weights would silently override what that scope asked for
        raise RuntimeError(f"merge: {open_scope} is open on this model, and merged weights would override it; "
                           f"merge outside the scope (or route to {task!r} only)")
    refuse_float8(base_weights(model), "merge")   # (before an earlier task is unmerged: refused, nothing changes)
    if router.merged_task is not None:
        unmerge(model)
    pairs = _weight_pairs(model)
    _refuse_shared_weights(model, pairs)
    try:
        for bank, weight in pairs:
            bank.merge_backup = weight.detach().clone()
            weight.copy_(folded(weight, bank.delta_weight(t, weight.dtype)))
    except BaseException:  # e.g. out of memory half-way: put back the layers already merged
        for bank, weight in pairs:
            if bank.merge_backup is not None:
                weight.copy_(bank.merge_backup)
                bank.merge_backup = None
        raise
    info.router.merged_task = t
    return model


def parameter_names(model: nn.Module) -> dict[int, list[str]]:
    """Every name of each parameter, by ``id`` (a tied weight has several)."""
    names: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    return names


def _refuse_shared_weights(model: nn.Module, pairs: list[tuple[AdapterBank, nn.Parameter]],
                           what: str = "merge") -> None:
    """Merging into a weight that another layer also uses (tied input embeddings and output layer) would
    change that layer too (in place, or when a merged state dict loads into a tied model): refused before
    anything is written."""
    names = parameter_names(model)
    for bank, weight in pairs:
        shared = names.get(id(weight), [])
        owners = {id(model.get_submodule(n.rpartition(".")[0])) for n in shared}   # one module under two names:
        if len(owners) > 1:                                                        # the same adapted layer
            raise RuntimeError(
                f"{what}: the weight of {bank.layer_name} is shared with {', '.join(shared)} (tied weights), so "
                "merging into it would change the other layer too; run the adapters routed (mlv.route) instead of "
                f"merged, or leave {bank.layer_name} out of the targets")


@torch.no_grad()
def unmerge(model: nn.Module) -> nn.Module:
    """Restore the exact base weights saved by merge (bit for bit) and drop the backups."""
    info = attach_info(model)
    if info.router.merged_task is None:
        return model
    for bank, weight in _weight_pairs(model):
        if bank.merge_backup is None:
            raise RuntimeError(f"unmerge: {bank.layer_name} has no merge backup; the model was merged by other means")
        weight.copy_(bank.merge_backup)
        bank.merge_backup = None
    info.router.merged_task = None
    return model


@torch.no_grad()
def merged_state_dict(model: nn.Module, task: str, *, root: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The base model class's plain state dict with task ``task`` merged in (adapter tensors dropped).
    Refused for a weight tied to another (loaded into a tied model, the merged value would reach both).
    Its keys are those of the model passed in, or of the model a wrapper holds (:func:`whole_model`: a LLaVA whose
    inner model was adapted gives its own keys, for ``llava.load_state_dict``). ``root``: a model holding the adapted
    one, whose whole state dict is wanted (its keys, its ties)."""
    root = whole_model(model)[0] if root is None else root
    model = adapted_module(model)
    info = model._mtl_lora
    t = info.config.task_index(task)
    _refuse_shared_weights(root, _weight_pairs(model), "merged_state_dict")
    refuse_float8(base_weights(model), "merged_state_dict")
    sd = {k: v for k, v in root.state_dict().items() if k.rpartition(".")[2] not in ADAPTER_PARAM_NAMES}
    names = parameter_names(root)
    for bank, weight in _weight_pairs(model):
        base = bank.merge_backup if bank.merge_backup is not None else weight
        # (.to: returns the same tensor, folded gives base's dtype, except where the backup's dtype is not the
        # weight's: an nn.MultiheadAttention's bank, a module of its own, cast alone after a merge)
        merged = folded(base, bank.delta_weight(t, weight.dtype)).to(weight.dtype)
        for name in names[id(weight)]:   # every name of a module reachable under several
            sd[name] = merged
    return sd
