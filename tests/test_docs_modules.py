"""Every module docs/architecture.md's layout table names is a module of the package where the row puts it
(``adapters/`` row: ``mtl_lora_vl/adapters/NAME.py``; a path such as ``data/splits.py`` from the package's root), and
a line count the table gives a module (``layers.py`` (478, ...)) is the module's, and every module of the package
(but ``__init__.py`` / ``__main__.py``) is named there, in its package's row."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mtl_lora_vl"


def _named(text: str) -> list[tuple[Path, str, Path | None, int | None]]:
    """(row's folder, name, the file it names or None, the line count given after it or None) per ``*.py`` name."""
    out = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        package = re.match(r"\| `(\w+)/` \|", line)
        folder = PACKAGE / package.group(1) if package else PACKAGE
        for m in re.finditer(r"`([\w/]+\.py)`(?: \((\d+)[,:)])?", line):
            name, count = m.group(1), m.group(2)
            if name.startswith(("scripts/", "tests/")):
                candidates = [ROOT / name]
            else:
                candidates = [folder / name, PACKAGE / name]
            path = next((c for c in candidates if c.is_file()), None)
            out.append((folder, name, path, int(count) if count else None))
    return out


def missing(text: str) -> list[str]:
    """The ``*.py`` names of the layout table's rows that name no file of the package."""
    return [f"{folder.relative_to(ROOT)}: {name}" for folder, name, path, _ in _named(text) if path is None]


def unnamed(text: str, package: Path = PACKAGE) -> list[str]:
    """The modules of ``package`` (but ``__init__.py`` / ``__main__.py``) the layout table's rows do not name where
    they live: ``evaluation/report.py`` named in the ``evaluation/`` row does not name ``benchmark/report.py``."""
    named = {path.resolve() for _, _, path, _ in _named(text) if path is not None}
    return sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                  if p.name not in ("__init__.py", "__main__.py") and p.resolve() not in named)


#: How far the layout table's count may lag its module: a few lines' change need not touch the doc (every helper's
#: branch conflicted there); the 500-line budget itself is held by test_no_module_is_over_the_line_budget.
SLACK = 25
BUDGET = 500


def miscounted(text: str, slack: int = SLACK) -> list[str]:
    """The layout table's line counts more than ``slack`` lines off their module's: ``path: says N, has M``."""
    out = []
    for _, _, path, count in _named(text):
        if path is not None and count is not None:
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if abs(lines - count) > slack:
                out.append(f"{path.relative_to(ROOT)}: says {count}, has {lines}")
    return out


def test_the_modules_the_layout_names_exist():
    assert not missing((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))


def test_the_check_sees_a_module_that_is_not_there():
    text = "| `adapters/` | `layers.py` (1), `nothing.py` (2), `data/splits.py` |\n| `config.py` (3) | x `tasks.py` |"
    assert missing(text) == ["mtl_lora_vl/adapters: nothing.py", "mtl_lora_vl: tasks.py"]


def test_the_line_counts_the_layout_gives_are_the_modules():
    """A module that grows or shrinks updates its count in docs/architecture.md (within SLACK lines)."""
    assert not miscounted((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))


def test_no_module_is_over_the_line_budget():
    """One concept per module: a module past BUDGET lines is split by concept (docs/architecture.md)."""
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    assert sizes and not {str(p.relative_to(ROOT)): n for p, n in sizes.items() if n > BUDGET}


def test_the_count_check_sees_a_wrong_count():
    lines = len((PACKAGE / "adapters" / "runs.py").read_text(encoding="utf-8").splitlines())
    text = f"| `adapters/` | `runs.py` ({lines}, the runs), `rows.py` (1, the row updates), `layers.py` |"
    assert miscounted(text, slack=0) == [f"mtl_lora_vl/adapters/rows.py: says 1, has "
                                f"{len((PACKAGE / 'adapters' / 'rows.py').read_text(encoding='utf-8').splitlines())}"]


def test_every_module_is_named_in_the_layout():
    """A new module gets a row entry in docs/architecture.md: what it holds, one clause."""
    assert not unnamed((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))


def test_the_check_sees_a_module_the_layout_does_not_name():
    text = ("| `evaluation/` | `report.py` (1), `evaluate.py` |\n| `adapters/` | `runs.py` |\n"
            "| `config.py` (2) | x |\n| `wording.py` | x |")
    left = unnamed(text)
    assert "adapters/runs.py" not in left and "evaluation/report.py" not in left and "config.py" not in left
    assert "wording.py" not in left and "evaluation/evaluate.py" not in left
    assert "benchmark/report.py" in left and "adapters/rows.py" in left and "families.py" in left
    assert not any(name.endswith(("__init__.py", "__main__.py")) for name in left)
