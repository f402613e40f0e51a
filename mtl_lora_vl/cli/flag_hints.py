"""The did-you-mean of an unknown command-line flag, for every command (:func:`unknown_flag_hints`).

The closest spelling alone (difflib's) named flags that look alike but mean something else: ``--checkpoint-every
100`` was told ``--grad-checkpointing`` (a switch, which takes no number), ``--eval-steps`` ``--eval-split``,
``--save-steps`` ``--steps``, ``--max-steps`` ``--max-bad-steps``, and ``--learning-rate`` / ``--output-dir`` nothing.
A flag is read as words (``--eval-steps``: eval, steps), so that:

- another tool's words for this package's (Hugging Face Trainer's ``--learning-rate``, ``--output-dir``,
  ``--save-steps``, ``--num-train-epochs``) name the flag they mean, :data:`_SAME` and :data:`_FILLER`;
- PEFT's and the Trainer's other names do too: ``--lora-r`` -> ``--rank``, ``--eval-strategy`` -> ``--eval-every``
  (not ``--eval-split``), ``--per-device-train-batch-size`` -> ``--batch-size``, ``--image-size`` ->
  ``--image-max-pixels`` (the one flag that sizes images; ``--image-reading`` picks native or square), ``--bf16`` ->
  ``--precision bf16`` and ``--cpu`` -> ``--device cpu`` (a flag and its value), and a ``--no-...`` or ``--skip-...``
  flag only for a typo that says no (``--zero-shot`` is not told ``--skip-zero-shot``, its opposite);
- a dataset is named by its value (:func:`_data_flag`): ``--dataset vqa`` / ``--dataset my_task.toml`` -> ``--tasks``
  (tasks are this package's datasets), ``--dataset /data/vqav2``, ``--data-dir``, ``--image-folder`` (LLaVA's) ->
  ``--data-root`` (the folder a spec's paths are read under), a data file (``--data-path train.json``) nothing: no
  flag reads one (a spec's ``[data]`` names it);
- a typo given a value (``--x 100``, ``--x=100``) is never told a switch (a boolean or ``--no-...``), which takes
  none, where a value would not be ``true`` / ``false``; nor, for a spelling alike, a flag that cannot read that
  value (``readers``): ``--warmup-ratio 0.1`` is not told ``--warmup`` (whole steps), ``--save-path x`` not
  ``--save-every`` (a number), ``--log-every 10`` / ``--log-dir x`` not ``--log-level`` (a level name: the flags every
  command shares are read here, :data:`_SHARED_READERS`), while another tool's word still names its flag
  (``--eval-strategy steps`` -> ``--eval-every``);
- a seed and a count of seeds are two things: ``--seed 3`` is not told bench's ``--seeds`` (how many), nor
  ``--seeds 3`` train's ``--seed``;
- otherwise the closest spelling (difflib's ratio >= 0.6), a flag sharing the typo's first or last word (not a
  filler) counting 0.1 closer (``--eval-batch`` -> ``--eval-batch-size``, ``--max-steps`` -> ``--steps`` in a
  command without ``--max-bad-steps``); a wrong flag is worse than none, so a flag sharing no word with the typo
  (:func:`_shares_a_word`) is named only where its spelling is very close (ratio >= 0.8, ``--batchsize`` ->
  ``--batch-size``): ``--compile-mode x`` and ``--save-total-limit 3`` are told nothing, not ``--batch-mode`` and
  ``--eval-split``; ``n`` (a count) is a filler, so train's ``--n-val 100`` is not told ``--n-up`` (no train flag sizes
  the validation split: a spec's ``[data.val] n`` does);
- a flag of the data's ``X`` (``--data-seed``, ``--data-workers``, ``--dataset-split``) means the flag for ``X``
  (``--seed``, ``--workers``, ``--split`` / train's ``--eval-split``), not ``--data-root`` (spelt alike): the data
  word only says whose; a split no flag reads (``train[:10%]``) is told that a task spec's ``split`` chooses rows;
- a hub dataset's id (``--dataset lmms-lab/VQAv2``, no such folder here) is told how a hub dataset is read: a task
  spec's ``[data]`` (``format = "hf_datasets"``) names its downloaded files, and ``--tasks`` takes the spec, and that a
  folder would be ``--data-root``'s; one shaped as a local path (``data/vqav2``: a data word first, or a folder here)
  is told ``--data-root`` and that no such folder is here (:func:`_hub_or_folder`);
- a device given as a switch with a value: ``--cpu 1`` -> ``--device cpu``, ``--gpu 0,1`` -> ``--device cuda:0``
  and how several GPUs run (torchrun, a rank a GPU), ``--num-gpus 2`` -> how 2 GPUs run.

A hint may carry a note after the flag (``FLAG; NOTE``), or be a note alone (``; NOTE``, where no flag does it):
:func:`hint_text` writes either. A parser that reads ``-1e-3`` after a flag as a flag of its own (argparse) is told
the flag with the value attached (``--lr=-1e-3``): ``unknown_flag_hints``' ``attach``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.resources
import itertools
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..log import LEVELS

__all__ = ["argparse_reads_as_flag", "builtin_task_names", "closest_flag", "hint_text", "unknown_flag_hints"]

#: Another tool's word (Hugging Face Trainer, PEFT, timm, Lightning) -> this package's words for it ("": left out).
_SAME: dict[str, tuple[str, ...]] = {
    "checkpoint": ("save", ""), "checkpoints": ("save", ""), "ckpt": ("save", ""),
    "steps": ("every", ""), "step": ("steps", "every", ""), "strategy": ("every",),
    "learning": ("lr",), "gradient": ("grad", ""), "grad": ("",), "accumulation": ("accumulate",),
    "accum": ("accumulate",), "output": ("out",), "outdir": ("out",), "evaluation": ("eval",), "evaluate": ("eval",),
    "logging": ("log",), "epoch": ("epochs",), "r": ("rank",), "norm": ("clip", ""), "model": ("backbone",),
    "base": ("base", ""), "device": ("device", ""), "wd": ("weight-decay",), "bs": ("batch-size",),
    "disable": ("no",), "enable": ("",), "img": ("image",), "size": ("size", "max-pixels"),
    "resolution": ("max-pixels", "image-max-pixels"),
    "skip": ("no",), "no": ("skip",),
}

#: Words that name nothing of their own in another tool's flag (``--num-workers``, ``--lora-rank``, ``--seed-value``,
#: ``--per-device-train-batch-size``, ``--early-stopping-patience``, ``--model-name-or-path``).
_FILLER = frozenset({"num", "n", "max", "total", "dir", "path", "rate", "value", "lora", "mixed", "train", "from", "of",
                     "per", "torch", "random", "early", "stopping", "dataloader", "name", "or"})

#: A value typed as a switch (Hugging Face Trainer's ``--bf16``, a script's ``--cpu``) -> the value, and the flags that
#: take it, the first the command has (``--precision bf16``; export has only ``--base-dtype``).
_VALUE_SWITCHES = {"bf16": ("bf16", ("--precision", "--base-dtype")), "fp16": ("fp16", ("--precision", "--base-dtype")),
                   "fp32": ("fp32", ("--precision", "--base-dtype")), "cpu": ("cpu", ("--device",)),
                   "cuda": ("cuda", ("--device",)), "gpu": ("cuda", ("--device",))}

#: The prefixes of a flag that turns something off: named only for a typo that says no.
_NEGATIONS = ("--no-", "--skip-")

#: A typo's words that name a dataset (its value: task names, a spec file, or a folder), images, a folder.
_DATASET_WORDS = frozenset({"dataset", "datasets", "data"})
_IMAGE_WORDS, _FOLDER_WORDS = frozenset({"image", "images", "img"}), frozenset({"dir", "folder", "root", "path"})

#: The ends of a file name that hold rows, an image or an archive of them (no flag reads one: a task spec's ``[data]``
#: names it; ``--image-path a.jpg`` and ``--dataset coco.zip`` are no folder to give --data-root).
_DATA_FILES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".tar", ".zip", ".tgz", ".gz", ".jpg",
               ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

#: Words of a flag that name another thing than the word they are spelt like: a seed and a count of seeds.
_NOT_SAME = (("seed", "seeds"),)

#: The values a switch (a boolean flag) takes after it; those of a value switch (``--cpu 1``) that say "on".
_SWITCH_VALUES = frozenset({"true", "false"})
_ON = frozenset({"true", "1", "yes", "on"})

#: GPU numbers (``0``, ``0,1``), and how several GPUs run: a process (rank) a GPU, started by torchrun.
_GPU_IDS = re.compile(r"\d+(\s*,\s*\d+)*")
_SEVERAL_GPUS = ("{n} GPUs run as {n} processes, one a GPU: {visible}torchrun --nproc_per_node {n} ... with --device "
                 "cuda (or auto)")
_ONE_GPU = "this command runs on one GPU"

#: A hub id (``lmms-lab/VQAv2``): an owner and a name; read as one where no such path is here.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_HUB_NOTE = ("a hub dataset is read from its downloaded files: a task spec's [data] names them (format = "
             "\"hf_datasets\", path = their folder; README, Tasks)")

#: What no flag does, for a split's typo (``--data-split train[:10%]``).
_SPLIT_NOTE = ("no flag chooses a task's rows: a task spec's split option does ([data.train] or [data.test] split = "
               "\"train[:10%]\"), the spec given to --tasks")

#: Notes on a flag named for a typo that may mean another thing.
_FLAG_NOTES = {"--eval-split": "the split scored at the end; the rows trained on: a task spec's [data.train]"}


def _words(name: str) -> list[str]:
    """``--eval_Steps`` -> ``["eval", "steps"]``."""
    return [w for w in name.lstrip("-").lower().replace("_", "-").split("-") if w]


def _alternatives(word: str) -> tuple[str, ...]:
    """What ``word`` may stand for in this package's flags: itself, :data:`_SAME`'s, or nothing (a filler)."""
    return (word, *_SAME.get(word, ()), *(("",) if word in _FILLER else ()))


def _same_meaning(name: str, pool: Sequence[str]) -> str | None:
    """The flag of ``pool`` that ``name``'s words spell with another tool's words read as this package's
    (``--learning-rate`` -> ``--lr``, ``--save-steps`` -> ``--save-every``), the closest where several do."""
    words = _words(name)[:6]
    spelt = {"--" + "-".join(w for w in combo if w) for combo in itertools.product(*map(_alternatives, words))}
    found = [f for f in pool if f in spelt and f != name]
    return max(found, key=lambda f: difflib.SequenceMatcher(None, name, f).ratio()) if found else None


def _level(value: str) -> str:
    """``value`` where it is a log level (any case), else ValueError: what ``--log-level`` reads."""
    if value.lower() not in LEVELS:
        raise ValueError(value)
    return value


#: The readers of the flags every command has (``add_logging_flags``), under the command's own.
_SHARED_READERS: dict[str, Callable[[str], Any]] = {"--log-level": _level}


def _data_flag(words: Sequence[str], value: str | None, flags: Sequence[str]) -> str | None | bool:
    """The flag a typo naming a dataset or its folder (``--dataset``, ``--data-dir``, ``--image-folder``) means, by
    its ``value``: a spec file or task names -> ``--tasks`` (export: ``--task``), a folder -> ``--data-root``, a
    data, image or archive file -> None (no flag reads one); False where the typo names something else (the other
    rules decide). A bare name is a task unless a folder of that name is here (``--data data``) and it is no built-in
    task's name (``vqa``) nor said to be a name (``--dataset-name``): the folder the command runs in decides only what
    it could not."""
    said = set(words)
    folder = bool(said & _FOLDER_WORDS)
    if not (said & _DATASET_WORDS or (said & _IMAGE_WORDS and folder)):
        return False
    if said - _FILLER - _DATASET_WORDS - _IMAGE_WORDS - _FOLDER_WORDS:   # --val-data: which data, not where
        return False
    path = (value or "").replace("\\", "/")
    if any(part.strip().lower().endswith(".toml") for part in path.split(",")):
        wanted: tuple[str, ...] = ("--tasks", "--task")
    elif path.rstrip("/").rsplit("/", 1)[-1].lower().endswith(_DATA_FILES):
        return None
    elif not folder and _HUB_ID.fullmatch(path) and not os.path.exists(path):
        return _hub_or_folder(path, flags)
    elif path and not folder and "/" not in path and "." not in path and (
            "name" in said or not os.path.isdir(path) or set(path.split(",")) <= builtin_task_names()):
        wanted = ("--tasks", "--task")   # a name (Hugging Face's --dataset-name), a built-in task's, not a folder here
    else:
        wanted = ("--data-root",)
    return next((f for f in wanted if f in flags), None)


def _hub_or_folder(path: str, flags: Sequence[str]) -> str | None:
    """The hint for a dataset value shaped as a hub id (OWNER/NAME) that is no path here: a local folder's path by its
    shape (``data/vqav2``: its first part a data or image word, or a folder here) -> ``--data-root`` and that no such
    folder is here; else (``lmms-lab/VQAv2``) how a hub dataset is read (a spec for ``--tasks``) and, as it may be a
    folder's path too, that a folder is ``--data-root``'s."""
    root = "--data-root" if "--data-root" in flags else None
    first = path.split("/", 1)[0]
    if root and (first.lower() in _DATASET_WORDS | _IMAGE_WORDS or os.path.isdir(first)):
        return f"{root}; no folder {path} is here (a relative path is read from the current folder)"
    taker = next((f for f in ("--tasks", "--task") if f in flags), None)
    note = _HUB_NOTE + (f"; a folder: {root} (no folder {path} is here)" if root else "")
    return f"{taker} SPEC.toml; {note}" if taker else f"; {note}"


def builtin_task_names() -> frozenset[str]:
    """The built-in tasks' names, as ``tasks.spec.available_specs`` finds them (the installed package's
    ``builtin_tasks``, a checkout's ``tasks/``), read here without it: the task kinds import torch."""
    dirs = [Path(str(importlib.resources.files("mtl_lora_vl") / "builtin_tasks")),
            Path(__file__).resolve().parents[2] / "tasks"]
    return frozenset(p.stem for d in dirs if d.is_dir() for p in d.glob("*.toml"))


def _reads(reader: Callable[[str], Any] | None, value: str) -> bool:
    """Whether a flag whose values ``reader`` converts (None: any text) takes ``value``."""
    try:
        return reader is None or reader(value) is not None
    except (ValueError, TypeError):
        return False


def _means_other(words: Sequence[str], flag_words: Sequence[str]) -> bool:
    """Whether one of the typo's ``words`` and a flag's say different things spelt alike (:data:`_NOT_SAME`)."""
    return any((a in words and b in flag_words and b not in words)
               or (b in words and a in flag_words and a not in words) for a, b in _NOT_SAME)


def closest_flag(token: str, flags: Sequence[str], switches: Collection[str] = (),
                 value: str | None = None, readers: Mapping[str, Callable[[str], Any]] | None = None,
                 torchrun: bool = True) -> str | None:
    """The flag of ``flags`` an unknown command-line ``token`` (``--name`` or ``--name=value``) most likely means,
    or None when none is close or the token is not an unknown flag. ``switches``: the flags of ``flags`` that take
    no value (or only true / false), never named for a token given another ``value`` (the next token, or after
    ``=``), nor, by spelling alone, a flag of ``readers`` (flag -> its converter, raising ValueError) that cannot
    read that value. The words of another tool's flag name this package's (:func:`_same_meaning`); else the closest
    spelling wins, a flag sharing the token's first or last word first. A ``--no-...`` flag is named only for a typo
    that says no (``--no-compiling``, ``--disable-compile``): ``--torch-compile`` means ``--compile``. A precision typed
    as a switch is told the flag and value (``--bf16`` -> ``--precision bf16``); several GPUs are told how they run
    (``torchrun``: the command runs under torchrun, else that it runs on one)."""
    name, eq, given = token.partition("=")
    if not name.startswith("--") or name in flags:
        return None
    value = given if eq else value
    valued = value is not None and value.lower() not in _SWITCH_VALUES
    words = _words(name)
    if not words:
        return None
    if len(words) == 1 and words[0] in _VALUE_SWITCHES:
        meant, takers = _VALUE_SWITCHES[words[0]]
        taker = next((f for f in takers if f in flags), None)
        if taker is not None:
            if value is not None and _GPU_IDS.fullmatch(value) and meant == "cuda":   # --gpu 1: the GPU of that index
                ids = [i.strip() for i in value.split(",")]
                several = (_SEVERAL_GPUS.format(n=len(ids), visible=f"CUDA_VISIBLE_DEVICES={','.join(ids)} ")
                           if torchrun else _ONE_GPU)
                return f"{taker} cuda:{ids[0]}" + (f"; that is one GPU; {several}" if len(ids) > 1 else "")
            return f"{taker} {meant}" if value is None or value.lower() in _ON else taker
    if [w for w in words if w not in _FILLER] == ["gpus"] and "--device" in flags and value is not None:
        ids = [i.strip() for i in value.split(",")]
        if _GPU_IDS.fullmatch(value) and (len(ids) > 1 or int(value) > 1):   # --num-gpus 2 (a count), --gpus 0,1
            n, visible = (len(ids), f"CUDA_VISIBLE_DEVICES={','.join(ids)} ") if len(ids) > 1 else (int(value), "")
            return "--device cuda; " + (_SEVERAL_GPUS.format(n=n, visible=visible) if torchrun else _ONE_GPU)
    data = _data_flag(words, value, flags)
    if data is not False:
        return data
    shared = words   # the words a flag spelt alike must share one of
    if words[0] in _DATASET_WORDS and len(words) > 1:   # --data-seed: the seed (of the data), not --data-root
        of = _of_the_data(words[1:], flags, switches, value, readers)
        if of is not None:
            return of
        shared = words[1:]   # (--data-rot: --data-root by its spelling alone)
    negated = name.lstrip("-").lower().startswith("no") or "no" in _alternatives(words[0])
    pool = [f for f in flags if not (valued and f in switches) and (negated or not f.startswith(_NEGATIONS))
            and not _means_other(words, _words(f))]
    same = _same_meaning(name, pool)   # (another tool's word for it: --eval-strategy steps -> --eval-every N)
    if same is not None:
        return same
    readers = {**_SHARED_READERS, **(readers or {})}
    pool = [f for f in pool if not valued or _reads(readers.get(f), value)]
    first, last = (set(_alternatives(w)) - {""} if w not in _FILLER else set() for w in (words[0], words[-1]))
    scored = []
    for f in pool:
        ratio = difflib.SequenceMatcher(None, name, f).ratio()
        fw = _words(f) or [""]
        # a shared first or last word outweighs a slightly closer spelling, not a much closer one
        if ratio >= 0.8 or (ratio >= 0.6 and _shares_a_word(shared, fw)):
            scored.append((ratio + 0.1 * (fw[0] in first or fw[-1] in last), f))
    return max(scored)[1] if scored else None


def _of_the_data(words: Sequence[str], flags: Sequence[str], switches: Collection[str], value: str | None,
                 readers: Mapping[str, Callable[[str], Any]] | None) -> str | None:
    """The flag for what a typo says of the data (``words``: ``--data-seed``'s ``["seed"]``): that flag where the
    command has it and it reads ``value`` (eval's ``--split``), else the closest to those words (``--seed``,
    ``--workers``, train's ``--eval-split``); for a split no flag reads, that a task spec's split option chooses the
    rows. None: nothing of those words here (a close spelling of a data flag is :func:`_data_flag`'s or none)."""
    name = "--" + "-".join(words)
    reader = {**_SHARED_READERS, **(readers or {})}.get(name)
    valued = value is not None and value.lower() not in _SWITCH_VALUES
    if name in flags and not (valued and name in switches) and (value is None or _reads(reader, value)):
        meant: str | None = name
    else:
        meant = closest_flag(name, flags, switches, value, readers)
    if meant is None and {"split", "splits"} & set(words):
        return f"; {_SPLIT_NOTE}"
    return f"{meant}; {_FLAG_NOTES[meant]}" if meant in _FLAG_NOTES else meant


def hint_text(close: str) -> str:
    """The did-you-mean written after an unknown flag, from :func:`closest_flag`'s hint: ``(did you mean FLAG?)``,
    with its note after the question (``FLAG; NOTE``: ``(did you mean FLAG? NOTE)``), or the note alone
    (``; NOTE``: ``(NOTE)``)."""
    meant, _, note = close.partition("; ")
    if not meant:
        return f"({note})"
    return f"(did you mean {meant}?{' ' + note if note else ''})"


def argparse_reads_as_flag(parser: argparse.ArgumentParser, value: str) -> bool:
    """Whether ``parser`` (argparse's) reads ``value``, after a flag that takes one, as a flag of its own, so that the
    flag is refused as "expected one argument": a token starting with ``-``, unless the parser takes it for a negative
    number (Python 3.11's: ``-1``, ``-0.5``, not ``-1e-3``; none where a flag of its own looks like one) or it holds a
    space, as argparse decides."""
    if not value.startswith("-") or value == "-" or " " in value:
        return False
    matcher = getattr(parser, "_negative_number_matcher", None)
    number = bool(matcher.match(value)) if matcher is not None else False
    return not number or bool(getattr(parser, "_has_negative_number_optionals", []))


def _shares_a_word(words: Sequence[str], flag_words: Sequence[str]) -> bool:
    """Whether a flag's words (``flag_words``) hold one of a typo's ``words`` that is not a filler: the word itself,
    :data:`_SAME`'s for it, or one of 3 letters or more that the other begins (``--temp`` and ``--temperature``,
    ``--checkpointing`` and ``--checkpoint-dir``). The last word both end in counts only where the typo names nothing
    else (``--dtype``: ``--base-dtype``): it says what kind of setting, so ``--compile-mode`` and ``--batch-mode`` are
    modes of two things."""
    named = [w for w in words if w not in _FILLER]
    mine = {a for w in named for a in _alternatives(w)} - {"", "no"}
    kind = flag_words[-1] == words[-1] and len(named) > 1
    theirs = set(flag_words) - {"no"} - ({flag_words[-1]} if kind else set())
    return any(a == b or (min(len(a), len(b)) >= 3 and (a.startswith(b) or b.startswith(a)))
               for a in mine for b in theirs)


def unknown_flag_hints(tokens: Sequence[str], flags: Sequence[str], switches: Collection[str] = (),
                       readers: Mapping[str, Callable[[str], Any]] | None = None,
                       attach: Callable[[str], bool] | None = None,
                       torchrun: bool = True) -> list[tuple[str, str | None]]:
    """Each of the unknown command-line ``tokens`` (as the parser lists them, values included) with the flag it
    most likely means (:func:`closest_flag`; None for a value or where none is close); a token's value is the one
    after it, unless that is a flag too. ``attach(value)``: whether the parser would read that value after a flag
    as a flag of its own (argparse's ``-1e-3``), so a flag that takes a value is named with it attached
    (``--lrr -1e-3`` -> ``--lr=-1e-3``). ``torchrun``: whether the command runs on several GPUs under torchrun."""
    out = []
    for i, tok in enumerate(tokens):
        after = tokens[i + 1] if i + 1 < len(tokens) else None
        value = after if after is not None and not after.startswith("--") else None
        close = closest_flag(tok, flags, switches, value, readers, torchrun)
        if (close is not None and close in flags and close not in switches and value is not None
                and "=" not in tok and attach is not None and attach(value)):
            close = f"{close}={value}"
        out.append((tok, close))
    return out
