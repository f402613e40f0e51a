"""Every flag README.md and docs/*.md give a command (train, eval, export, bench, in any of their spellings) is a flag
of that command, and a value they list for a flag with choices (``--base-dtype auto|fp32|bf16|fp16``) is one of them.

A command line is read from an indented or fenced code line, or from a span in backticks; the flags after a command's
name (``train_vl.py``, ``mtl-lora-vl train``, ``train``, ...) up to a ``#`` comment are that command's.
"""

from __future__ import annotations

import argparse
import re
import typing
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from mtl_lora_vl.benchmark.cli import build_parser as build_bench_parser
from mtl_lora_vl.cli.parsing import build_parser
from mtl_lora_vl.options import EvalOptions, ExportOptions, TrainOptions, field_types

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: How the documentation names each command.
NAMES = {"train_vl.py": "train", "mtl-lora-vl-train": "train", "train": "train",
         "evaluate_vl.py": "eval", "mtl-lora-vl-eval": "eval", "eval": "eval",
         "export_merged.py": "export", "export": "export",
         "bench_methods.py": "bench", "bench": "bench"}
OPTIONS = {"train": TrainOptions, "eval": EvalOptions, "export": ExportOptions}


def _parser(command: str) -> argparse.ArgumentParser:
    if command == "bench":
        return build_bench_parser("bench")
    return build_parser(OPTIONS[command], command, "")


def _choices(command: str) -> dict[str, tuple[str, ...]]:
    """Flag -> its allowed values, for the flags that have a fixed set."""
    out = {}
    for action in _parser(command)._actions:
        if action.choices:
            out.update({s: tuple(map(str, action.choices)) for s in action.option_strings})
    if command in OPTIONS:   # (jsonargparse keeps a Literal's values in its type, not in argparse's choices)
        hints = field_types(OPTIONS[command])
        for f in fields(OPTIONS[command]):
            tp = hints[f.name]
            literal = [a for a in (tp, *typing.get_args(tp)) if typing.get_origin(a) is typing.Literal]
            if literal:
                out["--" + f.name.replace("_", "-")] = tuple(map(str, typing.get_args(literal[0])))
    return out


FLAGS = {c: {s for a in _parser(c)._actions for s in a.option_strings} for c in ("train", "eval", "export", "bench")}
CHOICES = {c: _choices(c) for c in FLAGS}


def command_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of every code line and every span in backticks of a Markdown text (a span may run over
    the lines of its paragraph)."""
    fenced, prose, first = False, [], 0
    for number, line in enumerate([*text.splitlines(), ""], 1):
        code = fenced or line.startswith("    ") or line.lstrip().startswith("```")
        if code or not line.strip():
            joined = "\n".join(prose)
            yield from ((first + joined.count("\n", 0, m.start()), " ".join(m.group(1).split()))
                        for m in re.finditer(r"`([^`]+)`", joined))
            prose = []
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif code:
            yield number, line
        elif line.strip():
            first = first if prose else number
            prose.append(line)


def problems(text: str, where: str) -> list[str]:
    """What ``text`` says of a command's flags that the command does not have. A flag outside a command line
    (``--base-dtype auto|fp32``) is held to the values of the commands that have it."""
    out = []
    for number, line in command_lines(text):
        command = None
        tokens = line.split()
        for i, token in enumerate(tokens):
            if token.startswith("#"):
                break
            name = token.rsplit("/", 1)[-1]
            if name in NAMES:
                command = NAMES[name]
                continue
            if name.endswith(".py"):   # another script: its flags are its own
                command = None
                continue
            if not re.match(r"--[a-z]", token):
                continue
            flag, _, value = token.partition("=")
            if command is not None and flag not in FLAGS[command]:
                out.append(f"{where}:{number}: {command} has no {flag}: {line.strip()}")
                continue
            value = value or (tokens[i + 1] if i + 1 < len(tokens) else "")
            if not value or value.startswith("-") or value != value.lower():   # no value, or a placeholder
                continue
            sets = [CHOICES[c][flag] for c in ([command] if command else CHOICES) if flag in CHOICES[c]]
            for v in value.strip(".,;:)").split("|"):
                if sets and not any(v in allowed for allowed in sets):
                    out.append(f"{where}:{number}: {command or 'no command'} {flag} has no choice {v!r} (it has "
                               f"{' or '.join(map(str, map(list, sets)))})")
    return out


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_the_flags_the_docs_give_a_command_are_its_own(path):
    found = problems(path.read_text(encoding="utf-8"), path.name)
    assert not found, "\n".join(found)


def test_the_check_sees_a_wrong_flag_and_a_wrong_choice():
    text = ("Run `train_vl.py --stepz 5` or\n\n    mtl-lora-vl eval --adapter A --split dev   # --anything here\n\n"
            "`export --format merged|lora` and `--tasks` alone, `other.py --stepz`,\n"
            "`python -m mtl_lora_vl train --lr 1` and `mtl-lora-vl\nbench --seed 3`;\n"
            "`--base-dtype source|fp64`, `--base-dtype auto`.")
    assert problems(text, "t") == [
        "t:1: train has no --stepz: train_vl.py --stepz 5",
        "t:3: eval --split has no choice 'dev' (it has ['train', 'val', 'test'])",
        "t:5: export --format has no choice 'lora' (it has ['merged', 'auto', 'peft', 'plain'])",
        "t:6: bench has no --seed: mtl-lora-vl bench --seed 3",
        "t:8: no command --base-dtype has no choice 'fp64' (it has ['auto', 'fp32', 'bf16', 'fp16'] or ['auto', "
        "'fp32', 'bf16', 'fp16'] or ['source', 'fp32', 'bf16', 'fp16'])",
    ]
