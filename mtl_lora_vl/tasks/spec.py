"""Task specs: one TOML file per task, parsed and checked into a :class:`TaskSpec`.

A spec names a task, its kind, where its data comes from, its head options, its loss weight,
the metrics to report and the prompt templates of its zero-shot rule::

    name = "vqa"                      # optional; defaults to the file name without .toml
    kind = "vqa"                      # vqa | retrieval | classification | captioning
    description = "..."               # optional
    loss_weight = 1.0                 # weight of this task's loss in the joint objective (1e-12 to 1e6)
    metrics = ["vqa_accuracy"]        # which of the kind's metrics the report shows; the first that is a
                                      # fraction (not a breakdown such as per_type, not CIDEr) is the headline
                                      # ([]: the kind's headline alone)
    templates = ["the answer is {}."] # zero-shot prompts; "{}" is replaced by the answer/class name

    [data]                            # either the built-in world ...
    source = "builtin"
    seed = 0
    [data.train]
    n = 2000                          # optional; the world's default size otherwise

    [data]                            # ... or files in a standard format under --data-root
    format = "vqav2"                  # vqav2 | coco_captions (or coco) | karpathy | imagefolder | jsonl | csv |
    hf_datasets strict = false                    # any other key is a reader option shared by every split
    [data.train]                      # reader options of one split; paths are relative to --data-root
    questions = "v2_OpenEnded_mscoco_train2014_questions.json"

    [head]                            # head options of the kind (checked against the kind's defaults)
    [options]                         # other options of the kind, e.g. answer_vocab_size for vqa
    [generative]                      # the kind's settings on a generative backbone (LLaVA-style), e.g.
    prompt = "{image} question: {question} answer:"   # the prompt template ({image}: the image placeholder)
    chat = false                      # true: the prompt is the user's turn in the model's chat template
    system = ""                       # with chat = true: a system message before that turn ("": the template's)

Every malformed spec fails with :class:`SpecError` naming the file, the field and what was
expected. Bare names (``"vqa"``) resolve to the built-in specs, found in the installed package
(``mtl_lora_vl/builtin_tasks``) or, from a checkout, in the top-level ``tasks/`` folder.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import json
import logging
import math
import re
import string
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtl_lora_vl.config import reserved_file_name
from mtl_lora_vl.data.common import ReaderOptionError
from mtl_lora_vl.data.readers import read_split
from mtl_lora_vl.data.records import Split
from mtl_lora_vl.data.world import build_split
from mtl_lora_vl.tasks.registry import available_kinds, get_kind
from mtl_lora_vl.tasks.spec_data import DataSpec, parse_data
from mtl_lora_vl.tasks.spec_error import SpecError
from mtl_lora_vl.tasks.spec_error import field_error as _fail
from mtl_lora_vl.whole_files import FileTooLarge, read_whole
from mtl_lora_vl.wording import name_hint

logger = logging.getLogger(__name__)

_TOP_KEYS = ("name", "kind", "description", "loss_weight", "metrics", "templates", "data", "head", "options",
             "generative")
#: The range of a task's loss_weight for training: a policy, well inside float32 (a weight of 1e39 made the weighted
#: loss inf, so every step was skipped and the run stopped blaming --lr; 1e-300 rounded it to 0). Only the weights'
#: ratios matter. Not checked where a saved adapter's spec is read back (it trained with what it has).
_MIN_LOSS_WEIGHT, _MAX_LOSS_WEIGHT = 1e-12, 1e6
#: A task name is a file name in an adapter folder (tasks/<name>.state.json): 64 characters at most.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")


@dataclass(frozen=True)
class TaskSpec:
    """One task: its name, kind, data, head and kind options, loss weight, metrics and templates.

    ``generative`` holds the kind's settings for a generative backbone (prompt template, decoding length,
    evaluation subset; see the kind's ``generative_defaults``), used when the kind runs through a
    language model.
    """

    name: str
    kind: str
    data: DataSpec
    head: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    loss_weight: float = 1.0
    metrics: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    description: str = ""
    source_file: Path | None = None
    generative: dict[str, Any] = field(default_factory=dict)
    #: The spec file's text as it was read: what an adapter saves, even if the file is edited meanwhile.
    source_text: str | None = field(default=None, repr=False, compare=False)

    @property
    def settings_sha256(self) -> str | None:
        """SHA-256 of the spec file's settings (its parsed TOML: comments and layout aside), if it has one."""
        if self.source_text is None:
            return None
        doc = tomllib.loads(self.source_text)
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def eval_split(self) -> str:
        """The split evaluation uses: ``val`` when the spec has one, else ``test``."""
        return "val" if "val" in self.data.splits else "test"

    def load_split(self, split: str, data_root: str | Path | None = None) -> Split:
        """Read one split of this task (``train``, ``val`` or ``test``) from the world or from files."""
        where = self.source_file or f"task {self.name!r}"
        if split not in self.data.splits:
            raise SpecError(f"{where}: field 'data.{split}': this task has no {split!r} split "
                            f"(it has {sorted(self.data.splits)}); add a [data.{split}] table")
        opts = self.data.splits[split]
        if self.data.source == "builtin":
            world_kind = self.data.options.get("world_kind", self.kind)
            return build_split(world_kind, split, n=opts.get("n"), seed=self.data.options.get("seed", 0))
        if data_root is None:
            raise SpecError(f"{where}: task {self.name!r} reads {self.data.format} files; pass the folder "
                            f"that holds them with --data-root DIR (data_root=...)")
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise SpecError(f"{where}: data root {str(root)!r} is not a folder; pass --data-root DIR")
        try:
            read = read_split(self.data.format, root, **{**self.data.options, **opts})
        except ReaderOptionError as err:
            raise SpecError(f"{where}: field 'data.{split}': the {self.data.format} reader rejected "
                            f"the options {sorted({**self.data.options, **opts})}: {err}") from err
        if split in self.data.read_warnings:   # (read: the files hold the split named beside none)
            logger.warning("%s", self.data.read_warnings[split])
        pair = self.data.length_pairs.get(split)   # (read: the lengths its slices were counted on, where told)
        warning = pair.warning(read.split_lengths) if pair is not None else None
        if warning is not None:
            logger.warning("%s", warning)
        return read


# ---------------------------------------------------------------------------------------------- finding


def builtin_spec_dirs() -> list[Path]:
    """Folders searched for built-in specs: the installed package's ``builtin_tasks``, then a checkout's ``tasks/``."""
    dirs: list[Path] = []
    try:
        packaged = importlib.resources.files("mtl_lora_vl") / "builtin_tasks"
        if packaged.is_dir():
            dirs.append(Path(str(packaged)))
    except (ModuleNotFoundError, TypeError):
        pass
    repo = Path(__file__).resolve().parents[2]   # installed: site-packages, whose tasks/ is another distribution's
    if (repo / "pyproject.toml").is_file() and (repo / "tasks").is_dir():
        dirs.append(repo / "tasks")
    return dirs


def available_specs() -> list[str]:
    """Names of the built-in task specs."""
    names: set[str] = set()
    for d in builtin_spec_dirs():
        names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


def looks_like_path(text: str) -> bool:
    """Whether a ``--tasks`` entry names a spec file (else a built-in task)."""
    return text.endswith(".toml") or "/" in text or "\\" in text


def load_spec(name_or_path: str | Path, *, need_train: bool = True) -> TaskSpec:
    """Load a built-in spec by name (``"vqa"``) or a user's spec by path (``"my/task.toml"``).
    ``need_train=False``: a spec that only scores (``eval --tasks FILE``) or is read back from an adapter may leave out
    ``[data.train]``, and its loss_weight is not held to the training range."""
    if isinstance(name_or_path, Path) or looks_like_path(str(name_or_path)):
        path = Path(name_or_path)
        if not path.is_file():
            raise SpecError(f"{path}: task spec file not found; give an existing .toml file or one of "
                            f"the built-in task names {available_specs()}")
        return _parse(path, need_train)
    name = str(name_or_path).strip()
    for d in builtin_spec_dirs():
        candidate = d / f"{name}.toml"
        if candidate.is_file():
            return _parse(candidate)
    raise SpecError(f"unknown task {name!r}{name_hint(name, '--tasks', available_specs())}: the built-in tasks are "
                    f"{available_specs()}; or give the path to your own task spec (.toml)")


def resolve_tasks(tasks: str | Sequence[str | Path]) -> list[TaskSpec]:
    """Turn ``"vqa,retrieval"`` (or a list of names and paths) into specs, refusing duplicate task names."""
    items = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    items = [t for t in items if str(t).strip()]
    if not items:
        raise SpecError(f"no tasks given; name at least one, e.g. --tasks vqa,retrieval "
                        f"(built-in: {available_specs()})")
    for i, item in enumerate(items if isinstance(tasks, str) else []):   # 'my,d/a.toml' was the tasks 'my', 'd/a.toml'
        comma = next((j for j in range(i + 2, len(items) + 1) if Path(",".join(items[i:j])).is_file()), 0)
        if comma and not Path(item).is_file():
            raise SpecError(f"--tasks: the spec file {','.join(items[i:comma])!r} has a ',' in its path, and ',' "
                            "separates the tasks; copy or link it to a path without one")
    specs = [load_spec(t) for t in items]
    seen: dict[str, TaskSpec] = {}
    for spec in specs:   # by case-folded name: an adapter's file per task is one file on macOS or Windows
        other = seen.get(spec.name.casefold())
        if other is not None:
            a, b = other.source_file, spec.source_file
            twice = (f"task name {spec.name!r} is given twice" if other.name == spec.name
                     else f"task names {other.name!r} and {spec.name!r} differ only in case")
            raise SpecError(f"{twice} ({a} and {b}); name each task once, or, for two tasks from spec files, set "
                            "`name = ...` in one of them")
        seen[spec.name.casefold()] = spec
    return specs


def spec_digests(specs: Sequence[TaskSpec]) -> dict[str, str]:
    """Task name -> ``settings_sha256`` of each spec read from a file, as read: what a checkpoint records, so
    that ``--resume`` can refuse specs edited since."""
    return {s.name: s.settings_sha256 for s in specs if s.settings_sha256 is not None}


# ---------------------------------------------------------------------------------------------- parsing


def template_fields(template: str) -> list[str | None]:
    """The replacement fields of a ``str.format`` template (``""`` for a positional ``{}``); ValueError when
    the template is malformed (e.g. a lone ``{`` or ``}``) or a field has a format spec or conversion
    (``{:d}``, ``{!x}``: the values are text, and such a field failed only once the model had loaded)."""
    fields = []
    for _, f, spec, conversion in string.Formatter().parse(template):
        if f is None:
            continue
        if spec or conversion:
            raise ValueError(f"field {{{f}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} has a "
                             "format spec or conversion")
        fields.append(f)
    return fields


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _check_value(path: Path, fld: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of ``default`` (ints are accepted for floats, bools are not ints)."""
    if default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):   # TOML's nan / inf: every loss NaN
            raise _fail(path, fld, "a finite number", value)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise _fail(path, fld, _type_name(default), value)
    return value


def _check_table(path: Path, fld: str, given: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """Merge a ``[head]``/``[options]`` table over the kind's defaults, refusing unknown keys and wrong types."""
    if not isinstance(given, dict):
        raise _fail(path, fld, "a table", given)
    out = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            close = difflib.get_close_matches(key, list(defaults), n=1, cutoff=0.6)
            raise _fail(path, f"{fld}.{key}", f"one of the known keys ({known})"
                        + (f" (did you mean {close[0]!r}?)" if close else ""), key)
        out[key] = _check_value(path, f"{fld}.{key}", value, defaults[key])
    return out


def _parse(path: Path, need_train: bool = True) -> TaskSpec:
    try:
        text = read_whole(path, encoding="utf-8-sig")
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        other = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}.get(path.suffix.lower())
        fix = (f"task specs are TOML, not {other}: write it as `key = value` lines and [tables] (see the built-in "
               "specs in tasks/)" if other else "fix the TOML there (`key = value`, strings in double quotes, "
               "[table] headers)")
        raise SpecError(f"{path}: not valid TOML: {err}; {fix}") from err
    except FileTooLarge as err:
        raise SpecError(f"{err}; a task spec is a few KB of TOML: give the spec file, not a data file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{path}: cannot read the task spec: {err}") from err
    for key in raw:
        if key not in _TOP_KEYS:
            close = difflib.get_close_matches(key, _TOP_KEYS, n=1, cutoff=0.6)
            raise _fail(path, key, f"one of the known fields {list(_TOP_KEYS)}"
                        + (f" (did you mean {close[0]!r}?)" if close else ""), key)

    name = raw.get("name", path.stem)
    if "name" not in raw and not _NAME_RE.match(name):
        raise SpecError(f"{path}: the task name is taken from the file name when the spec has no 'name' field, and "
                        f"{name!r} is not a task name of letters, digits, '_' or '-'; add name = \"...\" to the spec "
                        "or rename the file")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail(path, "name", "a task name of letters, digits, '_' or '-', 64 characters at most", name)
    if reserved_file_name(name):   # (its spec is saved beside the adapter as tasks/<name>.toml)
        raise _fail(path, "name", "a task name that is not a device name Windows reserves (CON, PRN, AUX, NUL, "
                    "COM0-9, LPT0-9): an adapter keeps a file named by each task; rename the task", name)
    if "kind" not in raw:
        raise _fail(path, "kind", f"one of {available_kinds()} (the field is missing)", show_got=False)
    kind_name = raw["kind"]
    if not isinstance(kind_name, str):
        raise _fail(path, "kind", "a string", kind_name)
    if kind_name not in available_kinds():
        raise _fail(path, "kind", f"one of {available_kinds()}", kind_name)
    kind_cls = get_kind(kind_name)

    if "data" not in raw:
        raise _fail(path, "data", "a [data] table with source = \"builtin\" or a format (it is missing)",
                    show_got=False)
    data = parse_data(path, raw["data"], need_train)

    description = raw.get("description", "")
    if not isinstance(description, str):
        raise _fail(path, "description", "a string", description)

    loss_weight = raw.get("loss_weight", 1.0)
    if (not isinstance(loss_weight, int | float) or isinstance(loss_weight, bool) or not math.isfinite(loss_weight)
            or loss_weight <= 0):
        raise _fail(path, "loss_weight", "a positive number (finite, e.g. 1.0)", loss_weight)
    if need_train and not _MIN_LOSS_WEIGHT <= loss_weight <= _MAX_LOSS_WEIGHT:
        raise _fail(path, "loss_weight", f"a number from {_MIN_LOSS_WEIGHT:g} to {_MAX_LOSS_WEIGHT:g} (only the "
                    "tasks' weights relative to each other matter, e.g. 1.0 and 5.0)", loss_weight)

    options = _check_table(path, "options", raw.get("options", {}), kind_cls.option_defaults)
    known = kind_cls.metrics_for(options)   # retrieval: the recalls its options.ks give
    metrics = raw.get("metrics", list(known))
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise _fail(path, "metrics", "a list of metric names", metrics)
    for i, m in enumerate(metrics):
        if m not in known:
            raise _fail(path, f"metrics[{i}]", f"one of the {kind_name} metrics {list(known)}", m)
        if need_train and m in metrics[:i]:   # (an adapter saved before this check still loads)
            raise _fail(path, f"metrics[{i}]", f"each metric once ({m!r} is metrics[{metrics.index(m)}] too)", m)

    templates = raw.get("templates", list(kind_cls.default_templates))
    if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
        raise _fail(path, "templates", "a list of strings, each with one '{}'", templates)
    for i, t in enumerate(templates):
        try:
            fields = template_fields(t)
        except ValueError:  # a lone '{' or '}'
            fields = None
        if fields != [""]:
            raise _fail(path, f"templates[{i}]", "a string with exactly one '{}' placeholder, plain (no format spec "
                        "or conversion), and no other {...} field (write {{ or }} for a literal brace)", t)

    head = _check_table(path, "head", raw.get("head", {}), kind_cls.head_defaults)
    generative = _check_table(path, "generative", raw.get("generative", {}), kind_cls.generative_defaults)
    if generative.get("system") and not generative.get("chat"):
        raise _fail(path, "generative.system", "chat = true beside it (a system message belongs to the model's chat "
                    "template), or no system", generative["system"])
    spec = TaskSpec(name=name, kind=kind_name, data=data, head=head, options=options,
                    loss_weight=float(loss_weight), metrics=tuple(metrics), templates=tuple(templates),
                    description=description, source_file=path.absolute(), generative=generative, source_text=text)
    kind_cls.check_spec(spec)
    return spec
