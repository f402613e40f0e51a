"""The package root's names imported when first read (``mtl_lora_vl/lazy_names.py``, PEP 562): what a package of
eager imports did, a misspelt name, and a failure while importing a name's module."""

from __future__ import annotations

import importlib
import sys

import mtl_lora_vl


def test_each_submodule_the_package_imports_reads_as_the_module():
    """``from .lazy_names import lazy_names`` in ``__init__`` put the function where the submodule was:
    ``import mtl_lora_vl.lazy_names as m`` gave the function, and ``mock.patch("mtl_lora_vl.lazy_names.imported")``
    failed ('function' object has no attribute 'imported')."""
    modules = {"lazy_names", "process_start", "_version"}
    for short in modules:
        module = importlib.import_module(f"mtl_lora_vl.{short}")
        assert getattr(mtl_lora_vl, short) is module is sys.modules[f"mtl_lora_vl.{short}"], short
