"""The package root's names imported when first read (``mtl_lora_vl/lazy_names.py``, PEP 562): what a package of
eager imports did, a misspelt name, and a failure while importing a name's module."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mtl_lora_vl
import mtl_lora_vl.cli

REPO = Path(__file__).resolve().parent.parent


def _run(code: str, *path: Path) -> subprocess.CompletedProcess:
    """``python -c CODE`` with ``path`` and this checkout first on its import path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, path), str(REPO)])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_each_submodule_the_package_imports_reads_as_the_module():
    """``from .lazy_names import lazy_names`` in ``__init__`` put the function where the submodule was:
    ``import mtl_lora_vl.lazy_names as m`` gave the function, and ``mock.patch("mtl_lora_vl.lazy_names.imported")``
    failed ('function' object has no attribute 'imported')."""
    modules = {"lazy_names", "process_start", "_version"}
    for short in modules:
        module = importlib.import_module(f"mtl_lora_vl.{short}")
        assert getattr(mtl_lora_vl, short) is module is sys.modules[f"mtl_lora_vl.{short}"], short


def test_an_attribute_error_while_importing_a_names_module_is_not_no_such_name(tmp_path):
    """A module that raises AttributeError while it is imported (a library too old or too new: ``module 'torch' has
    no attribute ...``): ``from package import name`` said only "cannot import name 'thing'", the real error dropped
    by Python's ``from`` import (and ``hasattr`` was False). Now an ImportError naming both, the real one its cause."""
    package = tmp_path / "lazypkg"
    package.mkdir()
    (package / "__init__.py").write_text("from mtl_lora_vl.lazy_names import lazy_names\n"
                                         "__getattr__, __dir__ = lazy_names(globals(), {'thing': 'lazypkg.broken'})\n")
    (package / "broken.py").write_text("import os\nos.no_such_function()\ndef thing(): pass\n")
    (package / "sub.py").write_text("import os\nos.no_such_function()\n")
    for code in ("from lazypkg import thing", "import lazypkg; hasattr(lazypkg, 'thing')", "from lazypkg import sub"):
        done = _run(code, tmp_path)
        assert done.returncode == 1
        assert "module 'os' has no attribute 'no_such_function'" in done.stderr, (code, done.stderr)
    assert "ImportError: lazypkg.thing could not be imported: importing lazypkg.broken raised AttributeError: " \
           "module 'os' has no attribute 'no_such_function' (see the error above)" in _run(
               "from lazypkg import thing", tmp_path).stderr


def test_a_misspelt_name_says_the_name_it_is_close_to():
    """``mtl_lora_vl.atach`` said "has no attribute 'atach'" (Python added "Did you mean" only to an uncaught
    error's printout, not to str(e) as logs, pytest and notebooks show it, and never a submodule not yet imported:
    ``mtl_lora_vl.backbone``). The message names the close public name or submodule, as the package's others do."""
    cases = {"atach": "attach", "MTLLoraModel": "MTLLoRAModel", "backbone": "backbones", "adapter": "adapters"}
    for wrong, right in cases.items():
        try:
            getattr(mtl_lora_vl, wrong)
        except AttributeError as e:
            assert str(e) == f"module 'mtl_lora_vl' has no attribute {wrong!r} (did you mean {right!r}?)"
        else:
            raise AssertionError(wrong)
    with pytest.raises(AttributeError) as e:
        mtl_lora_vl.cli.export_mian  # noqa: B018
    assert str(e.value) == "module 'mtl_lora_vl.cli' has no attribute 'export_mian' (did you mean 'export_main'?)"
    # said once when uncaught (Python's own suggestion left off), and no hint where none is close
    assert _run("import mtl_lora_vl; mtl_lora_vl.atach").stderr.splitlines()[-1] == \
        "AttributeError: module 'mtl_lora_vl' has no attribute 'atach' (did you mean 'attach'?)"
    assert _run("import mtl_lora_vl; mtl_lora_vl.zzzzzz").stderr.splitlines()[-1] == \
        "AttributeError: module 'mtl_lora_vl' has no attribute 'zzzzzz'"
