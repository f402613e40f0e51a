"""An empty ``--resume``, ``--extend`` or ``--config`` (``--resume "$RUN"`` with RUN unset) is refused: it was read as
the option left out, so the command started a new 400-step run in runs/... instead of continuing one, trained a new
adapter instead of extending one, or ran on the defaults instead of the file's options (review 225)."""
import json

import pytest

from mtl_lora_vl.cli.commands import build_train_parser, parse_eval_args, parse_train_args
from mtl_lora_vl.cli.export import export_command
from mtl_lora_vl.options import TrainOptions


@pytest.mark.parametrize("argv, said", [
    (["--resume", ""], "--resume '': an empty value (an unset shell variable?); give the directory of the run to "
                       "continue, or leave --resume out to start a new run"),
    (["--resume=  "], "--resume '  ': an empty value"),
    (["--extend", "", "--tasks", "caption_cls"], "--extend '': an empty value"),
    (["--config", "", "--steps", "3"], "--config '': an empty value (an unset shell variable?); give a JSON or TOML "
                                       "file of options, or leave --config out"),
])
def test_an_empty_resume_extend_or_config_is_refused(argv, said, capsys):
    with pytest.raises(SystemExit) as e:
        parse_train_args(argv, prog="train_vl.py")
    assert e.value.code == 2 and said in capsys.readouterr().err


def test_an_empty_value_from_a_config_file_and_other_commands(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"resume": "", "steps": 3}))
    with pytest.raises(SystemExit):
        parse_train_args(["--config", str(cfg)], prog="x")
    assert "--resume '': an empty value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_eval_args(["--adapter", "a", "--config", ""], prog="x")
    assert "--config '': an empty value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_command(["--adapter", "a", "--task", "vqa", "--out", "o", "--config="], prog="x")
    assert "--config '': an empty value" in capsys.readouterr().err


def test_other_values_still_parse():
    assert parse_train_args(["--resume", "run1"], prog="x").resume == "run1"
    opts = parse_train_args(["--data-root", ""], prog="x")   # (this means the default, as before)
    assert (opts.resume, opts.extend, opts.config) == (None, None, None)


@pytest.mark.parametrize("command", ["train", "eval", "export"])
def test_an_empty_out_is_refused(command, tmp_path, capsys):
    """Review h429: ``--out ""`` (``--out "$OUT"`` with OUT unset) was read as --out left out: train started a new run
    in runs/<tasks>-<method>-<time>, eval wrote to ADAPTER/../eval-<split>; neither said so."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"out": " "}))
    for given in (["--out", ""], ["--config", str(cfg)]):
        with pytest.raises(SystemExit) as e:
            if command == "train":
                parse_train_args(given, prog="x")
            elif command == "eval":
                parse_eval_args(["--adapter", "a", *given], prog="x")
            else:
                raise SystemExit(export_command(["--adapter", "a", "--task", "vqa", *given], prog="x"))
        err = capsys.readouterr().err
        assert e.value.code == 2 and "--out '" in err and "': an empty value (an unset shell variable?); give " in err
        assert ("give the path to write to" if command == "export" else "leave --out out for its default") in err, err


def test_options_are_not_read_from_environment_variables(monkeypatch):
    """Review h429: with JSONARGPARSE_DEFAULT_ENV=true in the environment jsonargparse read every option from a
    variable named after the program (``X_STEPS=7`` made a 7-step run) and --help listed them as ENV: X_STEPS."""
    monkeypatch.setenv("JSONARGPARSE_DEFAULT_ENV", "true")
    monkeypatch.setenv("X_STEPS", "7")
    monkeypatch.setenv("X_OUT", "elsewhere")
    opts = parse_train_args(["--tasks", "vqa"], prog="x")
    assert (opts.steps, opts.out) == (TrainOptions().steps, None)
    assert "ENV:" not in build_train_parser("x").format_help()
