"""Checks the scripts' parsers run on a value as they read it, before the scripts import torch: a bad value is the
parser's error at once, worded as the check the script's ``main`` made once torch was imported (seconds later).

An action, not a ``type=`` function: argparse writes a ``type=`` function's refusal after ``argument --flag:``, so the
wording would change, and converts a string default through it (``pretrain_*.py --evaluate`` compares the parsed
values with the defaults to name the flags it would ignore). An action sees only a value given on the command line.

:class:`Parser` is the scripts' ``ArgumentParser``: it takes no abbreviations (``--thre 2`` was ``--threads 2``, and
an abbreviation a new flag makes ambiguous would break a command line that worked: ``pretrain_llava.py --eval`` did
when ``--eval-every`` came), as the package's commands do, and names the flag an unknown one most likely means, with
the package's did-you-mean (``mtl_lora_vl.cli.flag_hints``, which imports neither torch nor numpy; imported only
for a command line it refuses). A flag given a negative number argparse reads as a flag (``--lr -1e-3``) is told the
value attached (:func:`detached_negative`), where argparse said only "expected one argument".
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``allow_abbrev=False`` and a did-you-mean after each unknown flag in its
    "unrecognized arguments" error (``--repaets (did you mean --repeats?) 3``); the same exit status 2 and help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        said = detached_negative(argv, self)
        if said:   # (argparse's own "argument --lr: expected one argument" named no fix)
            self.error(said)
        parsed, unknown = self.parse_known_args(argv, namespace)
        if unknown:
            self.error("unrecognized arguments: " + " ".join(with_hints(unknown, self)))
        return parsed


def with_hints(tokens: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Unknown command-line ``tokens``, each flag followed by ``(did you mean --flag?)`` where one is close: never a
    switch for a token given a value, nor a flag that would refuse the value (its type, choices or check)."""
    # imported here, for a refused command line only: at the top it put mtl_lora_vl.cli (jsonargparse) before every
    # --help, 0.13 s alone (check_gpu.py --help: 0.16 -> 0.42 s on a busy machine, medians of 5)
    from mtl_lora_vl.cli.flag_hints import argparse_reads_as_flag, hint_text, unknown_flag_hints

    actions = [a for a in parser._actions if a.option_strings]
    flags = [s for a in actions for s in a.option_strings if s.startswith("--")]
    switches = [s for a in actions if a.nargs == 0 for s in a.option_strings]
    readers = {s: _reader(a) for a in actions if a.nargs != 0 for s in a.option_strings}
    attach = functools.partial(argparse_reads_as_flag, parser)   # (--lrr -1e-3: --lr=-1e-3, as argparse takes it)
    return [f"{tok} {hint_text(close)}" if close else tok
            for tok, close in unknown_flag_hints(tokens, flags, switches, readers, attach)]


def detached_negative(argv: Sequence[str], parser: argparse.ArgumentParser) -> str | None:
    """The refusal of a flag that takes one value given a negative number argparse reads as a flag of its own
    (``--lr -1e-3``: a token starting with ``-`` is a flag unless it reads as ``-1`` or ``-0.5``), naming the value
    attached (``--lr=-1e-3``), as the package's commands read it; None where there is none, or where the flag would
    refuse the value attached too (its type, choices or check: argparse's own message stands)."""
    for i, tok in enumerate(argv[:-1]):
        if tok == "--":
            break
        action = parser._option_string_actions.get(tok)
        value = argv[i + 1]
        if action is None or action.nargs is not None or not value.startswith("-") or not _is_number(value):
            continue
        # (imported for such a value only, as in with_hints)
        from mtl_lora_vl.cli.flag_hints import argparse_reads_as_flag
        if argparse_reads_as_flag(parser, value) and _reads(_reader(action), value):
            return (f"argument {'/'.join(action.option_strings)}: expected one argument ({value} is read as a flag: "
                    f"did you mean {tok}={value}?)")
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _reads(read: Callable[[str], Any], value: str) -> bool:
    try:
        read(value)
    except ValueError:
        return False
    return True


def _reader(action: argparse.Action) -> Callable[[str], Any]:
    """What ``action`` makes of a value: its ``type=`` conversion, then its choices and its check (:func:`refusing`),
    a ValueError where it would refuse the value."""
    def read(text: str) -> Any:
        try:
            value = action.type(text) if callable(action.type) else text
        except (argparse.ArgumentTypeError, TypeError) as e:   # (argparse's own refusals of a value)
            raise ValueError(text) from e
        if action.choices is not None and value not in action.choices:
            raise ValueError(text)
        if isinstance(action, _Refusing) and action.problem(max(action.option_strings, key=len), value):
            raise ValueError(text)
        return value
    return read


class _Refusing(argparse.Action):
    """Stores the (``type=``-converted) value, or ends the parse with ``parser.error(problem(flag, value))``; ``flag``:
    the option's long name as defined, whatever abbreviation the command line used."""

    def __init__(self, option_strings, dest, problem: Callable[[str, Any], str | None], **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.problem = problem

    def __call__(self, parser, namespace, values, option_string=None):
        said = self.problem(max(self.option_strings, key=len), values)
        if said:
            parser.error(said)
        setattr(namespace, self.dest, values)


def refusing(problem: Callable[[str, Any], str | None]) -> dict[str, Any]:
    """``add_argument`` keywords: the value is refused with ``problem(flag, value)``'s message where it says one."""
    return {"action": _Refusing, "problem": problem}


def at_least(low: float, says: str = "{flag} must be >= {low}, got {value}") -> dict[str, Any]:
    """``add_argument`` keywords: a value below ``low`` (or NaN) refused with ``says`` (a format string of ``flag``,
    ``low`` and ``value``)."""
    return refusing(lambda flag, value: None if value >= low else says.format(flag=flag, low=low, value=value))
