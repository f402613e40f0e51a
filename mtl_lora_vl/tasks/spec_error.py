"""How a task spec is refused: :class:`SpecError`, and the message that names a field of the spec file, what it
expected and what it got (:func:`field_error`). A leaf beside :mod:`.spec` and :mod:`.spec_data`, which both raise
it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class SpecError(ValueError):
    """A task spec that cannot be used; the message names the file, the field and what was expected."""


def field_error(path: Path, fld: str, expected: str, got: Any = None, *, show_got: bool = True) -> SpecError:
    """The error for field ``fld`` of spec file ``path``: what was ``expected`` and (``show_got``) the value
    ``got``."""
    tail = f", got {got!r}" if show_got else ""
    return SpecError(f"{path}: field '{fld}': expected {expected}{tail}")
