"""The method benchmark: which adapter for these tasks? (``scripts/bench_methods.py``)."""

from .bench import run_benchmark
from .cli import main
from .grid import BenchSettings

__all__ = ["BenchSettings", "main", "run_benchmark"]
