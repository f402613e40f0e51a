"""Command lines: ``mtl-lora-vl-train`` (scripts/train_vl.py) and ``mtl-lora-vl-eval`` (scripts/evaluate_vl.py).

Flags are generated from :class:`mtl_lora_vl.options.TrainOptions`, so the command line, ``--config
FILE`` and the Python API share one list of names (``--n-up`` is ``n_up``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from .evaluation.evaluate import evaluate_adapter
from .options import TrainOptions, option_names
from .training.train import train


def _type_of(f) -> Any:
    t = str(f.type)
    if "bool" in t:
        return bool
    if "int" in t:
        return int
    if "float" in t:
        return float
    return str


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_vl.py",
        description="Train MTL-LoRA adapters on both towers of a vision-language model, jointly on several "
        "tasks, then compare zero-shot and adapted scores. With no options it trains on the built-in "
        "backbone and world (offline, CPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(TrainOptions):
        flag = "--" + f.name.replace("_", "-")
        kind = _type_of(f)
        kw: dict[str, Any] = {"help": f.metadata["help"], "dest": f.name}
        if kind is bool:
            p.add_argument(flag, action="store_true", **kw)
            continue
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        p.add_argument(flag, type=kind, default=f.default if f.default is not MISSING else None,
                       metavar=f.name.upper(), **kw)
    return p


def read_config_file(path: str) -> dict[str, Any]:
    """Options from a JSON or TOML file; keys may use dashes or underscores."""
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"--config {path}: no such file")
    try:
        raw = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise SystemExit(f"--config {path}: cannot parse ({e})") from None
    if not isinstance(raw, dict):
        raise SystemExit(f"--config {path}: expected a table of options, got {type(raw).__name__}")
    known = set(option_names())
    out = {}
    for k, v in raw.items():
        key = k.replace("-", "_")
        if key not in known or key == "config":
            raise SystemExit(f"--config {path}: unknown option {k!r}; see --help for the option names")
        out[key] = v
    return out


def parse_train_args(argv: list[str] | None = None) -> TrainOptions:
    parser = build_train_parser()
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**read_config_file(args.config))
        args = parser.parse_args(argv)
    values = vars(args)
    if isinstance(values.get("tasks"), list):
        values["tasks"] = ",".join(values["tasks"])
    return TrainOptions(**values)


def _run(fn, *args) -> int:
    """Run a command; expected failures print one clear line (MTL_LORA_VL_DEBUG=1 shows the traceback)."""
    try:
        fn(*args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, OSError, KeyError, ArithmeticError) as e:
        if _debug():
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of ``mtl-lora-vl-train`` and ``scripts/train_vl.py``."""
    return _run(train, parse_train_args(argv))


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate_vl.py",
        description="Score a trained adapter twice per task -- the unadapted base model by the task's zero-shot "
        "rule, and the adapted model -- and write eval.json, report.md and plots/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--adapter", required=True, help="adapter directory (RUN_DIR/adapter, or any save_adapter output)")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the adapter's tasks (default: all)")
    p.add_argument("--backbone", default=None, help="override the base model recorded in the adapter file")
    p.add_argument("--pretrained", default=None, help="override the base model's local weights file")
    p.add_argument("--data-root", default=None, help="folder that file-based task specs are relative to")
    p.add_argument("--split", default="test", help="split to score (falls back to val when a task has no test split)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--workers", type=int, default=0, help="image-decoding workers")
    p.add_argument("--out", default=None, help="where eval.json, report.md and plots/ go (default: ADAPTER/../eval-<split>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    return p


def eval_main(argv: list[str] | None = None) -> int:
    """Entry point of ``mtl-lora-vl-eval`` and ``scripts/evaluate_vl.py``."""
    args = build_eval_parser().parse_args(argv)
    return _run(lambda: print(evaluate_adapter(**vars(args))))


def _debug() -> bool:
    return os.environ.get("MTL_LORA_VL_DEBUG", "") not in ("", "0")
