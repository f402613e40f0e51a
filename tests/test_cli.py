"""The command line: one mtl-lora-vl command, options from typed dataclasses, --config held to the flags'
checks, logging and progress, and plots that leave matplotlib's global state alone."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
from test_export import oc_dir, trained_run  # noqa: F401 - fixtures of a saved adapter

from mtl_lora_vl.cli import COMMANDS, main, parse_eval_args, parse_train_args, train_main
from mtl_lora_vl.cli.commands import run_command
from mtl_lora_vl.cli.export import export_command
from mtl_lora_vl.log import cli_logging, progress
from mtl_lora_vl.options import ExportOptions, TrainOptions

REPO = Path(__file__).resolve().parent.parent


def _refused(capsys, argv: list[str]) -> str:
    """Parse ``argv`` as the train command; it must exit with status 2. Returns the error line."""
    with pytest.raises(SystemExit) as info:
        parse_train_args(argv, prog="mtl-lora-vl train")
    assert info.value.code == 2
    err = capsys.readouterr().err
    return next(line for line in err.splitlines() if "error:" in line)


# ------------------------------------------------------------------------------------------------ config files


@pytest.mark.parametrize("text, key, allowed", [
    ('precision = "fp64"', "precision", 'one of "auto", "fp32", "bf16", "fp16"'),
    ('batch_mode = "bogus"', "batch_mode", 'one of "mixed", "homogeneous"'),
    ("rank = 8.5", "rank", "an integer >= 1"),
    ("rank = -1", "rank", ">= 1"),
    ("n-up = 0", "n-up", ">= 1"),
    ("compile = 3", "compile", "true or false"),
    ("dropout = 1.5", "dropout", ">= 0 and < 1"),
    ('method = "lora_plus"', "method", '"mtl_lora", "lora"'),
    ('targets = ["attn"]', "targets", "a table of tower -> regexes"),   # joined to "attn", refused later
    ("epochs = inf", "epochs", "a finite number > 0"),       # failed deep in the set-up (Fraction('inf'))
    ("lr = nan", "lr", "a finite number > 0"),              # trained to a non-finite stop
    ("sampling_temperature = inf", "sampling_temperature", "a finite number > 0"),
])
def test_bad_config_values_are_refused_naming_file_key_and_what_is_allowed(tmp_path, capsys, text, key, allowed):
    cfg = tmp_path / "run.toml"
    cfg.write_text(text + "\n")
    line = _refused(capsys, ["--config", str(cfg)])
    assert f"mtl-lora-vl train: error: --config {cfg}: {text.split(' = ')[0]} = " in line
    assert key in line and allowed in line, line


def test_config_file_errors_name_the_file(tmp_path, capsys):
    unknown = tmp_path / "typo.toml"
    unknown.write_text("rnak = 4\n")
    line = _refused(capsys, ["--config", str(unknown)])
    assert str(unknown) in line and "unknown option 'rnak'" in line and "did you mean 'rank'" in line
    broken = tmp_path / "broken.toml"
    broken.write_text("rank = \n")
    line = _refused(capsys, ["--config", str(broken)])
    assert str(broken) in line and "not valid TOML" in line and "line 1" in line
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"rank": 4,')
    assert "not valid JSON" in _refused(capsys, ["--config", str(bad_json)])
    yaml = tmp_path / "options.yaml"   # it was read as JSON: "not valid JSON (Expecting value ...)"
    yaml.write_text("rank: 4\n")
    assert "YAML is not read; write the options as JSON" in _refused(capsys, ["--config", str(yaml)])
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    assert "expected a table of options" in _refused(capsys, ["--config", str(listed)])
    assert "no such file" in _refused(capsys, ["--config", str(tmp_path / "missing.toml")])
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"config": "other.json"}))
    assert "a config file cannot name another one" in _refused(capsys, ["--config", str(nested)])


def test_config_given_twice_is_refused(tmp_path, capsys):
    """The parser kept the last --config, so the first file's options were dropped without a word."""
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text("rank = 4\n")
    second.write_text("n-up = 2\n")
    for argv in (["--config", str(first), "--config", str(second)], [f"--config={first}", "--config", str(second)]):
        with pytest.raises(SystemExit) as e:
            parse_train_args(argv)
        assert e.value.code == 2 and "--config is given 2 times; give one file" in capsys.readouterr().err
    assert parse_train_args(["--config", str(first), "--n-up", "2"]).rank == 4


def test_config_sets_options_and_flags_win_wherever_they_stand(tmp_path):
    cfg = tmp_path / "opts.toml"
    cfg.write_text('tasks = ["vqa", "retrieval"]\nrank = 4\nn-up = 2\ncompile = true\nprecision = "bf16"\n'
                   "epochs = 2\n")
    opts = parse_train_args(["--config", str(cfg)])
    assert (opts.tasks, opts.rank, opts.n_up, opts.compile, opts.precision, opts.epochs) == (
        "vqa,retrieval", 4, 2, True, "bf16", 2.0)
    for argv in (["--rank", "6", "--config", str(cfg)], ["--config", str(cfg), "--rank", "6"]):
        assert parse_train_args(argv).rank == 6
    assert parse_train_args(["--config", str(cfg), "--no-compile"]).compile is False
    assert parse_train_args(["--config", str(cfg), "--compile", "false"]).compile is False
    assert parse_train_args(["--compile"]).compile is True
    assert parse_train_args(["--n_up", "5"]).n_up == 5  # underscores work too
    # --steps on the command line wins over the file's epochs, which would otherwise decide the length
    opts = parse_train_args(["--config", str(cfg), "--steps", "7"])
    assert (opts.steps, opts.epochs) == (7, None)
    assert parse_train_args(["--config", str(cfg), "--steps", "7", "--epochs", "3"]).epochs == 3.0
    run_config = tmp_path / "config.json"   # a run's own config.json records both
    run_config.write_text(json.dumps({"config": None, "out": "runs/x", "steps": 40, "epochs": 2}))
    assert parse_train_args(["--config", str(run_config)]).epochs == 2.0
    assert (lambda o: (o.steps, o.epochs))(parse_train_args(["--config", str(run_config), "--steps", "5"])) == (5, None)


def test_argv_may_hold_paths_and_numbers(tmp_path, capsys):
    """A Python caller's ``Path`` or number in argv is taken as the shell would pass it (it raised
    AttributeError / TypeError inside argparse)."""
    cfg = tmp_path / "opts.toml"
    cfg.write_text("rank = 4\n")
    opts = parse_train_args(["--config", cfg, "--out", tmp_path / "run", "--steps", 7])
    assert (opts.rank, opts.out, opts.steps) == (4, str(tmp_path / "run"), 7)
    assert main(["train", "--config", cfg, "--steps", 0]) == 2   # parsed as far as the range check
    assert "--steps: must be" in capsys.readouterr().err


def test_bad_flags_are_refused_with_what_is_allowed(capsys):
    assert _refused(capsys, ["--rank", "8.5"]).endswith("--rank: expected an integer >= 1, got 8.5")
    assert "--rank: must be >= 1, got 0" in _refused(capsys, ["--rank", "0"])
    assert "--lr: expected a number > 0, got inf" in _refused(capsys, ["--lr", "inf"])
    assert "--precision: expected one of" in _refused(capsys, ["--precision", "fp64"])
    assert "--compile: expected true or false, got maybe" in _refused(capsys, ["--compile", "maybe"])
    # an optional number: the line ended with jsonargparse's dump of the union's subtypes and their errors
    assert _refused(capsys, ["--epochs", "inf"]).endswith("--epochs: expected a number > 0 (or leave it out), got inf")
    assert "unrecognized arguments: --rnak" in _refused(capsys, ["--rnak", "3"])
    # an abbreviation was taken with a deprecation warning (jsonargparse 5 refuses them): refused, with the flag
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        err = _refused(capsys, ["--step", "3", "--batch=4"])
    assert "--step (did you mean --steps?)" in err and "--batch (did you mean --batch-size?)" in err
    # hints name flags that exist, never the refused flag itself (--no-X exists for booleans only)
    assert "(did you mean --verbose?)" in _refused(capsys, ["--verbos"])
    for bad in ("--no-steps", "--no-data"):
        err = _refused(capsys, [bad])
        assert f"(did you mean {bad}?)" not in err and "--no-data-root" not in err


def test_no_command_and_a_bad_thread_count_say_what_to_give(capsys):
    """`mtl-lora-vl` alone said "required: COMMAND, args" (an internal argument); bench --threads 0 ran on 1."""
    from mtl_lora_vl.benchmark.cli import main as bench_main

    assert main([], prog="mtl-lora-vl") == 2
    err = capsys.readouterr().err
    assert "error: give a command, one of: train, eval, export, bench" in err and "args" not in err.split("error:")[1]
    with pytest.raises(SystemExit) as info:
        bench_main(["--threads", "0"], prog="mtl-lora-vl bench")
    assert info.value.code == 2 and "--threads: must be >= 1, got 0" in capsys.readouterr().err


def test_log_level_takes_any_case_and_names_the_levels(capsys):
    """--log-level DEBUG (the logging module's spelling) was a multi-line jsonargparse internal error."""
    from mtl_lora_vl.cli.parsing import parse_options_given

    for given, level in (("DEBUG", "debug"), ("Warning", "warning"), ("error", "error")):
        assert parse_options_given(TrainOptions, ["--log-level", given], "train", "")[1] == level
    line = _refused(capsys, ["--log-level", "loud"])
    assert "--log-level: expected one of debug, info, warning, error (any case), got 'loud'" in line


def test_help_names_every_type_in_words():
    """--help showed --log-level's type as '<function _log_level at 0x...>'."""
    from mtl_lora_vl.cli.parsing import build_parser
    from mtl_lora_vl.options import EvalOptions, ExportOptions

    for cls in (TrainOptions, EvalOptions, ExportOptions):
        text = build_parser(cls, "prog", "").format_help()
        assert "<function" not in text and "<class" not in text and " at 0x" not in text, cls.__name__


def test_help_names_every_family_the_options_serve():
    """--backbone's and --image-reading's help left out Mistral 3, which hf:DIR loads and which reads either way."""
    from mtl_lora_vl.options import EvalOptions

    loads = ["CLIP", "LLaVA", "LLaVA-NeXT", "LLaVA-OneVision", "PaliGemma", "Gemma 3", "Qwen2-VL", "Idefics3",
             "SmolVLM", "Mistral 3"]
    either_way = ["LLaVA-NeXT", "LLaVA-OneVision", "Idefics3", "SmolVLM", "Mistral 3"]   # NativeImageReading
    fields = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainOptions)}
    assert [n for n in loads if n not in fields["backbone"]] == []
    assert [n for n in either_way if n not in fields["image_reading"]] == []
    eval_reading = next(f.metadata["help"] for f in dataclasses.fields(EvalOptions) if f.name == "image_reading")
    assert [n for n in either_way if n not in eval_reading] == []
    # so do the messages that list the backbone forms and the generative backbones (helper 419)
    from mtl_lora_vl.backbones import SPEC_FORMS
    from mtl_lora_vl.backbones.base import _GENERATIVE

    assert [n for n in loads if n not in SPEC_FORMS] == []
    assert [n for n in loads[1:] if n not in _GENERATIVE] == []


def test_backbone_help_names_an_open_clip_folder():
    """--backbone's help listed open_clip:NAME and hf:DIR but not open_clip:DIR, the form a local open_clip folder (a
    CoCa for captioning, a fine-tuned CLIP) is given in; what parse_spec accepts, the help names."""
    text = next(f.metadata["help"] for f in dataclasses.fields(TrainOptions) if f.name == "backbone")
    assert "open_clip:DIR (a folder with open_clip_config.json and weights: a CLIP or CoCa)" in text


def test_resume_help_names_the_options_a_resume_may_change():
    """Review 263: --resume's help said only "continue the killed or stopped run", not that every option but
    --workers and --device is the run's own (a differing one, more --steps included, is refused)."""
    from mtl_lora_vl.cli.parsing import build_parser
    from mtl_lora_vl.rundir import RESUME_OWN, RESUME_RELOCATABLE

    text = " ".join(build_parser(TrainOptions, "prog", "").format_help().split())
    start = text.index("--resume RESUME ")
    resume_help = text[start:text.index("--extend EXTEND ", start)]
    for name in (*RESUME_OWN, *RESUME_RELOCATABLE):
        if name != "resume":
            assert f"--{name.replace('_', '-')}" in resume_help, name
    assert "--steps" in resume_help and "refused" in resume_help


def test_train_main_returns_2_on_a_bad_option(capsys):
    assert train_main(["--batch-mode", "bogus"], prog="train_vl.py") == 2
    assert "train_vl.py: error: --batch-mode" in capsys.readouterr().err


def test_options_are_one_typed_source():
    from typing import get_args

    from mtl_lora_vl.options import field_types

    hints = field_types(TrainOptions)
    assert get_args(hints["precision"]) == ("auto", "fp32", "bf16", "fp16")
    assert hints["rank"] is int and hints["compile"] is bool
    with pytest.raises(ValueError, match="--rank: must be >= 1, got 0"):
        TrainOptions(rank=0).validate()  # the same ranges for Python callers


def test_eval_and_export_options(tmp_path, capsys):
    cfg = tmp_path / "eval.json"
    cfg.write_text(json.dumps({"adapter": "runs/x/adapter", "batch-size": 32, "precision": "fp32"}))
    opts = parse_eval_args(["--config", str(cfg), "--split", "val"])
    assert (opts.adapter, opts.batch_size, opts.precision, opts.split) == ("runs/x/adapter", 32, "fp32", "val")
    with pytest.raises(SystemExit):
        parse_eval_args([], prog="mtl-lora-vl eval")
    assert "--adapter is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_command(["--adapter", "a", "--task", "vqa", "--out", "o", "--format", "onnx"], prog="x")
    assert "--format: expected one of" in capsys.readouterr().err
    assert ExportOptions().format == "merged"


# ------------------------------------------------------------------------------------------------ commands


def test_help_names_the_real_program(capsys):
    assert main(["train", "--help"], prog="mtl-lora-vl") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mtl-lora-vl train ") and "--no-compile" in out and "--log-level" in out
    assert main(["export", "--help"], prog="mtl-lora-vl") == 0
    assert "usage: mtl-lora-vl export " in capsys.readouterr().out
    assert main(["--help"], prog="mtl-lora-vl") == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("train", "eval", "export", "bench"))
    assert main(["nope"], prog="mtl-lora-vl") == 2


def test_scripts_and_module_name_themselves():
    for cmd, name in (([sys.executable, str(REPO / "scripts" / "train_vl.py"), "--help"], "usage: train_vl.py"),
                      ([sys.executable, "-m", "mtl_lora_vl", "eval", "--help"], "usage: python -m mtl_lora_vl eval")):
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.startswith(name), done.stdout[:200]


def test_subcommands_resolve_lazily_and_bench_may_be_missing(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "bench", ("mtl_lora_vl.no_such_benchmark:main", "x"))
    assert main(["bench"], prog="mtl-lora-vl") == 2
    assert "mtl_lora_vl.no_such_benchmark is not part of this installation" in capsys.readouterr().err
    calls = []
    fake = types.ModuleType("fake_bench")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "fake_bench", fake)
    monkeypatch.setitem(COMMANDS, "bench", ("fake_bench:main", "x"))
    assert main(["bench", "--cases", "lora"], prog="mtl-lora-vl") == 0 and calls == [["--cases", "lora"]]


# ------------------------------------------------------------------------------------------------ logging


def test_cli_logging_levels_and_restores(capsys):
    log = logging.getLogger("mtl_lora_vl.some.module")
    root = logging.getLogger("mtl_lora_vl")
    before = (list(root.handlers), root.level)

    def work():
        log.debug("dbg")
        log.info("info line")
        log.warning("careful")
        raise ValueError("a clear problem")

    assert run_command("info", work) == 2
    err = capsys.readouterr().err
    assert "[mtl-lora-vl] info line" in err and "[mtl-lora-vl] warning: careful" in err and "dbg" not in err
    assert "[mtl-lora-vl] error: a clear problem" in err and "Traceback" not in err
    assert run_command("warning", work) == 2  # -q
    err = capsys.readouterr().err
    assert "info line" not in err and "careful" in err
    assert run_command("debug", work) == 2  # -v: debug lines and the traceback
    err = capsys.readouterr().err
    assert "mtl_lora_vl.some.module: dbg" in err and "Traceback" in err
    assert (list(root.handlers), root.level) == before  # nothing left configured


def test_nested_cli_logging_prints_each_line_once(capsys):
    """A command run inside another's logging (``with cli_logging(): train_main(...)``) added a second handler:
    every line and warn_user warning printed twice."""
    from mtl_lora_vl.log import warn_user

    log = logging.getLogger("mtl_lora_vl.some.module")
    root = logging.getLogger("mtl_lora_vl")
    before = list(root.handlers)
    with cli_logging("info"):
        with cli_logging("warning"):
            log.info("inner info")
            log.warning("inner warn")
            warn_user("inner user")
        log.info("outer info")
    assert list(root.handlers) == before
    err = capsys.readouterr().err
    assert err.count("inner warn") == 1 and err.count("inner user") == 1 and err.count("outer info") == 1
    assert "inner info" not in err


def test_ranks_other_than_the_main_one_log_only_errors_while_setting_up(capsys):
    """Under torchrun every rank read the same specs and data and printed each set-up warning once per rank."""
    import warnings

    from mtl_lora_vl.log import cli_logging, main_rank_logging, warn_user

    log = logging.getLogger("mtl_lora_vl.data.rows")
    with cli_logging("info") as root, warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for main in (True, False):
            with main_rank_logging(main):
                log.info(f"read main={main}")
                log.warning(f"odd rows main={main}")
                log.error(f"bad main={main}")
                warn_user(f"targets main={main}")
            assert root.level == logging.INFO
    assert [str(w.message) for w in said] == ["targets main=True"]
    err = capsys.readouterr().err
    assert "read main=True" in err and "odd rows main=True" in err and "bad main=True" in err
    assert "read main=False" not in err and "odd rows main=False" not in err and "bad main=False" in err


def test_library_log_records_have_the_right_level(caplog):
    from mtl_lora_vl.training.step import skip_bad_step

    class Opt:
        def zero_grad(self, set_to_none):
            pass

    caplog.set_level(logging.INFO, logger="mtl_lora_vl")
    skip_bad_step(types.SimpleNamespace(optimizer=Opt()), 1, 7, 5, Path("run"))
    [rec] = [r for r in caplog.records if "non-finite" in r.getMessage()]
    assert rec.levelno == logging.WARNING and rec.name == "mtl_lora_vl.training.step"
    assert "step 7: non-finite loss or gradients, step skipped (1 in a row)" == rec.getMessage()


def test_progress_is_off_when_not_a_terminal_or_quiet(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress(range(3), desc="x").disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress(range(3), desc="x")
    assert not bar.disable
    bar.close()
    with cli_logging("warning"):
        assert progress(range(3), desc="x").disable
    monkeypatch.setenv("RANK", "1")   # torchrun's other ranks share the terminal: only rank 0 draws
    assert progress(range(3), desc="x").disable
    monkeypatch.setenv("RANK", "0")
    bar = progress(range(3), desc="x")
    assert not bar.disable
    bar.close()


def test_import_configures_nothing_and_plots_leave_matplotlib_alone(tmp_path):
    """In a fresh interpreter: importing the package adds no handler; writing the plots imports no pyplot
    and does not switch the backend."""
    code = f"""
import logging, sys
sys.path.insert(0, {str(REPO / "tests")!r})
import matplotlib
matplotlib.use("svg")
import mtl_lora_vl as mlv
from mtl_lora_vl.evaluation.report import write_plots
from conftest import tiny_open_clip
assert not logging.getLogger().handlers and not logging.getLogger("mtl_lora_vl").handlers
model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=2))
result = {{"tasks": {{"a": {{"metric": "m", "zero_shot": 0.2, "adapted": 0.5}},
                      "b": {{"metric": "m", "zero_shot": 0.3, "adapted": 0.4}}}}}}
paths = write_plots(__import__("pathlib").Path({str(tmp_path)!r}), result, model)
assert len(paths) == 2 and all(p.stat().st_size > 0 for p in paths), paths
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_export_subcommand_writes_several_tasks(trained_run, tmp_path, capsys):  # noqa: F811
    path = trained_run[0]
    out = tmp_path / "loras"
    assert main(["export", "--adapter", str(path), "--task", "vqa,retrieval", "--format", "plain", "--out",
                 str(out)], prog="mtl-lora-vl") == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'vqa'}" in printed and f"wrote {out / 'retrieval'}" in printed
    assert (out / "vqa").is_dir() and (out / "retrieval").is_dir()
    assert main(["export", "--adapter", str(path), "--task", "vqa,nope", "--out", str(tmp_path / "m")],
                prog="mtl-lora-vl") == 2
    assert "'nope': the adapter has no such task" in capsys.readouterr().err
    assert main(["export", "--adapter", str(path), "--task", "vqa,retrieval", "--out", str(tmp_path / "m.safetensors")],
                prog="mtl-lora-vl") == 2
    assert "give a directory" in capsys.readouterr().err
    # OUT holds the task folders: never in the adapter's own directory (they were written into it); a folder
    # that holds the adapter further down is fine (only OUT/<task> is written)
    for inside in (path, path / "exports"):
        assert main(["export", "--adapter", str(path), "--task", "vqa,retrieval", "--format", "plain", "--out",
                     str(inside)], prog="mtl-lora-vl") == 2
        assert "is or lies inside the adapter being exported" in capsys.readouterr().err
    assert not (path / "vqa").exists() and not (path / "exports").exists()
    project = tmp_path / "project"
    shutil.copytree(path, project / "runs" / "adapter")
    assert main(["export", "--adapter", str(project / "runs" / "adapter"), "--task", "vqa,retrieval", "--format",
                 "plain", "--out", str(project)], prog="mtl-lora-vl") == 0
    assert (project / "vqa").is_dir() and (project / "retrieval").is_dir()


def test_overwrite_never_deletes_the_adapter_it_reads_or_the_working_directory(trained_run, tmp_path, capsys,  # noqa: F811
                                                                              monkeypatch):
    """--out naming the folder that holds --adapter (eval, export) or the working directory (train) with
    --overwrite replaced it whole: the adapter, the run's checkpoint, the user's files."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run / "adapter")
    (run / "checkpoint.pt").write_text("x")
    before = sorted(p.name for p in run.rglob("*"))
    assert main(["eval", "--adapter", str(run / "adapter"), "--out", str(run), "--overwrite"], prog="mtl-lora-vl") == 2
    assert "holds the adapter" in capsys.readouterr().err
    assert main(["export", "--adapter", str(run / "adapter"), "--task", "vqa", "--out", str(run), "--overwrite"],
                prog="mtl-lora-vl") == 2
    assert "holds the adapter" in capsys.readouterr().err
    assert sorted(p.name for p in run.rglob("*")) == before

    here = tmp_path / "here"
    here.mkdir()
    (here / "keep.txt").write_text("mine")
    monkeypatch.chdir(here)
    assert main(["train", "--tasks", "vqa", "--out", ".", "--overwrite", "--steps", "1"], prog="mtl-lora-vl") == 2
    assert "current directory" in capsys.readouterr().err and (here / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_only_an_earlier_output_of_the_same_command(trained_run, oc_dir, tmp_path, capsys):  # noqa: F811
    """eval / export --overwrite replaced any non-empty --out: the data being scored, the base model's folder,
    another training run, a folder of the user's. Now only an earlier output of the same command (eval.json,
    mtl_lora_export.json) is replaced; the rest is refused before anything is read or written."""
    adapter = str(trained_run[0])
    data = tmp_path / "data"
    (data / "vqa").mkdir(parents=True)
    (data / "vqa" / "train.jsonl").write_text("{}\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "config.json").write_text("{}")
    (other / "checkpoint.pt").write_text("x")
    (other / "eval.json").write_text("{}")
    oc_before = sorted(str(p) for p in oc_dir.rglob("*"))
    cases = [
        (["eval", "--adapter", adapter, "--data-root", str(data), "--out", str(data)], "holds the data"),
        (["eval", "--adapter", adapter, "--out", str(mine)], "holds no eval.json"),
        (["eval", "--adapter", adapter, "--out", str(other)], "is a training run directory"),
        (["eval", "--adapter", adapter, "--out", str(oc_dir)], "holds the base model's folder"),
        (["export", "--adapter", adapter, "--task", "vqa", "--out", str(oc_dir)], "holds the base model's folder"),
        (["export", "--adapter", adapter, "--task", "vqa", "--out", str(mine)], "holds no mtl_lora_export.json"),
        (["export", "--adapter", adapter, "--task", "vqa", "--out", str(trained_run[0].parent)],
         "holds the adapter being exported"),
        (["export", "--adapter", adapter, "--task", "vqa", "--format", "plain", "--out", str(other)],
         "is a training run directory"),
        (["export", "--adapter", adapter, "--task", "vqa", "--out", str(trained_run[0] / "mtl_lora_model.safetensors")],
         "is a file of the adapter being exported"),     # a merged file written over the adapter's weights
        (["export", "--adapter", adapter, "--task", "vqa", "--out", str(oc_dir / "model.safetensors")],
         "is a file of the base model's folder"),
        (["export", "--adapter", adapter, "--task", "vqa", "--out", str(mine / "weights.safetensors")],
         "is not a merged checkpoint written by export"),
    ]
    (mine / "weights.safetensors").write_bytes((oc_dir / "model.safetensors").read_bytes())
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    adapter_bytes = (trained_run[0] / "mtl_lora_model.safetensors").read_bytes()
    for argv, message in cases:
        assert main([*argv, "--overwrite"], prog="mtl-lora-vl") == 2, argv
        assert message in capsys.readouterr().err, argv
    assert (trained_run[0] / "mtl_lora_model.safetensors").read_bytes() == adapter_bytes
    # without --overwrite, a folder that is no earlier output is not offered --overwrite as the fix
    assert main(["eval", "--adapter", adapter, "--out", str(mine)], prog="mtl-lora-vl") == 2
    err = capsys.readouterr().err
    assert "holds no eval.json" in err and "pass --overwrite" not in err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert sorted(str(p) for p in oc_dir.rglob("*")) == oc_before

    merged = tmp_path / "vqa.safetensors"   # a merged file export wrote is replaced
    for _ in range(2):
        assert main(["export", "--adapter", adapter, "--task", "vqa", "--out", str(merged), "--overwrite"],
                    prog="mtl-lora-vl") == 0
    for argv in (["eval", "--adapter", adapter, "--split", "val"],   # (10 rows a task, not the built-in test split)
                 ["export", "--adapter", adapter, "--task", "vqa", "--format", "plain"]):
        out = tmp_path / argv[0]
        assert main([*argv, "--out", str(out)], prog="mtl-lora-vl") == 0
        assert main([*argv, "--out", str(out)], prog="mtl-lora-vl") == 2
        assert "--overwrite" in capsys.readouterr().err
        assert main([*argv, "--out", str(out), "--overwrite"], prog="mtl-lora-vl") == 0, argv


def test_eval_refuses_an_out_it_cannot_write_before_it_scores(trained_run, tmp_path, capsys, monkeypatch):  # noqa: F811
    """evaluate_vl found out only after scoring every task that --out could not be written (the current
    directory, a read-only parent: a raw "Read-only file system" on a temporary name), and printed no scores;
    --out naming a file was a raw "Not a directory"."""
    import mtl_lora_vl.evaluation.evaluate as ev

    def no_scoring(*a, **k):
        raise AssertionError("scored before refusing --out")

    monkeypatch.setattr(ev, "evaluate_setup", no_scoring)
    adapter = str(trained_run[0])
    (tmp_path / "afile.txt").write_text("x")
    assert main(["eval", "--adapter", adapter, "--out", str(tmp_path / "afile.txt")], prog="mtl-lora-vl") == 2
    assert "afile.txt exists and is a file; choose a directory path" in capsys.readouterr().err
    assert main(["eval", "--adapter", adapter, "--out", str(tmp_path / "afile.txt" / "out")], prog="mtl-lora-vl") == 2
    assert "afile.txt is a file, so" in capsys.readouterr().err
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    assert main(["eval", "--adapter", adapter, "--out", str(tmp_path / "gone")], prog="mtl-lora-vl") == 2
    assert "gone is a symbolic link to" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert main(["eval", "--adapter", adapter, "--out", "."], prog="mtl-lora-vl") == 2
    assert "is the current directory or holds it" in capsys.readouterr().err
    monkeypatch.setattr(ev.os, "access", lambda path, mode: False)   # (root passes any permission bits)
    assert main(["eval", "--adapter", adapter, "--out", str(tmp_path / "ro" / "out")], prog="mtl-lora-vl") == 2
    assert f"{tmp_path} cannot be written" in capsys.readouterr().err


def test_export_says_which_format_auto_wrote(trained_run, tmp_path, capsys):  # noqa: F811
    assert main(["export", "--adapter", str(trained_run[0]), "--task", "vqa", "--format", "auto", "--out",
                 str(tmp_path / "x")],
                prog="mtl-lora-vl") == 0
    assert "as a plain LoRA (--format auto)" in capsys.readouterr().out   # open_clip: plain


def test_a_tilde_in_path_options_means_home(tmp_path, monkeypatch):
    """The shell leaves ~ alone in --out=~/x, in quotes and in config files: --out=~/runs/t1 made a folder named
    "~" in the working directory (where `rm -rf ~` is the natural clean-up), and --tasks "~/x.toml" or
    --data-root "~/data" were not found."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = tmp_path / "c.toml"
    cfg.write_text('data-root = "~/data"\n')
    opts = parse_train_args(["--out=~/runs/t1", "--tasks", "vqa,~/specs/x.toml", "--config", "~/c.toml",
                             "--extend", "~/old", "--seed", "3"])
    assert opts.out == str(tmp_path / "runs" / "t1") and opts.extend == str(tmp_path / "old")
    assert opts.tasks == f"vqa,{tmp_path / 'specs' / 'x.toml'}" and opts.data_root == str(tmp_path / "data")
    # a bare "~" was YAML's null to the parser: the option silently kept its default
    opts = parse_train_args(["--out", "~", "--data-root=~", "--pretrained", "~"])
    assert (opts.out, opts.data_root, opts.pretrained) == (str(tmp_path),) * 3
    bare = tmp_path / "bare.toml"
    bare.write_text('out = "~"\ndata-root = "~"\n')
    opts = parse_train_args(["--config", str(bare)])
    assert (opts.out, opts.data_root) == (str(tmp_path),) * 2


def test_run_config_records_the_config_file_absolute(tmp_path, monkeypatch):
    """config.json recorded --config as typed (relative to wherever the run was started), unlike every other path."""
    from mtl_lora_vl.rundir import config_doc

    (tmp_path / "opts.toml").write_text("rank = 4\n")
    monkeypatch.chdir(tmp_path)
    opts = parse_train_args(["--config", "opts.toml"])
    assert config_doc(tmp_path / "run", opts)["config"] == str((tmp_path / "opts.toml").resolve())
    assert config_doc(tmp_path / "run", parse_train_args([]))["config"] is None


def test_a_rank_warning_on_a_muted_rank_keeps_the_silences_the_user_set(caplog):
    """rank_warning prints a rank's own warning while main_rank_logging mutes the rank, at the level the rank had
    before: a level set on a logger between the module's and the package's, or logging.disable, was passed over
    (the module's own level, else the package's, decided)."""
    from mtl_lora_vl.log import main_rank_logging, rank_warning

    log, data = logging.getLogger("mtl_lora_vl.data.fallback"), logging.getLogger("mtl_lora_vl.data")
    caplog.set_level(logging.WARNING, logger="mtl_lora_vl")
    with main_rank_logging(False):
        rank_warning(log, "said %d", 1)
        data.setLevel(logging.ERROR)
        try:
            rank_warning(log, "silenced %d", 2)
        finally:
            data.setLevel(logging.NOTSET)
        logging.disable(logging.WARNING)
        try:
            rank_warning(log, "disabled %d", 3)
        finally:
            logging.disable(logging.NOTSET)
    assert [r.getMessage() for r in caplog.records] == ["said 1"]
