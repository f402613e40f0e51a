"""Checks the scripts' parsers run on a value as they read it, before the scripts import torch: a bad value is the
parser's error at once, worded as the check the script's ``main`` made once torch was imported (seconds later).

An action, not a ``type=`` function: argparse writes a ``type=`` function's refusal after ``argument --flag:``, so the
wording would change, and converts a string default through it (``pretrain_*.py --evaluate`` compares the parsed
values with the defaults to name the flags it would ignore). An action sees only a value given on the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


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
