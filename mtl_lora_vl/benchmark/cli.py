"""``bench_methods``: the command line of the method benchmark (``scripts/bench_methods.py`` and
``mtl-lora-vl bench``, which both call :func:`main`).

Reading the options (and ``--help``, and refusing a bad flag) imports neither torch nor the model libraries: what the
command does once they are read (:data:`RUN`, in :mod:`.command`) is imported then.
"""

from __future__ import annotations

import argparse
import math

from ..cli.flag_hints import unknown_flag_hints
from ..cli.parsing import add_logging_flags, log_level
from ..config import LAMBDA_TYPES
from ..cores import local_cores
from ..lazy_names import imported
from .grid import DEFAULT_ABLATIONS, METHODS, BenchSettings

#: What the command does once its options are read (torch's threads, the grid, one line per error), imported then:
#: torch, the trainer and the backbones take seconds to import.
RUN = "mtl_lora_vl.benchmark.command:run"

#: How each ablatable option's values are read from ``--ablate``, and what a value must satisfy.
_ABLATE_TYPES = {"lambda_type": (str, lambda v: v in LAMBDA_TYPES, f"one of {list(LAMBDA_TYPES)}"),
                 "n_up": (int, lambda v: v >= 1, "an integer >= 1"),
                 "rank": (int, lambda v: v >= 1, "an integer >= 1"),
                 "temperature": (float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
                 "task_lr_mult": (float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")}


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--lr-grid: {text!r} is not a comma-separated list of numbers (e.g. 1e-3,3e-3)") from None


def parse_ablation(text: str) -> tuple[str, list]:
    """``OPTION=V1,V2`` (one ``--ablate``) as ``(option, [values])``, each value checked and typed."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or name not in _ABLATE_TYPES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write OPTION=V1,V2 with OPTION one of {list(_ABLATE_TYPES)} (e.g. lambda_type=none,diagonal)")
    kind, ok, what = _ABLATE_TYPES[name]
    out = []
    for raw in (v.strip() for v in values.split(",")):
        try:
            v = kind(raw)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"{name}={values}: {raw!r} is not {what}")
        out.append(v)
    if not out:
        raise argparse.ArgumentTypeError(f"{name}=: give at least one value")
    return name, out


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The benchmark's options; ``prog`` names the command in ``--help`` (default: how this process was
    started, e.g. ``bench_methods.py``)."""
    d = BenchSettings()
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,   # '--seed 3' would be '--seeds 3', '--lr 1e-3' a one-value --lr-grid
        description="Which adapter for my tasks? Trains every method (at its default rank and at MTL-LoRA's "
        "parameter count), a single-task reference and MTL-LoRA ablations through the same trainer, budget and "
        "data order; tunes each method's learning rate on the validation split; reports test scores over seeds "
        "with paired 95 % intervals. Resumable: rerun the same command to continue a killed grid.")
    p.add_argument("--out", default="bench-methods", help="output folder (report.md, results.json, plots/, runs/; "
                                                          "default bench-methods)")
    p.add_argument("--tasks", default=",".join(d.tasks), help="comma-separated task names or spec paths (default "
                                                              f"{','.join(d.tasks)})")
    p.add_argument("--backbone", default=d.backbone, help="builtin | builtin-llava | open_clip:NAME | hf:DIR (default "
                                                          "builtin)")
    p.add_argument("--pretrained", default=None, help="local weights for open_clip:NAME")
    p.add_argument("--data-root", default=None, help="folder that file-based task specs are relative to")
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {list(METHODS)} (default all; "
                   "--quick lora,mtl_lora)")
    p.add_argument("--no-matched", action="store_true", help="skip the parameter-matched rank of each method")
    p.add_argument("--no-single", action="store_true", help="skip the single-task reference")
    p.add_argument("--no-ablations", action="store_true", help="skip the MTL-LoRA ablations")
    default_abl = " ".join(f"{k}={','.join(map(str, v))}" for k, v in DEFAULT_ABLATIONS.items())
    p.add_argument("--ablate", action="append", type=parse_ablation, metavar="OPTION=V1,V2",
                   help="ablate only these MTL-LoRA options at these values (repeat the flag for several options; "
                   f"a value equal to the default is the reference run itself). Default: {default_abl}")
    p.add_argument("--seeds", type=int, default=None, help=f"seeds per configuration (default {d.seeds}; --quick 2)")
    p.add_argument("--lr-grid", default=None, help="comma-separated adapter learning rates to tune over "
                   f"(default {','.join(f'{x:g}' for x in d.lr_grid)})")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps per run (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=None, help=f"batch size (default {d.batch_size})")
    p.add_argument("--warmup", type=int, default=None, help=f"warm-up steps (default {d.warmup})")
    p.add_argument("--val-n", type=int, default=None, help=f"validation scenes per built-in task (default {d.val_n})")
    p.add_argument("--test-n", type=int, default=None, help=f"test scenes per built-in task (default {d.test_n})")
    p.add_argument("--quick", action="store_true", help="a small grid (lora and mtl_lora, 2 seeds, 2 learning rates, "
                   "30 steps at batch 16, 2 ablations): minutes on two CPU cores")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, at most the cores this process "
                   "may use (default 1: a shared machine)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="default auto")
    p.add_argument("--workers", type=int, default=0, help="data loader workers per run (default 0)")
    p.add_argument("--overwrite", action="store_true", help="delete --out and start the grid afresh")
    p.add_argument("--retry-failed", action="store_true", help="run the runs recorded as failed (failed.json) "
                   "again; without it a resumed grid keeps them as failed")
    add_logging_flags(p)
    return p


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """BenchSettings from parsed arguments: --quick's small grid or the default one, then explicit flags."""
    over: dict = {"tasks": [t.strip() for t in args.tasks.split(",") if t.strip()], "backbone": args.backbone,
                  "pretrained": args.pretrained, "data_root": args.data_root, "device": args.device,
                  "precision": args.precision, "workers": args.workers}
    if args.methods is not None:   # '' names no method (it ran all five, as no --methods)
        over["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in ("seeds", "steps", "batch_size", "warmup", "val_n", "test_n"):
        if getattr(args, name) is not None:
            over[name] = getattr(args, name)
    if args.lr_grid is not None:   # '' names no rate (it ran the default grid)
        over["lr_grid"] = _floats(args.lr_grid)
    settings = BenchSettings.quick(**over) if args.quick else BenchSettings(**over)
    settings.match_params = not args.no_matched
    settings.single_task = not args.no_single
    if args.no_ablations and args.ablate:
        raise ValueError("--no-ablations and --ablate contradict each other: keep one")
    if args.no_ablations:
        settings.ablations = {}
    elif args.ablate:  # repeated options and values merge, in the order given
        settings.ablations = {}
        for name, values in args.ablate:
            kept = settings.ablations.setdefault(name, [])
            kept.extend(v for v in dict.fromkeys(values) if v not in kept)
    return settings


def _with_hints(tokens: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Unknown command-line tokens, each flag followed by the closest option's name when one is close."""
    flags = [*("--" + name.replace("_", "-") for name in vars(parser.parse_args([]))), "--help"]
    switches = [s for a in parser._actions if a.nargs == 0 for s in a.option_strings]   # (store_true, --help)
    return [f"{tok} (did you mean {close}?)" if close else tok
            for tok, close in unknown_flag_hints(tokens, flags, switches)]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run (or resume) the method benchmark; returns the exit status. ``prog`` (``mtl-lora-vl bench`` from
    the ``mtl-lora-vl`` command, which then leaves the logging to this function) names it in ``--help``."""
    parser = build_parser(prog)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error("unrecognized arguments: " + " ".join(_with_hints(unknown, parser)))
    if args.threads < 1:   # was silently 1
        parser.error(f"--threads: must be >= 1, got {args.threads}")
    cores = local_cores()[0]   # (node_cores(DistInfo())[0]: bench runs in one process)
    if args.threads > cores:   # (--threads 100000 stopped the first run with a tokenizer's error on starting threads)
        parser.error(f"--threads {args.threads}: this process may use {cores} core(s) of this machine, and torch's "
                     "threads beyond them only compete for the cores (thousands exhaust the process's threads); give "
                     f"--threads between 1 and {cores}")
    level = log_level(parser, args)
    # Started by `mtl-lora-vl bench` (a prog) or given a logging flag: log to stderr as the other commands do.
    flagged = args.verbose or args.quiet or args.log_level is not None
    return imported(RUN)(args, level, logged=prog is not None or flagged)
