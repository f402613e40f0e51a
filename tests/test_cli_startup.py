"""The command line answers ``--help`` and a mistyped flag without importing torch, transformers or open_clip.

Each ``--help`` and option error imported the whole package first (``mtl_lora_vl/__init__`` imported the
adapters, ``cli/__init__`` the train, eval and export commands): 4-8 s of torch and model-library imports on a
busy machine before a line was printed. The package root's and ``cli``'s public names are imported when first
read now (``lazy_names``), and the commands import their work once their options are read.

``export`` and ``bench`` (and ``scripts/export_merged.py``, ``scripts/bench_methods.py``) still took 5-15 s: the export
command's module imported io and the backbones, ``mtl_lora_vl.benchmark`` the grid runner and torch, and the bench
parser's defaults (``grid``) imported torch through ``distributed``, for a core count. Their work is imported when they
run now.

``scripts/bench_image_check.py --help`` imported numpy, PIL and (through the package's image code) torch, 2.6 s: its
timing run is ``scripts/_image_check_timing.py`` now, imported once its options are read.

``scripts/bench_adapters.py``, ``bench_generation.py``, ``pretrain_backbone.py``, ``pretrain_llava.py`` and
``check_gpu.py`` imported torch (bench_adapters: open_clip and transformers too) before reading their options: 4-6 s
for ``--help`` or a mistyped flag on a busy machine. Each builds its parser in ``build_parser()``, which runs before
those imports when the file is run as a script; ``main()`` parses with it again (the tests import the scripts whole).
A value such a parser took but ``main()`` refused (``--threads 0``, ``--images 0``, ``check_gpu.py --only nope``)
still waited for torch (3.6-5.6 s), and ``check_gpu.py --only nope`` on a machine without CUDA only said that there
was nothing to check: the parsers refuse those values as they read them now (``scripts/_parse_checks.py``), in the
same words. ``pretrain_llava.py --help`` imported PIL (the world's renderer, through ``mtl_lora_vl.data.instructions``)
to list the instruction kinds; they come from ``mtl_lora_vl.data.instruction_kinds``, a table, now.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mtl_lora_vl
import mtl_lora_vl.benchmark
import mtl_lora_vl.cli

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "open_clip", "numpy", "PIL")


def _imported(cmd: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime CMD``; the top-level modules it imported, from its import-time lines."""
    done = subprocess.run([sys.executable, "-X", "importtime", *cmd], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    names = {m.group(1).split(".")[0] for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", done.stderr, re.M)}
    return done, names


@pytest.mark.parametrize(("cmd", "code", "says"), [
    ([str(REPO / "scripts" / "train_vl.py"), "--help"], 0, "usage: train_vl.py"),
    ([str(REPO / "scripts" / "evaluate_vl.py"), "--help"], 0, "usage: evaluate_vl.py"),
    (["-m", "mtl_lora_vl", "--help"], 0, "usage: python -m mtl_lora_vl"),
    (["-m", "mtl_lora_vl", "train", "--help"], 0, "usage: python -m mtl_lora_vl train"),
    (["-m", "mtl_lora_vl", "eval", "--help"], 0, "usage: python -m mtl_lora_vl eval"),
    (["-m", "mtl_lora_vl", "train", "--taks", "vqa"], 2, "--taks (did you mean --tasks?)"),
    (["-m", "mtl_lora_vl", "eval", "--tasks", "vqa", "--batch-size", "x"], 2, "--batch-size: expected an integer"),
    (["-m", "mtl_lora_vl", "export", "--help"], 0, "usage: python -m mtl_lora_vl export"),
    (["-m", "mtl_lora_vl", "export", "--taks", "vqa"], 2, "--taks (did you mean --task?)"),
    ([str(REPO / "scripts" / "export_merged.py"), "--help"], 0, "usage: export_merged.py"),
    ([str(REPO / "scripts" / "export_merged.py"), "--adaptr", "x"], 2, "--adaptr (did you mean --adapter?)"),
    (["-m", "mtl_lora_vl", "bench", "--help"], 0, "usage: python -m mtl_lora_vl bench"),
    (["-m", "mtl_lora_vl", "bench", "--num-seeds", "3"], 2, "--num-seeds (did you mean --seeds?)"),
    (["-m", "mtl_lora_vl", "bench", "--threads", "100000"], 2, "give --threads between 1 and"),
    (["-m", "mtl_lora_vl", "bench", "--config", str(REPO / "pyproject.toml")], 2, "unknown option 'build-system'"),
    ([str(REPO / "scripts" / "bench_methods.py"), "--help"], 0, "usage: bench_methods.py"),
    ([str(REPO / "scripts" / "bench_image_check.py"), "--help"], 0, "usage: bench_image_check.py [-h] [--size SIZE]"),
    ([str(REPO / "scripts" / "bench_image_check.py"), "--size", "0x3"], 2, "--size needs both sides >= 1"),
    ([str(REPO / "scripts" / "bench_adapters.py"), "--case", "clp"], 2, "--case: invalid choice: 'clp'"),
    ([str(REPO / "scripts" / "bench_adapters.py"), "--repaets", "3"], 2,
     "unrecognized arguments: --repaets (did you mean --repeats?) 3"),
    ([str(REPO / "scripts" / "bench_generation.py"), "--max-len", "x"], 2, "--max-len: invalid int value: 'x'"),
    ([str(REPO / "scripts" / "pretrain_backbone.py"), "--setps", "5"], 2,
     "unrecognized arguments: --setps (did you mean --steps?) 5"),
    ([str(REPO / "scripts" / "pretrain_llava.py"), "--eval", "3"], 2, "--eval (did you mean --eval-every?) 3"),
    ([str(REPO / "scripts" / "check_gpu.py"), "--olny", "x"], 2, "unrecognized arguments: --olny x"),
    ([str(REPO / "scripts" / "show_world.py"), "--per-row", "x"], 2, "--per-row: invalid int value: 'x'"),
    # values the parser takes but main() refused, once torch was imported (the same words now, before it)
    ([str(REPO / "scripts" / "bench_adapters.py"), "--repeats", "0"], 2, "error: --repeats must be at least 1, got 0"),
    ([str(REPO / "scripts" / "bench_adapters.py"), "--threads", "-1"], 2, "error: --threads must be >= 0\n"),
    ([str(REPO / "scripts" / "bench_adapters.py"), "--warmup", "0"], 2, "error: --warmup must be at least 1 (a case's"),
    ([str(REPO / "scripts" / "bench_adapters.py"), "--grad-clip", "nan"], 2,
     "error: --grad-clip must be >= 0 (0 = no clipping), got nan"),
    ([str(REPO / "scripts" / "bench_generation.py"), "--images", "0"], 2, "error: --images must be at least 1, got 0"),
    ([str(REPO / "scripts" / "bench_generation.py"), "--threads", "0"], 2,
     "error: --threads must be at least 1, got 0"),
    ([str(REPO / "scripts" / "pretrain_backbone.py"), "--threads", "0"], 2, "error: --threads must be >= 1, got 0"),
    ([str(REPO / "scripts" / "pretrain_backbone.py"), "--batch-size", "1"], 2,
     "error: --batch-size must be >= 2 (a contrastive batch needs two pairs), got 1"),
    ([str(REPO / "scripts" / "pretrain_llava.py"), "--threads", "0"], 2, "error: --threads must be >= 1, got 0"),
    ([str(REPO / "scripts" / "pretrain_llava.py"), "--eval-every", "-5"], 2,
     "error: --eval-every must be >= 0 (0: only at the end), got -5"),
    ([str(REPO / "scripts" / "pretrain_llava.py"), "--lr", "inf"], 2, "error: --lr must be finite and >= 0, got inf"),
    ([str(REPO / "scripts" / "pretrain_llava.py"), "--instruction-types", "color,nope"], 2,
     "error: --instruction-types: unknown or no kinds ['nope']; choose from color,shape,count,existence,relation,"),
    ([str(REPO / "scripts" / "pretrain_llava.py"), "--instruction-types", ","], 2,
     "error: --instruction-types: unknown or no kinds []; choose from"),
    # (said "no CUDA device; nothing to check" on a machine without one, and after torch on one with a GPU)
    ([str(REPO / "scripts" / "check_gpu.py"), "--only", "llava_generate_fp32,nope"], 2,
     "error: --only: unknown check(s) ['nope']; known: ['llava_generate_fp32', "),
])
def test_help_and_option_errors_import_no_model_library(cmd, code, says):
    done, names = _imported(cmd)
    assert done.returncode == code, done.stderr[-2000:]
    assert says in done.stdout + done.stderr
    assert "argparse" in names   # (the import-time lines were read: every command parses its options)
    assert not names & set(HEAVY), f"{' '.join(cmd)} imported {sorted(names & set(HEAVY))}"


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("[!_]*.py")))
def test_every_script_answers_help_without_a_model_library(script):
    """Every script in ``scripts/`` (a new one too; ``_*.py`` are the modules they import) prints its help without
    importing torch, transformers, open_clip, numpy or PIL."""
    test_help_and_option_errors_import_no_model_library([str(REPO / "scripts" / script), "--help"], 0,
                                                        f"usage: {script}")


def test_lazy_names_are_the_public_api():
    """Every name of ``__all__`` is there (imported on first read), the type checkers' imports name the same
    ones, submodules still read as attributes, and a wrong name is an AttributeError."""
    for package in (mtl_lora_vl, mtl_lora_vl.cli, mtl_lora_vl.benchmark):
        for name in package.__all__:
            assert getattr(package, name) is not None
        assert set(package.__all__) <= set(dir(package))
    tree = ast.parse(Path(mtl_lora_vl.__file__).read_text(encoding="utf-8"))
    checked = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.If)
               for stmt in node.body if isinstance(stmt, ast.ImportFrom) for a in stmt.names}
    assert checked == set(mtl_lora_vl.__all__) - {"__version__"}
    assert mtl_lora_vl.attach.__module__ == "mtl_lora_vl.adapters.attach"
    assert mtl_lora_vl.backbones.load_backbone.__name__ == "load_backbone"
    from mtl_lora_vl.cli import export_main
    assert export_main.__module__ == "mtl_lora_vl.cli.export"
    assert mtl_lora_vl.benchmark.main.__module__ == "mtl_lora_vl.benchmark.cli"
    assert mtl_lora_vl.benchmark.run_benchmark.__name__ == "run_benchmark"
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        mtl_lora_vl.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        from mtl_lora_vl import no_such_name  # noqa: F401
