"""``bench_methods``: the command line of the method benchmark (``scripts/bench_methods.py`` and
``mtl-lora-vl bench``, which both call :func:`main`).

Reading the options (from the command line and its ``--config`` file; and ``--help``, and refusing a bad flag or
key) imports neither torch nor the model libraries: what the
command does once they are read (:data:`RUN`, in :mod:`.command`) is imported then.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
from collections.abc import Callable, Collection
from typing import Any, NoReturn

from ..cli.flag_hints import argparse_reads_as_flag, hint_text, unknown_flag_hints
from ..cli.parsing import add_logging_flags, check_file_key, command_line, fail, log_level, read_table
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


def _rates(text: str) -> list[float]:
    """``--lr-grid``'s rates as bench takes them (``BenchSettings``: at least one, each finite and > 0), else
    ValueError: a did-you-mean names ``--lr-grid=-1e-3`` with a note, not as a value it takes."""
    rates = _floats(text)
    if not rates or not all(0 < r < math.inf for r in rates):
        raise ValueError(text)
    return rates


#: What --lr-grid takes, for a typo given a rate it refuses (``--lr -1e-3``).
_RATES_NOTE = "its learning rates are finite numbers > 0, comma-separated (e.g. --lr-grid 1e-3,3e-3)"


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
    for name in ("matched", "single", "ablations"):   # a --config file's no_X = true turned off on the command line
        p.add_argument(f"--{name}", dest=f"no_{name}", action="store_false", default=argparse.SUPPRESS,
                       help=f"undo a --config file's no_{name} = true")
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
    switch = argparse.BooleanOptionalAction   # (--no-quick: a --config file's quick = true turned off)
    p.add_argument("--quick", action=switch, default=False, help="a small grid (lora and mtl_lora, 2 seeds, 2 "
                   "learning rates, 30 steps at batch 16, 2 ablations): minutes on two CPU cores")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, at most the cores this process "
                   "may use (default 1: a shared machine)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="default auto")
    p.add_argument("--workers", type=int, default=0, help="data loader workers per run (default 0)")
    p.add_argument("--overwrite", action=switch, default=False, help="delete --out and start the grid afresh")
    p.add_argument("--retry-failed", action=switch, default=False, help="run the runs recorded as failed (failed.json) "
                   "again; without it a resumed grid keeps them as failed")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a JSON (or TOML, by a .toml name) file of these options, its keys the long flag names "
                   "without the dashes (TOML: steps = 60, no_single = true, lr_grid = [1e-3, 3e-3], tasks = [\"vqa\", "
                   "\"retrieval\"], and an [ablate] table: rank = [4, 16]); each value is checked as its flag's, and "
                   "flags on the command line win over the file's (--no-quick, --single, ... turn a file's switch "
                   "off)")
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
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]   # (--no-quick, --single)
    switches = [s for a in parser._actions if a.nargs == 0 for s in a.option_strings]   # (store_true, --help)
    readers = {s: a.type if a.type is int else functools.partial(_choice, a.choices) if a.choices else _rates
               for a in parser._actions if a.type is int or a.choices or a.dest == "lr_grid" for s in a.option_strings}
    attach = functools.partial(argparse_reads_as_flag, parser)   # (--outt -x: --out=-x, as argparse takes it)
    hints = unknown_flag_hints(tokens, flags, switches, readers, attach, torchrun=False)   # (bench runs on one device)
    # --lr -1e-3: --lr-grid refuses the rate (BenchSettings), so it is named with what it takes, not as --lr-grid=-1e-3
    loose = unknown_flag_hints(tokens, flags, switches, {**readers, "--lr-grid": _floats}, torchrun=False)
    return [f"{tok} {hint_text(close)}" if close else tok
            for (tok, close) in ((tok, close if close or near != "--lr-grid" else f"--lr-grid; {_RATES_NOTE}")
                                 for (tok, close), (_, near) in zip(hints, loose, strict=True))]


def _choice(choices: Collection[str], value: str) -> str:
    """``value`` where it is one of ``choices``, else ValueError (a did-you-mean names no flag refusing it)."""
    if value not in choices:
        raise ValueError(value)
    return value


#: Flags that are no options of the grid, so no keys of a ``--config`` file: the file itself, logging, --help.
_NOT_IN_FILE = frozenset({"config", "verbose", "quiet", "log_level", "help"})

#: A flag given on the command line drops these keys of the file: it would contradict them (``--no-ablations`` and
#: the file's ``ablate``), rather than win over them.
_COMMAND_LINE_CLEARS = {"ablate": ("no_ablations",), "no_ablations": ("ablate",)}


def _file_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each key a file may give -> the action of its flag (``no_matched``: ``--no-matched``'s, not ``--matched``'s)."""
    out: dict[str, argparse.Action] = {}
    for a in parser._actions:
        if a.option_strings and a.dest not in _NOT_IN_FILE:
            out.setdefault(a.dest, a)
    return out


def _on_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The options ``argv`` sets (``--name`` or ``--name=value``; abbreviations are refused), in order."""
    by_flag = {s: a.dest for a in parser._actions for s in a.option_strings}
    return [by_flag[t.partition("=")[0]] for t in argv if t.startswith("-") and t.partition("=")[0] in by_flag]


def _file_ablations(value: Any, fail_value: Callable[[str], NoReturn]) -> list[tuple[str, list]]:
    """The file's ``ablate``, as repeated ``--ablate`` give it: a table of option -> values (``rank = [4, 16]``), or
    ``OPTION=V1,V2`` strings; each value in the table of its option's type."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        texts = []
        for name, values in value.items():
            values = values if isinstance(values, list) else [values]
            if name in _ABLATE_TYPES:   # (another name is refused by parse_ablation, naming those it takes)
                kind, _, what = _ABLATE_TYPES[name]
                types = (int, float) if kind is float else kind
                bad = [v for v in values if isinstance(v, bool) or not isinstance(v, types)]
                if bad:
                    fail_value(f"ablate.{name}: {json.dumps(bad[0], default=str)} is not {what}; numbers are written "
                               "without quotes")
            texts.append(f"{name}={','.join(map(str, values))}")
        value = texts
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        fail_value("")
    if not value:   # (it ran the default ablations, as no --ablate)
        fail_value("it names no ablation; no_ablations = true runs none")
    try:
        return [parse_ablation(text) for text in value]
    except argparse.ArgumentTypeError as e:
        fail_value(str(e))


def read_bench_config(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """The options of a JSON or TOML ``--config`` file, each checked as its flag's value is; exits 2 naming the file,
    the key and what it takes on any problem."""
    raw, is_toml = read_table(parser, path)
    where = f"--config {path}"
    options = _file_options(parser)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name == "config":
            fail(parser, f"{where}: config = {json.dumps(value)}: a config file cannot name another one; merge the two "
                         "files")
        check_file_key(parser, where, key, options, out)
        out[name] = _file_value(parser, where, key, options[name], value, is_toml)
    return out


def _file_value(parser: argparse.ArgumentParser, where: str, key: str, action: argparse.Action, value: Any,
                is_toml: bool) -> Any:
    """One key's value of a ``--config`` file, typed as its flag would give it (a list joined by commas for
    ``tasks``, ``methods``, ``lr_grid``)."""
    shown = f"{key} = {json.dumps(value, default=str)}"   # (TOML dates and times are no JSON)
    name = action.dest
    takes = ("true or false" if action.nargs == 0 else
             "a table of option -> values (e.g. rank = [4, 16]) or a list of \"OPTION=V1,V2\" strings"
             if name == "ablate" else "an integer" if action.type is int else
             f"one of {list(action.choices)}" if action.choices else
             "a list of numbers or a comma-separated string of them" if name == "lr_grid" else
             "a list of strings or a comma-separated string" if name in ("tasks", "methods") else "a string")

    def fail_value(why: str) -> NoReturn:
        fail(parser, f"{where}: {shown} is not allowed{f' ({why})' if why else ''}; {key} takes {takes}")

    if value is None:   # null: the flag left out, where that is its default
        if action.default is None:
            return None
        fail_value("")
    if action.nargs == 0 or action.type is int:
        wanted = bool if action.nargs == 0 else int
        if isinstance(value, str):
            fix = value.strip().lower() if wanted is bool else value.strip()
            fix = {"true": "true", "false": "false"}.get(fix, fix)
            pair = f"{key} = {fix}" if is_toml else f'"{key}": {fix}'
            fail(parser, f"{where}: {shown} is a string (in quotes); {key} takes {takes}: write {pair}, without the "
                         "quotes")
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            fail_value("")
        return value
    if name == "ablate":
        return _file_ablations(value, fail_value)
    if name == "lr_grid" and not isinstance(value, str):
        values = value if isinstance(value, list) else [value]
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            fail_value("")
        value = ",".join(repr(float(v)) for v in values)
    if name in ("tasks", "methods") and isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str):
        fail_value("")
    if name == "lr_grid":
        try:
            _floats(value)
        except ValueError as e:
            fail_value(str(e).partition(": ")[2])
    if action.choices and value not in action.choices:
        fail_value("")
    return value


def _with_config(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> None:
    """``args`` given the ``--config`` file's options that the command line leaves out (its flags win)."""
    named = _on_command_line(parser, argv)
    if named.count("config") > 1:   # the last would be read, the first's options dropped unsaid
        fail(parser, f"--config is given {named.count('config')} times; give one file (merge them into one, or give "
                     "the options of the other on the command line, where they win over the file's)")
    if args.config is None:
        return
    if not args.config.strip():
        fail(parser, f"--config {args.config!r}: an empty value (an unset shell variable?); give a JSON or TOML file "
                     "of options, or leave --config out")
    from_file = read_bench_config(parser, os.path.expanduser(args.config))
    for name in named:
        from_file.pop(name, None)   # (--ablate would add to the file's ablations, not replace them)
        for other in _COMMAND_LINE_CLEARS.get(name, ()) if getattr(args, name) else ():   # (not --ablations)
            from_file.pop(other, None)
    for name, value in from_file.items():
        setattr(args, name, value)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run (or resume) the method benchmark; returns the exit status. ``prog`` (``mtl-lora-vl bench`` from
    the ``mtl-lora-vl`` command, which then leaves the logging to this function) names it in ``--help``."""
    parser = build_parser(prog)
    argv = command_line(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error("unrecognized arguments: " + " ".join(_with_hints(unknown, parser)))
    _with_config(parser, args, argv)
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
