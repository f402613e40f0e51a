"""A negative number in exponent form after a flag (``--lr -1e-3``) is checked against the option's range like any
value; argparse took it for a flag and said only "argument --lr: expected one argument" (review 207)."""
import pytest

from mtl_lora_vl.cli.commands import parse_eval_args, parse_train_args
from mtl_lora_vl.options import TrainOptions


@pytest.mark.parametrize("argv, said", [
    (["--lr", "-1e-3"], "--lr: must be > 0, got -0.001"),
    (["--epochs", "-inf"], "--epochs: expected a number > 0 (or leave it out), got -inf"),
    (["--weight-decay", "-1E-2", "--steps", "3"], "--weight-decay: must be >= 0, got -0.01"),
    (["--seed", "-1e3"], "--seed: expected an integer"),
])
def test_a_negative_exponent_value_is_named_with_the_range(argv, said, capsys):
    with pytest.raises(SystemExit) as e:
        parse_train_args(argv, prog="train_vl.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and said in err and "expected one argument" not in err, err


def test_negative_values_that_are_allowed_still_parse(capsys):
    opts = parse_train_args(["--seed", "-5", "--workers", "-1", "--lr", "1e-3"], prog="train_vl.py")
    assert (opts.seed, opts.workers, opts.lr) == (-5, -1, 1e-3)
    assert parse_train_args(["--compile", "--seed=-7"], prog="train_vl.py").seed == -7
    with pytest.raises(SystemExit):   # a flag, not a value, after a flag that takes one
        parse_train_args(["--lr", "-v"], prog="train_vl.py")
    with pytest.raises(SystemExit):
        parse_eval_args(["--adapter", "a", "--batch-size", "-1e2"], prog="evaluate_vl.py")
    assert "--batch-size: expected an integer >= 1, got -100.0" in capsys.readouterr().err
    assert TrainOptions().lr == 2e-3
