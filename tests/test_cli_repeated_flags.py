"""``--tasks`` (export: ``--task``) given twice is refused, as --config already was: the parser kept the last value
unsaid, so `--tasks vqa --tasks retrieval` trained (or scored) retrieval alone (review 207)."""
import pytest

from mtl_lora_vl.cli.commands import parse_eval_args, parse_train_args
from mtl_lora_vl.cli.export import export_command


@pytest.mark.parametrize("parse, argv, said", [
    (parse_train_args, ["--tasks", "vqa", "--steps", "3", "--tasks=retrieval"],
     "--tasks is given 2 times, and only the last would count; name every task in one comma-separated --tasks, "
     "e.g. --tasks vqa,retrieval"),
    (parse_eval_args, ["--adapter", "a", "--tasks", "vqa", "--tasks", "retrieval"], "--tasks is given 2 times"),
    (lambda argv, prog: export_command(argv, prog), ["--adapter", "a", "--out", "o", "--task", "vqa", "--task",
                                                     "retrieval"], "--task vqa,retrieval"),
])
def test_tasks_given_twice_are_refused(parse, argv, said, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv, prog="x")
    assert e.value.code == 2 and said in capsys.readouterr().err


def test_tasks_given_once_beside_a_config_file_still_win(tmp_path):
    (tmp_path / "c.toml").write_text('tasks = "vqa"\nsteps = 7\n')
    opts = parse_train_args(["--config", str(tmp_path / "c.toml"), "--tasks", "retrieval"], prog="x")
    assert (opts.tasks, opts.steps) == ("retrieval", 7)
    assert parse_train_args(["--steps", "3", "--steps", "4"], prog="x").steps == 4   # other options: the last wins
