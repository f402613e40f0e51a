"""The runs of a method benchmark: settings, configurations (methods, single-task references,
MTL-LoRA ablations) and one run per configuration, seed and learning rate.

Protocol: every configuration gets the same trainer, step budget, batch size and data order (the
sampler is seeded by the run's seed, so at a given seed every method sees the same batches). Methods
and single-task references pick their learning rate from ``lr_grid`` on the validation split at the
first seed; the other seeds run at the picked rate. Ablations of MTL-LoRA run at MTL-LoRA's picked rate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import MTLLoRAConfig
from ..cores import check_local_workers
from ..options import TrainOptions

METHODS = ("lora", "task_lora", "multi_lora", "moe_lora", "mtl_lora")
REFERENCE_METHOD = "mtl_lora"
#: Adapter options a configuration may set (TrainOptions names); the rest of a run is the grid's budget.
ADAPTER_FIELDS = ("method", "rank", "n_up", "temperature", "lambda_type", "task_lr_mult")
#: MTL-LoRA ablations: option -> values (the default value is the reference run itself).
DEFAULT_ABLATIONS: dict[str, list[Any]] = {
    "lambda_type": ["none", "diagonal", "full"],
    "n_up": [1, 2, 3, 4],
    "rank": [4, 8, 16],
    "temperature": [0.25, 0.5, 1.0],
    "task_lr_mult": [1.0, 10.0],
}
QUICK_ABLATIONS: dict[str, list[Any]] = {"lambda_type": ["none", "full"], "task_lr_mult": [1.0, 10.0]}


def default_adapter() -> dict[str, Any]:
    """The trainer's default adapter options (MTL-LoRA r = 8, n = 3, τ = 0.5, full Λ_t)."""
    d = TrainOptions()
    return {name: getattr(d, name) for name in ADAPTER_FIELDS}


@dataclass
class BenchSettings:
    """What a benchmark runs; the same budget applies to every run."""

    tasks: list[str] = field(default_factory=lambda: ["vqa", "retrieval", "caption_cls"])
    backbone: str = "builtin"
    pretrained: str | None = None
    data_root: str | None = None
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    match_params: bool = True
    single_task: bool = True
    ablations: dict[str, list[Any]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_ABLATIONS.items()})
    seeds: int = 3
    lr_grid: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    steps: int = 120
    batch_size: int = 32
    warmup: int = 12
    val_n: int | None = 150
    test_n: int | None = 300
    eval_batch_size: int = 256
    device: str = "auto"
    precision: str = "auto"
    workers: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> BenchSettings:
        """A small grid (minutes on two CPU cores): two methods, two seeds, a short budget, two ablations."""
        base = dict(methods=["lora", "mtl_lora"], ablations={k: list(v) for k, v in QUICK_ABLATIONS.items()},
                    seeds=2, lr_grid=[3e-3, 1e-2], steps=30, batch_size=16, warmup=3, val_n=40, test_n=60)
        return cls(**{**base, **overrides})

    def validate(self) -> None:
        """Refuse what the grid cannot run: unknown methods or ablations, ablations without the reference method."""
        if not self.methods:
            raise ValueError(f"--methods names no method; choose from {list(METHODS)}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"--methods: unknown {bad}; choose from {list(METHODS)}")
        self._validate_ablations()
        if self.ablations and REFERENCE_METHOD not in self.methods:
            raise ValueError(f"ablations run at {REFERENCE_METHOD}'s tuned learning rate: keep {REFERENCE_METHOD} in "
                             "--methods or pass --no-ablations (ablations are on by default)")
        for flag, value in (("--seeds", self.seeds), ("--steps", self.steps), ("--batch-size", self.batch_size)):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if not self.lr_grid:
            raise ValueError("--lr-grid: give at least one learning rate, e.g. --lr-grid 1e-3,3e-3")
        twice = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if twice:
            raise ValueError(f"--methods names {twice} more than once; name each method once")
        keys = [f"{lr:g}" for lr in self.lr_grid]   # a run's folder and the reports name a rate so
        same = sorted({k for k in keys if keys.count(k) > 1})
        if same:
            raise ValueError(f"--lr-grid: rates {[lr for lr in self.lr_grid if f'{lr:g}' in same]} are one rate to "
                             f"6 significant digits ({same}): their runs would share a folder; give distinct rates")
        bad_lr = [lr for lr in self.lr_grid if not (isinstance(lr, (int, float)) and 0 < lr < float("inf"))]
        if bad_lr:   # the trainer refused them only after the first runs' set-up, with --lr in the message
            raise ValueError(f"--lr-grid: every learning rate must be a finite number > 0, got {bad_lr}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")
        for flag, n in (("--val-n", self.val_n), ("--test-n", self.test_n)):
            if n is not None and n < 1:
                raise ValueError(f"{flag} must be >= 1 (or left out for the spec's own size), got {n}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < -1:
            raise ValueError(f"--workers must be an integer >= -1 (-1 = the cores' share, 0 = in the main process), "
                             f"got {self.workers!r}")   # (the first run refused it, after the grid's folder was made)
        check_local_workers(self.workers)   # (as check_workers with one process)

    def _validate_ablations(self) -> None:
        """Each ablation value as the trainer would check it, and one run folder per value -- before
        settings.json is written (a value the trainer refuses stopped the grid after the method runs)."""
        unknown = [k for k in self.ablations if k not in ADAPTER_FIELDS[1:]]
        if unknown:
            raise ValueError(f"ablations: unknown option(s) {unknown}; ablate any of {list(ADAPTER_FIELDS[1:])}")
        ref = default_adapter()
        for axis, values in self.ablations.items():
            for v in values:
                o = {**ref, axis: v}
                try:
                    TrainOptions(**o).validate()
                    MTLLoRAConfig(tasks=["t"], method=o["method"], r=o["rank"], n_up=o["n_up"],
                                  temperature=o["temperature"], lambda_type=o["lambda_type"])
                except (ValueError, TypeError) as e:
                    raise ValueError(f"--ablate {axis}={v}: {e}") from None
            names = [f"{v:g}" if isinstance(v, float) else str(v) for v in values if v != ref[axis]]
            if not names:   # no run of its own: the ablation table held the reference row alone, silently
                raise ValueError(f"--ablate {axis}={','.join(map(str, values))}: {ref[axis]} is MTL-LoRA's default, "
                                 f"the reference run itself, so this ablates nothing; give another value too (e.g. "
                                 f"{axis}={','.join(map(str, DEFAULT_ABLATIONS[axis]))}) or drop this --ablate")
            same = sorted({n for n in names if names.count(n) > 1})
            if same:
                raise ValueError(f"--ablate {axis}: values {same} are one value to 6 significant digits: their runs "
                                 "would share a folder; give distinct values")

    def identity(self) -> dict[str, Any]:
        """The fields that decide the runs' results (a resumed grid must not mix budgets)."""
        d = asdict(self)
        for k in ("device", "workers", "eval_batch_size"):
            d.pop(k)
        return d


@dataclass(frozen=True)
class Config:
    """One configuration: a group (zero_shot | method | single | ablation), its tasks and adapter options."""

    cid: str
    group: str
    label: str
    tasks: tuple[str, ...]
    adapter: tuple[tuple[str, Any], ...]
    axis: str | None = None
    value: Any = None
    batch_size: int | None = None  # None: the grid's batch size

    @property
    def options(self) -> dict[str, Any]:
        """The adapter options this configuration sets, as a dict."""
        return dict(self.adapter)

    def attach_kwargs(self) -> dict[str, Any]:
        """The MTLLoRAConfig fields of this configuration (for counting its parameters)."""
        o = self.options
        return {"method": o["method"], "r": o["rank"], "n_up": o["n_up"], "temperature": o["temperature"],
                "lambda_type": o["lambda_type"]}


@dataclass(frozen=True)
class RunSpec:
    """One training run: a configuration at a seed and learning rate; ``tune`` also scores the val split."""

    config: Config
    seed: int
    lr: float
    tune: bool

    @property
    def key(self) -> str:
        """The run's folder under ``OUT/runs`` (unique in a grid)."""
        return f"{self.config.cid}/lr{self.lr:g}-seed{self.seed}"


def _config(cid: str, group: str, label: str, tasks: list[str], **adapter: Any) -> Config:
    opts = {**default_adapter(), **adapter}
    return Config(cid, group, label, tuple(tasks), tuple((k, opts[k]) for k in ADAPTER_FIELDS))


def zero_shot_config(tasks: list[str]) -> Config:
    """The base model's zero-shot scores, computed once (one trainer call of one step)."""
    return _config("zero_shot", "zero_shot", "zero-shot", tasks)


def method_configs(settings: BenchSettings, tasks: list[str], matched: dict[str, int]) -> list[Config]:
    """Each method at its default rank, and (when ``matched`` names it) at MTL-LoRA's parameter count."""
    rank = default_adapter()["rank"]
    out = []
    for m in settings.methods:
        out.append(_config(f"{m}-r{rank}", "method", f"{m} r={rank}", tasks, method=m))
        r = matched.get(m)
        if r is not None and r != rank:
            out.append(_config(f"{m}-r{r}", "method", f"{m} r={r} (matched)", tasks, method=m, rank=r))
    return out


def reference_config(configs: list[Config]) -> Config | None:
    """MTL-LoRA at its default options: the reference for paired differences and ablations."""
    ref = default_adapter()
    return next((c for c in configs if c.group == "method" and c.options == ref), None)


def single_task_configs(tasks: list[str], batch_size: int, shares: dict[str, float]) -> list[Config]:
    """The single-task reference: one ``lora`` per task, trained alone for the same steps at batch
    ``round(batch_size * share)``, i.e. on as many examples of its task as a joint run sees -- so joint
    minus single measures sharing the adapter, not seeing more data."""
    out = []
    for t in tasks:
        c = _config(f"single-{t}", "single", f"lora, {t} alone", [t], method="lora")
        b = max(1, round(batch_size * shares[t]))
        out.append(Config(c.cid, c.group, c.label, c.tasks, c.adapter, batch_size=b))
    return out


def ablation_configs(settings: BenchSettings, tasks: list[str]) -> list[Config]:
    """MTL-LoRA with one option changed; the default value is the reference run and is not repeated."""
    ref = default_adapter()
    out = []
    for axis, values in settings.ablations.items():
        for v in values:
            if v == ref[axis]:
                continue
            c = _config(f"ablation-{axis}={v:g}" if isinstance(v, float) else f"ablation-{axis}={v}", "ablation",
                        f"mtl_lora {axis}={v}", tasks, method=REFERENCE_METHOD, **{axis: v})
            out.append(Config(c.cid, c.group, c.label, c.tasks, c.adapter, axis, v))
    return out


def count_runs(settings: BenchSettings, tuned: list[Config], ablations: list[Config]) -> int:
    """Runs in the grid: the zero-shot run, the tuning runs, the other seeds, the ablations."""
    return 1 + len(tuned) * (len(settings.lr_grid) + settings.seeds - 1) + len(ablations) * settings.seeds


def pick_lr(records: list[dict[str, Any]]) -> float:
    """The learning rate with the best validation average (the smaller one on a tie); a rate whose run
    diverged is not a candidate."""
    scored = [(-sum(r["val"].values()) / len(r["val"]), r["lr"]) for r in records if not r.get("diverged")]
    scored = [x for x in scored if math.isfinite(x[0])]   # NaN compares false: min() kept a NaN that came first
    if not scored:
        rates = ", ".join(f"{x['lr']:g}" for x in records)
        raise ValueError(f"{records[0]['label']}: training diverged at every learning rate of the grid "
                         f"({rates}; see runs/*/train.log); "
                         "give --lr-grid smaller rates (and --overwrite)")
    return min(scored)[1]

