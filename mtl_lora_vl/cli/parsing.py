"""A command line generated from an options dataclass, with ``--config FILE`` held to the same checks.

The parser library is **jsonargparse**. It was chosen over ``transformers.HfArgumentParser`` and ``tyro``
because it is the one that validates values from a config file with the same type machinery as flags
(``Literal`` choices, ``int`` vs ``float``, ``X | None``, booleans), reads JSON and TOML, and parses
plain ``typing`` annotations without asking the dataclass to change shape. ``HfArgumentParser`` builds
a dataclass from a JSON/dict with no type checks at all (``rank = 8.5`` would pass), and reads no TOML;
``tyro`` has no config files (a loaded file would have to be checked by hand). jsonargparse is the
parser behind LightningCLI, actively maintained, and pure Python (its one dependency, PyYAML, is
already here).

What this module adds on top:

- flags come from the dataclass fields: ``--n-up`` for ``n_up`` (``--n_up`` is read as ``--n-up``), help from
  ``metadata["help"]``, the allowed range from ``metadata`` (``ge``/``gt``/``le``/``lt``), choices from a
  ``Literal`` annotation (or ``metadata["choices"]``);
- a boolean is ``--compile`` / ``--compile false`` / ``--no-compile``, so a ``true`` from a config file
  can be turned off;
- ``--config FILE`` (JSON, or TOML by its ``.toml`` suffix) is read first and its values become the
  defaults, so flags on the command line win wherever they stand; each key is checked on its own, and a
  bad one is refused with a message naming the file, the key, the value and what is allowed;
- ``-v`` / ``-q`` / ``--log-level`` for the command's logging (not options of the run).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import os
import re
import sys
import tomllib
from collections.abc import Callable, Collection, Sequence
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, Literal, NoReturn

from jsonargparse import ArgumentError, ArgumentParser

from ..config import unrepeated_keys
from ..log import LEVELS
from ..options import ADAPTER_SHAPE, RESOLVED, describe_allowed, field_types, non_none, out_of_range, range_text
from ..whole_files import FileTooLarge, read_whole
from .flag_hints import hint_text, unknown_flag_hints

__all__ = ["build_parser", "check_file_key", "fail", "parse_options", "parse_options_given", "read_config",
           "read_table"]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def fail(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Exit 2 with the usage and ``PROG: error: MESSAGE`` on stderr, as argparse does."""
    parser.print_usage(sys.stderr)
    sys.stderr.write(f"{parser.prog}: error: {message}\n")
    raise SystemExit(2)



# --------------------------------------------------------------------------------------------- types


def _field_type(f: Field, hints: dict[str, Any]) -> Any:
    """The type a flag parses to: the annotation, narrowed to ``Literal[choices]`` when metadata lists choices."""
    tp = hints[f.name]
    choices = f.metadata.get("choices")
    if choices:
        inner, optional = non_none(tp)
        tp = Literal[tuple(choices)]
        if optional:
            tp = tp | None
    return tp


# --------------------------------------------------------------------------------------------- parser


class _Parser(ArgumentParser):
    """jsonargparse's parser, never reading options from environment variables: ``JSONARGPARSE_DEFAULT_ENV=true``
    in the environment overrides its ``default_env=False`` (options were read from variables such as
    ``MTL-LORA-VL TRAIN_STEPS``, and ``--help`` listed them)."""

    @property
    def default_env(self) -> bool:
        return False

    @default_env.setter
    def default_env(self, value: bool) -> None:   # noqa: ARG002 - always off
        self._default_env = False


def build_parser(cls: type, prog: str, description: str) -> ArgumentParser:
    """The parser of an options dataclass, plus ``-v`` / ``-q`` / ``--log-level``."""
    parser = _Parser(prog=prog, description=description, exit_on_error=False, allow_abbrev=False)
    hints = field_types(cls)
    for f in fields(cls):
        tp = _field_type(f, hints)
        names = [flag(f.name)]
        text = f.metadata.get("help", "")
        rng = range_text(f.metadata)
        if rng:
            text += f" [{rng}]"
        if f.metadata.get("required"):
            unless = f.metadata.get("unless")
            text += f" (required unless {flag(unless[0])} is given)" if unless else " (required)"
        default = None if f.default is MISSING else f.default
        if tp is bool:
            parser.add_argument(*names, dest=f.name, type=bool, nargs="?", const=True, default=default, help=text)
            parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_const", const=False,
                                default=argparse.SUPPRESS, help=f"same as {flag(f.name)} false")
        else:   # an optional string as str: the YAML loader read null, NULL, '#x', '&x' as None (the default)
            parser.add_argument(*names, dest=f.name, type=str if non_none(tp) == (str, True) else tp,
                                default=default, help=text)
    add_logging_flags(parser)
    return parser


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    """``-v`` / ``-q`` / ``--log-level``: the command's logging, read back by :func:`log_level`."""
    group = parser.add_argument_group("logging")
    group.add_argument("-v", "--verbose", action="store_true", help="debug messages (and tracebacks of errors)")
    group.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only; no progress bars")
    group.add_argument("--log-level", type=str, default=None,  # checked in log_level: any case
                       help=f"explicit log level, one of {', '.join(LEVELS)} in any case (overrides -v / -q); error "
                            "also hides the package's warnings")


def log_level(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> str:
    """The level the logging flags of ``ns`` ask for (``info`` when none is given); a bad --log-level exits 2."""
    if ns.log_level is not None and ns.log_level.lower() not in LEVELS:  # DEBUG is the logging module's spelling
        fail(parser, f"--log-level: expected one of {', '.join(LEVELS)} (any case), got {ns.log_level!r}")
    return (ns.log_level or "").lower() or ("debug" if ns.verbose else "warning" if ns.quiet else "info")


def _dashes(cls: type, argv: list[str]) -> list[str]:
    """``--n_up`` -> ``--n-up`` (and ``--no-grad_checkpointing``) for the options of ``cls``, so both spellings
    work without listing each flag twice in ``--help``."""
    known = {flag(f.name) for f in fields(cls)} | {"--no-" + f.name.replace("_", "-") for f in fields(cls)}
    out = []
    for token in argv:
        name, sep, value = token.partition("=")
        if name.startswith("--") and "_" in name and name.replace("_", "-") in known:
            token = name.replace("_", "-") + sep + value
        out.append(token)
    return out


def _parse(parser: ArgumentParser, cls: type, argv: list[str]) -> Any:
    """Parse the command line; a bad flag exits with a message naming it and what it accepts."""
    try:
        return parser.parse_args(argv)
    except ArgumentError as e:
        message = str(e).strip()
        hints = field_types(cls)
        for f in fields(cls):
            if f'key "{f.name}"' in message:
                fail(parser, f"{flag(f.name)}: expected {describe_allowed(f, _field_type(f, hints))}"
                              f"{_given_value(message)}")
        if message.startswith("unrecognized arguments:"):   # abbreviations are refused (jsonargparse 5 drops them)
            flags = [*_flags(cls), "--log-level", "--verbose", "--quiet", "--help"]
            types_ = field_types(cls)
            switches = [*(f for f, name in _flags(cls).items() if non_none(types_[name])[0] is bool),
                        "--verbose", "--quiet", "--help"]
            tokens = message.split(":", 1)[1].split()
            hints = [f"{tok.partition('=')[0]} {hint_text(close)}"
                     for tok, close in unknown_flag_hints(tokens, flags, switches, _readers(cls)) if close]
            if hints:
                message += "; " + "; ".join(hints) + "; options are spelt in full"
        fail(parser, message)


def _given_value(message: str) -> str:
    """``, got VALUE`` from jsonargparse's message: the text given (an ``X | None`` option's "Given value:" line; its
    "Got value:" lines hold the value converted, e.g. 100.0 for 1e2, and a dump followed), not the whole dump."""
    lines = [line.strip() for line in message.splitlines()]
    given = [m.group(1) for line in lines if (m := re.match(r"Given value:(.*)$", line))]
    got = [m.group(1) for line in lines if (m := re.search(r"Got value:(.*)$", line))]
    value = (given or got or [None])[0]
    if value is None:
        return " (" + " ".join(message.split("\n", 1)[-1].split()) + ")"
    value = value.strip()
    return f", got {value}" if value else ", got an empty value"


def check_file_key(parser: argparse.ArgumentParser, where: str, key: str, known: Collection[str],
                   seen: Collection[str]) -> None:
    """Exit 2 where a ``--config`` file's ``key`` (dashes read as underscores) names no option of ``known`` (with
    the closest as a did-you-mean) or one ``seen`` already (``lr-grid`` and ``lr_grid`` both given)."""
    name = key.replace("-", "_")
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        fail(parser, f"{where}: unknown option {key!r}{hint}; the keys are the long flag names without "
                      f"the dashes (see {parser.prog} --help)")
    if name in seen:
        fail(parser, f"{where}: option {name!r} is given twice")


def read_table(parser: argparse.ArgumentParser, path: str) -> tuple[dict[str, Any], bool]:
    """The table of a ``--config`` file (JSON, or TOML by its ``.toml`` suffix) and whether it is TOML; exits naming
    the file when it is missing, a folder, YAML, too large, unreadable, malformed or no table."""
    p = Path(path)
    where = f"--config {path}"
    if p.is_dir():   # (a run directory: its options are its config.json)
        hint = f", e.g. {p / 'config.json'}" if (p / "config.json").is_file() else ""
        fail(parser, f"{where}: is a folder, not a file; give a JSON or TOML file of options{hint}")
    if not p.is_file():
        fail(parser, f"{where}: no such file")
    is_toml = p.suffix.lower() == ".toml"
    if p.suffix.lower() in (".yaml", ".yml"):   # (it was read as JSON and told "not valid JSON")
        fail(parser, f"{where}: YAML is not read; write the options as JSON (a .json file) or TOML (a .toml file, "
                      "key = value lines)")
    try:
        text = read_whole(p, encoding="utf-8-sig")
        raw = tomllib.loads(text) if is_toml else json.loads(text, object_pairs_hook=unrepeated_keys)
    except FileTooLarge as e:
        fail(parser, f"--config {e}; an options file is a few KB: give the JSON or TOML file of options")
    except (OSError, UnicodeDecodeError) as e:
        fail(parser, f"{where}: cannot be read ({e})")
    except (ValueError, tomllib.TOMLDecodeError) as e:
        fail(parser, f"{where}: not valid {'TOML' if is_toml else 'JSON'} ({e}); a config file is "
                      f"{'TOML (key = value lines)' if is_toml else 'a JSON object'} (JSON, or TOML by a .toml name)")
    if not isinstance(raw, dict):
        fail(parser, f"{where}: expected a table of options (key = value), got {type(raw).__name__}")
    return raw, is_toml


def read_config(parser: ArgumentParser, cls: type, path: str) -> dict[str, Any]:
    """The options of a JSON or TOML file, each checked like its flag; exits naming the file on any problem."""
    raw, is_toml = read_table(parser, path)
    where = f"--config {path}"
    hints = field_types(cls)
    by_name = {f.name: f for f in fields(cls) if f.name != "config"}
    out: dict[str, Any] = {}
    # a run's own config.json: it records the --config file it merged (or none)
    run_config = "config" in raw and "out" in raw and (raw["config"] is None or isinstance(raw["config"], str))
    for key, value in raw.items():
        name = key.replace("-", "_")
        if run_config and name in ("config", "out", "resume", "overwrite", RESOLVED):
            continue  # where that run went and how (and what it resolved): a new run takes its own --out
        if run_config and raw.get("extend") and name in ADAPTER_SHAPE:
            continue  # an --extend run recorded the adapter's shape, which --extend takes again by itself
        if name == "config" and value is None:
            continue   # names no other file
        if name == "config" and name in {f.name for f in fields(cls)}:
            fail(parser, f"{where}: config = {json.dumps(value)}: a config file cannot name another one; "
                          "merge the two files")
        check_file_key(parser, where, key, by_name, out)
        f = by_name[name]
        tp = _field_type(f, hints)
        if name == "targets" and isinstance(value, list):   # joined by commas it was an invalid regex string
            fail(parser, f"{where}: targets = {json.dumps(value)} is not allowed; targets takes \"default\" or a "
                          'table of tower -> regexes, e.g. targets = {image = ["attn"], text = ["attn"]}')
        if name in _LIST_OPTIONS and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = ",".join(value)  # tasks = ["vqa", "retrieval"] means --tasks vqa,retrieval
        if name == "targets" and isinstance(value, dict):
            value = json.dumps(value)  # a table of tower -> regexes, as --targets takes it in JSON
        if name in _PATH_OPTIONS and value == "~":   # the parser reads a bare ~ as YAML's null
            value = os.path.expanduser("~")
        shown = f"{key} = {json.dumps(value, default=str)}"   # (TOML dates and times are no JSON)
        if value is None and not non_none(tp)[1]:   # parse_object lets null through for any type
            fail(parser, f"{where}: {key} = null is not allowed; {key} takes {describe_allowed(f, tp)}")
        if value is None:
            out[name] = None
            continue
        try:
            parsed = getattr(parser.parse_object({name: value}, defaults=False), name)
        except (ArgumentError, TypeError, ValueError):
            fail(parser, f"{where}: {shown} is not allowed; {key} takes {describe_allowed(f, tp)}")
        if isinstance(value, str) and non_none(tp)[0] in (int, float, bool):   # "4", "1e-3", "0x4", "yes"
            fix = f"{key} = {json.dumps(parsed)}" if is_toml else f'"{key}": {json.dumps(parsed)}'
            fail(parser, f"{where}: {shown} is a string (in quotes); {key} takes {describe_allowed(f, tp)}: write "
                          f"{fix}, without the quotes")
        if out_of_range(f.metadata, parsed):
            fail(parser, f"{where}: {shown} is out of range; {key} must be {range_text(f.metadata, parsed)}")
        out[name] = parsed
    return out


def command_line(argv: Sequence[str | os.PathLike | int | float] | None) -> list[str]:
    """``argv`` as strings (``sys.argv[1:]`` when None): a caller's ``Path`` or number is taken as the shell
    would pass it, rather than failing deep in argparse."""
    args = list(sys.argv[1:] if argv is None else argv)
    return [os.fspath(a) if isinstance(a, os.PathLike) else str(a) if isinstance(a, (int, float)) else a
            for a in args]


def parse_options(cls: type, argv: list[str] | None, prog: str, description: str) -> tuple[Any, str]:
    """Options (an instance of ``cls``) and the log level from the command line and its ``--config`` file.

    Exits with status 2 and a message on stderr for a bad value, status 0 after ``--help``.
    """
    opts, level, _ = parse_options_given(cls, argv, prog, description)
    return opts, level


def parse_options_given(cls: type, argv: list[str] | None, prog: str,
                        description: str) -> tuple[Any, str, frozenset[str]]:
    """:func:`parse_options` plus the names of the options given (on the command line or in the
    ``--config`` file) rather than left at their defaults -- ``--resume`` refuses those it would ignore."""
    parser = build_parser(cls, prog, description)
    argv = _negative_values(cls, _bare_home(cls, _dashes(cls, command_line(argv))))
    ns = _parse(parser, cls, argv)
    named = _given_on_command_line(cls, argv)
    if named.count("config") > 1:   # the parser keeps the last; the first file's values would be dropped unsaid
        fail(parser, f"--config is given {named.count('config')} times; give one file (merge them into one, or "
                      "give the options of the other on the command line, where they win over the file's)")
    # the parser keeps the last: `--tasks vqa --tasks retrieval` trained retrieval alone
    for name in ("tasks", "task"):
        if named.count(name) > 1:
            fail(parser, f"{flag(name)} is given {named.count(name)} times, and only the last would count; name every "
                          f"task in one comma-separated {flag(name)}, e.g. {flag(name)} vqa,retrieval")
    on_command_line = set(named)
    given = set(on_command_line)
    if getattr(ns, "config", None):
        from_file = read_config(parser, cls, os.path.expanduser(ns.config))
        for name, cleared in getattr(cls, "command_line_clears", {}).items():
            if name in on_command_line:
                for other in set(cleared) - on_command_line:
                    from_file.pop(other, None)
        given |= set(from_file)
        parser.set_defaults(**from_file)
        ns = _parse(parser, cls, argv)
    level = log_level(parser, ns)
    values = {f.name: _expand_home(f.name, getattr(ns, f.name)) for f in fields(cls)}
    for f in fields(cls):
        value = values[f.name]
        if f.name in _NOT_EMPTY and isinstance(value, str) and not value.strip():
            fix = "give the path to write to" if f.metadata.get("required") else _NOT_EMPTY[f.name]
            fail(parser, f"{flag(f.name)} {value!r}: an empty value (an unset shell variable?); {fix}")
        if out_of_range(f.metadata, value):
            fail(parser, f"{flag(f.name)}: must be {range_text(f.metadata, value)}, got {value}")
        unless = f.metadata.get("unless")
        if f.metadata.get("required") and value in (None, "") and not (unless and values[unless[0]] not in (None, "")):
            fail(parser, f"{flag(f.name)} is required (on the command line or in the --config file)"
                          + (f"; {unless[1]}" if unless else ""))
    return cls(**values), level, frozenset(given)


#: Options that take a comma-separated list, which a config file may give as a list of strings (out = ["a", "b"] is no
#: folder "a,b").
_LIST_OPTIONS = frozenset({"tasks", "task"})

#: Options whose empty value (``--resume "$RUN"`` with RUN unset) would silently mean another kind of run: a new run
#: instead of the resumed one, a new adapter instead of the extended one, no options file, the default output folder.
_NOT_EMPTY = {"resume": "give the directory of the run to continue, or leave --resume out to start a new run",
              "extend": "give the run (or adapter) directory whose adapter takes the new tasks, or leave --extend out",
              "config": "give a JSON or TOML file of options, or leave --config out",
              "out": "give the folder to write to, or leave --out out for its default (see --help)"}

#: Options that name files or folders; the shell leaves ``~`` alone in ``--out=~/x``, in quotes and in config files.
_PATH_OPTIONS = frozenset({"out", "resume", "extend", "data_root", "pretrained", "adapter", "config"})


def _expand_home(name: str, value: Any) -> Any:
    """``~`` in a path option expanded (each spec path of ``--tasks``), as the shell would: never a folder named
    ``~`` in the working directory."""
    if not isinstance(value, str) or "~" not in value:
        return value
    if name in _PATH_OPTIONS:
        return os.path.expanduser(value)
    if name == "tasks":
        return ",".join(os.path.expanduser(t.strip()) if t.strip().startswith("~") else t for t in value.split(","))
    return value


def _bare_home(cls: type, argv: list[str]) -> list[str]:
    """A path option's value ``~`` alone (quoted, or after ``=``, so the shell left it) as the home folder:
    the parser reads a bare ``~`` as YAML's null, which silently meant the option's default."""
    def path_flag(token: str) -> bool:
        return token.startswith("--") and _flag_name(cls, token) in _PATH_OPTIONS

    out = []
    for i, token in enumerate(argv):
        name, sep, value = token.partition("=")
        if sep and value == "~" and path_flag(name):
            token = f"{name}={os.path.expanduser('~')}"
        elif token == "~" and i > 0 and path_flag(argv[i - 1]):
            token = os.path.expanduser("~")
        out.append(token)
    return out


def _negative_values(cls: type, argv: list[str]) -> list[str]:
    """``--lr -1e-3`` as ``--lr=-1e-3``: argparse takes a token that starts with ``-`` for a flag unless it looks like
    ``-1`` or ``-0.5``, so a negative number in exponent form (or ``-inf``) failed as "expected one argument" instead
    of being checked against the option's range."""
    types_ = field_types(cls)
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = _flag_name(cls, token) if token.startswith("--") else None
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if name is not None and non_none(types_[name])[0] is not bool and value.startswith("-") and _is_number(value):
            out.append(f"{token}={value}")
            i += 2
        else:
            out.append(token)
            i += 1
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@functools.cache
def _flags(cls: type) -> dict[str, str]:
    """Every flag of an options class (``--name``; ``--no-name`` for a boolean) -> the option it sets."""
    types_ = field_types(cls)
    flags = {flag(f.name): f.name for f in fields(cls)}
    return flags | {"--no-" + f.name.replace("_", "-"): f.name for f in fields(cls)
                    if non_none(types_[f.name])[0] is bool}


def _readers(cls: type) -> dict[str, Callable[[str], Any]]:
    """Each flag of ``cls`` that takes a number or a choice -> a converter raising ValueError for a value it cannot
    read (a did-you-mean names no flag that could not read the typo's value: ``--warmup-ratio 0.1``)."""
    hints = field_types(cls)
    out: dict[str, Callable[[str], Any]] = {}
    for f in fields(cls):
        tp = non_none(_field_type(f, hints))[0]
        if tp in (int, float):
            out[flag(f.name)] = tp
        elif getattr(tp, "__origin__", None) is Literal:
            out[flag(f.name)] = functools.partial(_choice, tuple(tp.__args__))
    return out


def _choice(choices: tuple[str, ...], value: str) -> str:
    if value not in choices:
        raise ValueError(value)
    return value


def _flag_name(cls: type, token: str) -> str | None:
    """The option a flag names (``--name`` or ``--no-name``; the parser refuses abbreviations)."""
    return _flags(cls).get(token)


def _given_on_command_line(cls: type, argv: list[str]) -> list[str]:
    """The options ``argv`` sets (``--name``, ``--name=value``, ``--no-name``)."""
    given = []
    for token in argv:
        name = _flag_name(cls, token.partition("=")[0]) if token.startswith("--") else None
        if name is not None:
            given.append(name)
    return given
