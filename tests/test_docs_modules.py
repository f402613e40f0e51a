"""Every module docs/architecture.md's layout table names is a module of the package where the row puts it
(``adapters/`` row: ``mtl_lora_vl/adapters/NAME.py``; a path such as ``data/splits.py`` from the package's root)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mtl_lora_vl"


def missing(text: str) -> list[str]:
    """The ``*.py`` names of the layout table's rows that name no file of the package."""
    out = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        package = re.match(r"\| `(\w+)/` \|", line)
        folder = PACKAGE / package.group(1) if package else PACKAGE
        for name in re.findall(r"`([\w/]+\.py)`", line):
            if name.startswith(("scripts/", "tests/")):
                found = (ROOT / name).is_file()
            else:
                found = (folder / name).is_file() or (PACKAGE / name).is_file()
            if not found:
                out.append(f"{folder.relative_to(ROOT)}: {name}")
    return out


def test_the_modules_the_layout_names_exist():
    assert not missing((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))


def test_the_check_sees_a_module_that_is_not_there():
    text = "| `adapters/` | `layers.py` (1), `nothing.py` (2), `data/splits.py` |\n| `config.py` (3) | x `tasks.py` |"
    assert missing(text) == ["mtl_lora_vl/adapters: nothing.py", "mtl_lora_vl: tasks.py"]
