"""MTLLoRAConfig: every choice that shapes the adapters, validated, with a JSON round-trip."""

from __future__ import annotations

import difflib
import json
import math
import numbers
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .log import warn_user
from .whole_files import FileTooLarge, read_whole
from .wording import tasks_named

METHODS = ("mtl_lora", "lora", "task_lora", "multi_lora", "moe_lora")
LAMBDA_TYPES = ("full", "diagonal", "none")
TOWERS = ("image", "text")
#: The name PEFT's ``adapter_names=`` gives a row that runs on the base model, which no task may take.
PEFT_NO_ADAPTER = "__base__"
#: The smallest softmax temperature τ: below it, w_t / τ overflows float32 for a trained w_t.
MIN_TEMPERATURE = 1e-6


class ConfigError(ValueError):
    """A field of MTLLoRAConfig has a value that cannot work."""


def task_name_problem(name: object) -> str | None:
    """What is wrong with ``name`` as a task name (None when nothing is): the one rule for configs and add_task."""
    if not isinstance(name, str) or not name.strip():
        return f"every task name must be a non-empty string, got {name!r}"
    if "." in name:  # heads are stored under "<task>.<parameter>" keys
        return f"{name!r}: a task name may not contain '.'; use '_' or '-' instead"
    if "," in name:  # --tasks and `tasks=` strings are comma-separated lists: "vqa,retrieval" is two tasks, not one
        return f"{name!r}: a task name may not contain ','; pass a list of names, e.g. {name.split(',')!r}"
    if name != name.strip():  # the commands strip what they are given: such a task could not be named there
        return f"{name!r}: a task name may not begin or end with a space; use {name.strip()!r}"
    if name == PEFT_NO_ADAPTER:  # a PEFT export's rows of this task would run on the base model, silently
        return (f"{name!r} is PEFT's name for no adapter (adapter_names=[{name!r}, ...] runs that row on the base "
                "model), so a PEFT export of the task could not be served by its name; choose another task name")
    return None


def reserved_file_name(name: str) -> bool:
    """Whether ``name`` is a device name Windows reserves (CON, PRN, AUX, NUL, COM0-9, LPT0-9, any case, with or
    without an extension): a file so named (an adapter's ``tasks/<task>.toml``) cannot be written or copied there."""
    stem = name.split(".")[0].rstrip(" ").upper()
    return stem in ("CON", "PRN", "AUX", "NUL") or (len(stem) == 4 and stem[:3] in ("COM", "LPT") and stem[3] in
                                                    "0123456789\u00b9\u00b2\u00b3")


#: What a task name that names a file may not hold: '/' and '\\' make it a path (one out of the folder when it begins
#: with one), and Windows refuses the rest in any file name.
FILE_NAME_FORBIDDEN = '/\\:*?"<>|'
#: The longest task name that names files, in UTF-8 bytes: <task>.state.json and a temporary file's marks stay within a
#: file name's 255.
MAX_TASK_FILE_BYTES = 128


def task_file_problem(name: str) -> str | None:
    """Why task ``name`` cannot name a file or folder (None when it can), phrased to follow "task names [...]" (a verb
    first, made singular by :func:`~.wording.agree`): the one rule for every file named by a task (an adapter's
    ``tasks/<task>.toml``, ``predictions/<task>.jsonl``, an export's ``<task>/``). A config may hold other names: they
    work until a file is named by one."""
    if not isinstance(name, str) or name in ("", ".", ".."):
        return "cannot name a file"
    chars = "".join(dict.fromkeys(c for c in name if c in FILE_NAME_FORBIDDEN))
    if chars:
        return f"contain {' '.join(map(repr, chars))} (no file name may hold {' '.join(FILE_NAME_FORBIDDEN)})"
    control = [c for c in name if ord(c) < 32 or ord(c) == 127]
    if control:
        return f"contain control characters (e.g. {control[0]!r})"
    if reserved_file_name(name):
        return "name a device Windows reserves (CON, PRN, AUX, NUL, COM0-9, LPT0-9: no file there can be named so)"
    if name[-1] in ". ":
        return "end with '.' or a space (Windows drops it from a file name)"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as e:   # a lone surrogate: no file system's name
        return f"contain a character UTF-8 cannot encode ({name[e.start]!r})"
    if size > MAX_TASK_FILE_BYTES:
        return f"are longer than {MAX_TASK_FILE_BYTES} bytes (UTF-8; a file name holds at most 255 with its suffix)"
    return None


def file_name_twins(names: Iterable[str]) -> tuple[list[str], str] | None:
    """The first set of names that are distinct strings but one file name on some file system, with why (phrased to
    follow "task names [...]"); None when there is none. Only str names are compared.

    Names are compared as Unicode's canonical caseless match (``NFD(casefold(NFD(name)))``): APFS and HFS+ (macOS)
    ignore canonical normalisation and case, NTFS (Windows) case. ``casefold`` folds what ``lower`` leaves apart
    ('σ' and final 'ς', one file on NTFS; 'ß' and 'ss'), and is broader than any one system: a pair only one system
    folds is refused too (a rename, where a pair a system merges would lose one task's file there). Compatibility
    forms (NFKC: fullwidth 'Ａ' and 'A', '²' and '2') are left apart: none of these file systems merges them."""
    groups: dict[str, list[str]] = {}
    for n in dict.fromkeys(n for n in names if isinstance(n, str)):
        groups.setdefault(unicodedata.normalize("NFD", unicodedata.normalize("NFD", n).casefold()), []).append(n)
    for group in (g for g in groups.values() if len(g) > 1):
        if len({unicodedata.normalize("NFC", n) for n in group}) == 1:
            return sorted(group), ("differ only in Unicode normalisation (a composed and a decomposed accent, e.g. "
                                   f"{ascii(group[0])} and {ascii(group[1])}: one file on macOS file systems)")
        if len({n.casefold() for n in group}) > 1:
            return sorted(group), "differ only in case and Unicode normalisation (one file on macOS file systems)"
        return sorted(group), "differ only in case (one file on macOS and Windows file systems)"
    return None


def check_task_file_names(names: Iterable[str], what: str, tail: str) -> None:
    """ValueError ``"<what>: task name 'a' <problem>, <tail>"`` (or ``task names 'a', 'b' ...``) for the first
    names that break :func:`task_file_problem`, or that are one file name together (:func:`file_name_twins`);
    ``tail`` says which files they name and the fix."""
    names = list(names)
    bad = [(n, p) for n in names if (p := task_file_problem(n))]
    if bad:
        first = bad[0][1]
        shown = [n for n, p in bad if p == first]   # (None and 1 together: sorted() raised TypeError)
        shown = sorted(shown) if all(isinstance(n, str) for n in shown) else shown
        raise ValueError(f"{what}: {tasks_named(shown, first, 'task name')}, {tail}")
    twins = file_name_twins(names)
    if twins:
        raise ValueError(f"{what}: {tasks_named(twins[0], twins[1], 'task name')}, {tail}")


def unrepeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's ``object_pairs_hook`` that refuses a key given twice (``json`` keeps the last silently; TOML
    refuses it)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"{key!r} is given twice")
        out[key] = value
    return out


def unknown_task_hint(name: object, tasks: list[str]) -> str:
    """What an unknown task's message adds: the task a case or spelling slip meant, or the name of an id given."""
    if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < len(tasks):
        return f" (pass the task's name: id {name} is {tasks[name]!r})"
    if isinstance(name, str):
        close = ([t for t in tasks if t.casefold() == name.casefold()]
                 or difflib.get_close_matches(name, tasks, n=1, cutoff=0.6))
        return f" (did you mean {close[0]!r}?)" if close else ""
    return ""


class UnknownTaskError(KeyError):
    """A task name the adapter does not have (a ``KeyError`` whose message prints without KeyError's quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def check_targets(targets: Any, what: str = "targets") -> None:
    """Raise ConfigError (its message starting with ``what``) unless ``targets`` is ``"default"`` or a dict of tower ->
    regex list naming at least one regex; an empty list leaves its tower unadapted, as leaving the tower out does."""
    t = targets
    if isinstance(t, str):
        if t != "default":
            raise ConfigError(f"{what}: must be 'default' or a dict like {{'image': [regex], 'text': [regex]}}, "
                              f"got {t!r}")
        return
    if not isinstance(t, dict) or not t:
        raise ConfigError(f"{what}: must be 'default' or a non-empty dict of tower -> regex list, got {t!r}")
    for tower, patterns in t.items():
        if tower not in TOWERS:
            raise ConfigError(f"{what}: unknown tower {tower!r}; use {list(TOWERS)}")
        if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
            raise ConfigError(f"{what}[{tower!r}]: must be a list of regular expressions, got {patterns!r}")
        for p in patterns:
            try:
                re.compile(p)
            except (re.error, TypeError) as e:
                raise ConfigError(f"{what}[{tower!r}]: {p!r} is not a valid regular expression ({e})") from None
    if not any(t.values()):   # attach then blamed the model: "matched no nn.Linear or nn.MultiheadAttention"
        raise ConfigError(f"{what}: {t!r} names no regular expression for any tower, so nothing would be adapted; "
                          "give at least one, e.g. {'image': ['attn'], 'text': ['attn']}, or 'default' (an empty list "
                          "leaves its tower unadapted)")


@dataclass
class MTLLoRAConfig:
    """Hyper-parameters of the adapters (DESIGN §2, §4).

    ``targets`` is ``"default"`` (the attention and MLP projections of both towers, from the model
    family table in ``families.py``) or ``{"image": [regex, ...], "text": [regex, ...]}`` matched with
    ``re.search`` against full module names. ``qkv_slices`` restricts which of the q, k and v projections
    adapt (``"qkv"``, ``"qv"``, ...): slices of a packed projection (timm's ``qkv``, ``nn.MultiheadAttention``),
    or whole ``q_proj`` / ``k_proj`` / ``v_proj`` layers (Hugging Face models). For ``moe_lora`` and ``multi_lora``
    ``n_up`` is the number of experts / parallel LoRAs.
    """

    tasks: list[str]
    r: int = 8
    alpha: float = 16.0
    n_up: int = 3
    temperature: float = 0.5
    dropout: float = 0.0
    lambda_type: str = "full"
    method: str = "mtl_lora"
    targets: str | dict[str, list[str]] = "default"
    qkv_slices: str = "qkv"

    def __post_init__(self) -> None:
        if (self.tasks is None or isinstance(self.tasks, (bytes, set, frozenset, Mapping))
                or not isinstance(self.tasks, (str, Iterable))):   # a set has no order: the task ids would vary
            raise ConfigError(f"tasks: must be task names in order (a list), e.g. tasks=['vqa', 'retrieval'], got "
                              f"{self.tasks!r}")
        self.tasks = [self.tasks] if isinstance(self.tasks, str) else [
            str(t) if isinstance(t, str) else t for t in self.tasks]   # NumPy's str_ as str
        for name in ("r", "n_up", "alpha", "temperature", "dropout"):   # NumPy scalars as Python numbers
            v = getattr(self, name)
            if type(v) not in (int, float, bool) and isinstance(v, numbers.Real):
                setattr(self, name, int(v) if isinstance(v, numbers.Integral) else float(v))
        self.validate()

    @property
    def scaling(self) -> float:
        """s = alpha / r."""
        return self.alpha / self.r

    @property
    def num_tasks(self) -> int:
        """T, the number of tasks."""
        return len(self.tasks)

    def task_index(self, name: str) -> int:
        """Index of task ``name``; a clear error for an unknown one."""
        try:
            return self.tasks.index(name)
        except ValueError:
            hint = unknown_task_hint(name, self.tasks)
            raise UnknownTaskError(f"unknown task {name!r}; this adapter knows {self.tasks}{hint}") from None

    def validate(self) -> None:
        """Raise ConfigError naming the first field whose value cannot work."""
        if not self.tasks:
            raise ConfigError("tasks: must name at least one task, e.g. tasks=['vqa', 'retrieval']")
        for t in self.tasks:
            problem = task_name_problem(t)
            if problem:
                raise ConfigError(f"tasks: {problem}")
        dup = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if dup:
            raise ConfigError(f"tasks: names must be unique, repeated: {dup}")
        folded = [t.casefold() for t in self.tasks]
        alike = sorted({t for t, f in zip(self.tasks, folded) if folded.count(f) > 1})
        if alike:   # a warning, not a refusal: an adapter saved so (on Linux) still loads there
            warn_user(f"tasks {alike} differ only in case: an adapter keeps a file per task, and on a case-insensitive "
                      "file system (macOS, Windows) those are one file, so a copy there loses one task's; rename one")
        for name in ("r", "n_up"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}: must be an integer >= 1, got {v!r}")
        for name in ("alpha", "temperature"):   # nan or inf: every output NaN (0 * inf), or uniform mixing
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{name}: must be a finite number > 0, got {v!r}")
        if self.temperature < MIN_TEMPERATURE:   # w_t / τ overflows float32 (softmax of inf: NaN): |w_t| > τ·3e38
            raise ConfigError(f"temperature: must be at least {MIN_TEMPERATURE:g}, got {self.temperature!r}; below "
                              "that softmax(w_t / τ) overflows to NaN, and at 1e-6 the mixing is already as good as "
                              "one-hot")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method: unknown {self.method!r}; choose one of {list(METHODS)}")
        if self.lambda_type not in LAMBDA_TYPES:
            raise ConfigError(f"lambda_type: unknown {self.lambda_type!r}; choose one of {list(LAMBDA_TYPES)}")
        if not self.qkv_slices or any(c not in "qkv" for c in self.qkv_slices) or len(set(self.qkv_slices)) != len(
            self.qkv_slices
        ):
            raise ConfigError(f"qkv_slices: must be a non-empty subset of 'qkv' such as 'qv', got {self.qkv_slices!r}")
        check_targets(self.targets)
        same = ((self.method == "mtl_lora" and self.lambda_type == "none" and self.n_up == 1)
                or (self.method == "moe_lora" and self.n_up == 1))
        if same and len(self.tasks) > 1:
            warn_user(f"method={self.method!r} with "
                      f"n_up=1{' and lambda_type=none' if self.method == 'mtl_lora' else ''} "
                          "has no task-specific part left: every task gets the same update (lora with extra "
                          "parameters); raise n_up, or use method='lora' or 'task_lora'")

    # JSON round-trip -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-able)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MTLLoRAConfig:
        """A validated config from :meth:`to_dict`'s dict; unknown fields or no ``tasks`` are refused."""
        if not isinstance(d, Mapping):   # a JSON file holding a list or a string: its items were named as fields
            raise ConfigError(f"a config must be an object of fields, e.g. {{\"tasks\": [\"vqa\", \"retrieval\"], "
                              f"\"r\": 8}}, got a {type(d).__name__}: {str(d)[:80]}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields are {sorted(known)}")
        if "tasks" not in d:
            raise ConfigError("tasks: missing from the config")
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON text (keys sorted), also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> MTLLoRAConfig:
        """A config from JSON text (``{...}``) or a JSON file's path (repeated keys are refused); a file's problem
        names the file."""
        p = Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        if p is not None and not p.is_file():
            raise ConfigError(f"from_json: {str(text_or_path)[:80]!r} is neither a JSON object ('{{...}}') nor an "
                              "existing file")
        try:
            text = read_whole(p) if p is not None else str(text_or_path)
        except FileTooLarge as e:
            raise ConfigError(f"{e}; it is not a config MTLLoRAConfig.to_json wrote (those are under 1 KB), give "
                              "that file") from None
        try:
            d = json.loads(text, object_pairs_hook=unrepeated_keys)
        except ValueError as e:
            where = f"{p}: " if p else ""
            raise ConfigError(f"{where}not valid JSON ({e})") from None
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            if p is None:
                raise
            raise ConfigError(f"{p}: {e}") from None
