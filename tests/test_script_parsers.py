"""The scripts' own parsers (``scripts/_parse_checks.Parser``) take no abbreviations and name the flag an unknown one
most likely means: plain argparse took ``bench_adapters.py --thre 2`` for ``--threads 2`` (and ran the benchmark),
refused ``pretrain_llava.py --eval 3`` as ambiguous once ``--eval-every`` came, and gave no hint for a typo.

No script is run: each parser is built from the script's source up to its ``__main__`` guard (the heavy imports
come after it) and only asked to parse command lines it refuses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from _parse_checks import Parser, at_least  # noqa: E402

from mtl_lora_vl.benchmark.cli import build_parser as build_bench_parser  # noqa: E402
from mtl_lora_vl.benchmark.cli import main as bench_main  # noqa: E402
from mtl_lora_vl.benchmark.cli import settings_from_args  # noqa: E402


def _refusal(parser, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        parser.parse_args(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def _script_parser(name: str):
    """``build_parser()`` of ``scripts/NAME.py``, from its source before the ``__main__`` guard (no torch)."""
    path = REPO / "scripts" / f"{name}.py"
    source = path.read_text(encoding="utf-8")
    names = {"__file__": str(path), "__name__": f"script_{name}"}
    exec(compile(source[:source.index('if __name__ == "__main__":')], str(path), "exec"), names)   # noqa: S102
    return names["build_parser"]()


def test_an_abbreviation_is_refused_with_the_flag_it_abbreviates(capsys):
    p = Parser(prog="x")
    p.add_argument("--threads", type=int, default=1, **at_least(1))
    p.add_argument("--case", choices=["clip", "llava"], default="clip")
    p.add_argument("--profile", action="store_true")
    said = _refusal(p, ["--thre", "2"], capsys)
    assert said == "x: error: unrecognized arguments: --thre (did you mean --threads?) 2"
    assert p.parse_args(["--threads", "2"]).threads == 2
    # never a flag that would refuse the value: its type, its choices, its check; nor a switch given a value
    assert _refusal(p, ["--thread", "x"], capsys).endswith("unrecognized arguments: --thread x")
    assert _refusal(p, ["--thread", "0"], capsys).endswith("unrecognized arguments: --thread 0")
    assert _refusal(p, ["--cases", "vit"], capsys).endswith("unrecognized arguments: --cases vit")
    assert _refusal(p, ["--cases", "llava"], capsys).endswith("--cases (did you mean --case?) llava")
    assert _refusal(p, ["--profiles", "3"], capsys).endswith("unrecognized arguments: --profiles 3")
    assert _refusal(p, ["--profiles"], capsys).endswith("--profiles (did you mean --profile?)")
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--help"])
    assert info.value.code == 0 and "usage: x [-h] [--threads THREADS]" in capsys.readouterr().out


@pytest.mark.parametrize(("script", "argv", "says"), [
    ("bench_adapters", ["--thre", "2"], "--thre (did you mean --threads?) 2"),   # ran the benchmark on 2 threads
    ("bench_adapters", ["--repaets", "3"], "--repaets (did you mean --repeats?) 3"),
    ("bench_adapters", ["--cas", "llava"], "--cas (did you mean --case?) llava"),
    ("bench_generation", ["--thr", "2"], "--thr (did you mean --threads?) 2"),
    ("bench_generation", ["--max-length", "8"], "--max-length (did you mean --max-len?) 8"),
    ("check_gpu", ["--onl", "clip_mixed_route_fp32"], "--onl (did you mean --only?) clip_mixed_route_fp32"),
    ("check_gpu", ["--olny", "nope"], "unrecognized arguments: --olny nope"),   # (--only refuses the value)
    ("pretrain_backbone", ["--step", "5"], "--step (did you mean --steps?) 5"),
    ("pretrain_backbone", ["--evaluat", "x"], "--evaluat (did you mean --evaluate?) x"),
    ("pretrain_llava", ["--eval", "3"], "--eval (did you mean --eval-every?) 3"),   # was "ambiguous option"
    ("pretrain_llava", ["--thr", "0"], "unrecognized arguments: --thr 0"),   # (--threads refuses 0)
])
def test_each_scripts_parser_refuses_abbreviations_and_names_the_flag(capsys, script, argv, says):
    assert _refusal(_script_parser(script), argv, capsys).endswith(says)


def test_the_scripts_without_a_build_parser_refuse_abbreviations_too(capsys, monkeypatch, tmp_path):
    """(Each command line also holds what keeps the old parser from running anything: an --out here, a --n 0 that
    its main refuses.)"""
    import importlib.util

    out = ["--out", str(tmp_path / "grid.png")]   # (the old parser took --per for --per-row and drew the grid)
    for name, argv, says in (("show_world", ["--per", "1", *out], "unrecognized arguments: --per 1"),
                             ("show_world", ["--per-rows", "1", *out], "--per-rows (did you mean --per-row?) 1"),
                             ("bench_image_check", ["--siz", "8x8", "--n", "0"], "--siz (did you mean --size?) 8x8")):
        spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
        with pytest.raises(SystemExit) as info:
            module.main(argv) if name == "show_world" else module.main()
        assert info.value.code == 2
        assert says in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_negative_value_argparse_reads_as_a_flag_is_named_attached(capsys):
    """``pretrain_backbone.py --lrr -1e-3`` was told ``--lr``, and ``--lr -1e-3`` is refused by argparse ("expected one
    argument": a token starting with ``-`` is a flag unless it reads as ``-1`` or ``-0.5``): the hint is
    ``--lr=-1e-3``, which argparse takes."""
    p = _script_parser("pretrain_backbone")
    assert _refusal(p, ["--lrr", "-1e-3"], capsys).endswith("--lrr (did you mean --lr=-1e-3?) -1e-3")
    assert p.parse_args(["--lr=-1e-3"]).lr == -1e-3   # (parsed only: nothing runs)
    assert _refusal(p, ["--lrr", "-0.5"], capsys).endswith("--lrr (did you mean --lr?) -0.5")   # argparse takes -0.5
    assert _refusal(p, ["--lrr", "1e-3"], capsys).endswith("--lrr (did you mean --lr?) 1e-3")
    q = Parser(prog="x")
    q.add_argument("--lr", type=float)
    q.add_argument("-1", dest="one", action="store_true")   # a flag that looks like a number: -0.5 is a flag too
    assert _refusal(q, ["--lrr", "-0.5"], capsys).endswith("--lrr (did you mean --lr=-0.5?) -0.5")
    with pytest.raises(SystemExit):   # (bench's parser, argparse's too; refused before anything runs)
        bench_main(["--lrgrid", "-1e-3"])
    assert "--lrgrid (did you mean --lr-grid? its learning rates are finite" in capsys.readouterr().err   # (> 0)


@pytest.mark.parametrize(("argv", "says"), [
    (["--lr", "-1e-3"], "--lr (did you mean --lr-grid? its learning rates are finite numbers > 0, comma-separated "
                        "(e.g. --lr-grid 1e-3,3e-3)) -1e-3"),
    (["--lr", "0"], "--lr (did you mean --lr-grid? its learning rates are finite numbers > 0"),
    (["--lr=-1e-3"], "--lr=-1e-3 (did you mean --lr-grid? its learning rates are finite numbers > 0"),
    (["--lr", "1e-3"], "--lr (did you mean --lr-grid?) 1e-3"),
    (["--lr", "x"], "unrecognized arguments: --lr x"),
])
def test_bench_names_no_rate_its_lr_grid_refuses(capsys, argv, says):
    """bench ``--lr -1e-3`` was told ``--lr-grid=-1e-3``, a rate bench then refuses ("every learning rate must be a
    finite number > 0"): it is told --lr-grid and what it takes. (Each argv holds an unknown flag: refused before
    anything runs; the named command line is only parsed.)"""
    with pytest.raises(SystemExit) as info:
        bench_main(argv)
    assert info.value.code == 2 and says in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(ValueError, match="every learning rate must be a finite number > 0"):
        settings_from_args(build_bench_parser().parse_args(["--lr-grid=-1e-3"])).validate()   # (why: parsed, refused)
    settings_from_args(build_bench_parser().parse_args(["--lr-grid", "1e-3"])).validate()   # (no settings run)


@pytest.mark.parametrize(("argv", "says"), [
    (["--lr", "-1e-3"], "argument --lr: expected one argument (-1e-3 is read as a flag: did you mean --lr=-1e-3?)"),
    (["--steps", "5", "--weight-decay", "-inf"],
     "argument --weight-decay: expected one argument (-inf is read as a flag: did you mean --weight-decay=-inf?)"),
    (["--steps", "-1e3"], "argument --steps: expected one argument"),   # --steps=-1e3 is no int: argparse's own
    (["--lr", "-x"], "argument --lr: expected one argument"),   # no number: a flag given no value, as argparse says
])
def test_a_known_flag_given_a_negative_value_argparse_reads_as_a_flag_is_told_the_value_attached(capsys, argv, says):
    """``pretrain_backbone.py --lr -1e-3`` was refused by argparse as "argument --lr: expected one argument", naming
    no fix (the package's commands read it as --lr=-1e-3; a typo's hint named it attached since ee94ab9)."""
    p = _script_parser("pretrain_backbone")
    assert _refusal(p, argv, capsys).endswith(": error: " + says)
    assert p.parse_args(["--lr=-1e-3", "--weight-decay=-inf"]).weight_decay == float("-inf")   # (parsed only)


def test_only_a_one_value_flag_before_any_double_dash_is_told_the_value_attached(capsys):
    """A flag of two values (``--pair -1e-3 2``: no ``--pair=`` form takes both) keeps argparse's own message, and
    after ``--`` (every token a positional one) ``--lr -1e-3`` is no flag and its value: parsed, not refused."""
    p = Parser(prog="t")
    p.add_argument("--lr", type=float)
    p.add_argument("--pair", nargs=2, type=float)
    p.add_argument("rest", nargs="*")
    assert _refusal(p, ["--pair", "-1e-3", "2"], capsys).endswith("error: argument --pair: expected 2 arguments")
    assert p.parse_args(["--", "--lr", "-1e-3"]).rest == ["--lr", "-1e-3"]
