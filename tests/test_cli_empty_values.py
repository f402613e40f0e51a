"""An empty ``--resume``, ``--extend`` or ``--config`` (``--resume "$RUN"`` with RUN unset) is refused: it was read as
the option left out, so the command started a new 400-step run in runs/... instead of continuing one, trained a new
adapter instead of extending one, or ran on the defaults instead of the file's options (review 225)."""
import json

import pytest

from mtl_lora_vl.cli.commands import parse_eval_args, parse_train_args
from mtl_lora_vl.cli.export import export_command


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
    opts = parse_train_args(["--out", "", "--data-root", ""], prog="x")   # (these mean the default, as before)
    assert (opts.resume, opts.extend, opts.config) == (None, None, None)
