"""The wheel's contents as ``pyproject.toml`` declares them: every package folder of ``mtl_lora_vl/`` is listed in
``[tool.setuptools] packages`` (the list is written by hand: a new subpackage left out installs from a checkout,
where CI runs, and is missing from the wheel), and every file of the built-in specs and assets matches a
``package-data`` pattern of its package."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def _package_folders() -> dict[str, Path]:
    """Each package the wheel should hold, by dotted name, and its folder in the checkout."""
    code = {".".join(p.parent.relative_to(REPO).parts): p.parent for p in (REPO / "mtl_lora_vl").rglob("__init__.py")}
    data = {}
    for name, where in SETUPTOOLS["package-dir"].items():   # (tasks/ and assets/ with their folders)
        root = REPO / where
        data.update({".".join([name, *d.relative_to(root).parts]): d for d in [root, *root.rglob("*")]
                     if d.is_dir() and "__pycache__" not in d.parts})
    return {**code, **data}


def test_every_package_folder_is_listed():
    missing = sorted(set(_package_folders()) - set(SETUPTOOLS["packages"]))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    unknown = sorted(set(SETUPTOOLS["packages"]) - set(_package_folders()))
    assert not unknown, f"[tool.setuptools] packages names {unknown}, which are not folders of the checkout"


def test_every_builtin_file_matches_its_package_data():
    patterns = SETUPTOOLS["package-data"]
    left_out = []
    for name, folder in _package_folders().items():
        if not name.startswith(tuple(SETUPTOOLS["package-dir"])):
            continue
        for f in folder.iterdir():
            if f.is_file() and not any(fnmatch.fnmatch(f.name, p) for p in patterns.get(name, [])):
                left_out.append(str(f.relative_to(REPO)))
    assert not left_out, f"{left_out} would be left out of the wheel: add a pattern to [tool.setuptools.package-data]"
