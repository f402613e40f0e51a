"""A quoted number or boolean in a ``--config`` file (``rank = "4"``, ``lr = "1e-3"``, ``overwrite = "true"``) is
refused, naming the file, the key and the unquoted fix: TOML and JSON have types, and the string went through the
command line's YAML reading, where ``"0x4"`` was rank 4 and ``"yes"`` was true (review 274). The command line,
where every value is text, is unchanged."""

from __future__ import annotations

import json

import pytest

from mtl_lora_vl.cli.parsing import parse_options
from mtl_lora_vl.options import EvalOptions, ExportOptions, TrainOptions


def _parse(cls, argv):
    return parse_options(cls, argv, "p", "d")[0]


@pytest.mark.parametrize("line, fix", [
    ('rank = "4"', "rank = 4"), ('rank = "0x4"', "rank = 4"), ('lr = "1e-3"', "lr = 0.001"),
    ('epochs = "2"', "epochs = 2.0"), ('image_max_pixels = "100"', "image_max_pixels = 100"),
    ('overwrite = "true"', "overwrite = true"), ('keep_best = "yes"', "keep_best = true"),
])
def test_a_quoted_value_in_a_toml_file_is_refused(tmp_path, capsys, line, fix):
    cfg = tmp_path / "run.toml"
    cfg.write_text(line + "\n")
    with pytest.raises(SystemExit):
        _parse(TrainOptions, ["--config", str(cfg)])
    key, _, value = line.partition(" = ")
    err = capsys.readouterr().err
    assert f"--config {cfg}: {key} = {value} is a string (in quotes)" in err, err
    assert f"write {fix}, without the quotes" in err, err


def test_a_quoted_value_in_a_json_file_is_refused_with_the_json_fix(tmp_path, capsys):
    cfg = tmp_path / "eval.json"
    cfg.write_text(json.dumps({"adapter": "a", "batch_size": "8"}))
    with pytest.raises(SystemExit):
        _parse(EvalOptions, ["--config", str(cfg)])
    assert 'batch_size = "8" is a string (in quotes); batch_size takes an integer >= 1: write "batch_size": 8' in (
        capsys.readouterr().err)


@pytest.mark.parametrize("line", ["overwrite = 1", "rank = [4]", "tasks = [1, 2]"])
def test_other_wrong_types_stay_refused(tmp_path, capsys, line):
    cfg = tmp_path / "run.toml"
    cfg.write_text(line + "\n")
    with pytest.raises(SystemExit):
        _parse(TrainOptions, ["--config", str(cfg)])
    assert "is not allowed" in capsys.readouterr().err


def test_typed_values_and_the_command_line_are_unchanged(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('rank = 4\nlr = 1\noverwrite = true\ntasks = ["vqa", "retrieval"]\nmethod = "lora"\n')
    opts = _parse(TrainOptions, ["--config", str(cfg)])
    assert (opts.rank, opts.lr, opts.overwrite, opts.tasks, opts.method) == (4, 1.0, True, "vqa,retrieval", "lora")
    opts = _parse(TrainOptions, ["--rank", "4", "--lr", "1e-3", "--overwrite", "true"])
    assert (opts.rank, opts.lr, opts.overwrite) == (4, 1e-3, True)
    export = _parse(ExportOptions, ["--adapter", "a", "--task", "vqa", "--out", "o", "--overwrite", "false"])
    assert export.overwrite is False
