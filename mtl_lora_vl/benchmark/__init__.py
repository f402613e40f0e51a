"""The method benchmark: which adapter for these tasks? (``scripts/bench_methods.py``).

Its names are imported when first read (:mod:`..lazy_names`): ``bench --help`` reads the options in :mod:`.cli`
without importing torch, which :mod:`.bench` needs.
"""

from typing import TYPE_CHECKING

from ..lazy_names import lazy_names

if TYPE_CHECKING:
    from .bench import run_benchmark
    from .cli import main
    from .grid import BenchSettings

__getattr__, __dir__ = lazy_names(globals(), {"BenchSettings": "mtl_lora_vl.benchmark.grid",
                                              "main": "mtl_lora_vl.benchmark.cli",
                                              "run_benchmark": "mtl_lora_vl.benchmark.bench"})

__all__ = ["BenchSettings", "main", "run_benchmark"]
