"""--config given a folder (a run directory, say) was refused as "no such file" (review 207)."""
import json

import pytest

from mtl_lora_vl.cli.commands import parse_train_args


def test_a_config_folder_is_named_as_a_folder(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"config": None, "out": str(tmp_path), "steps": 3}))
    with pytest.raises(SystemExit) as e:
        parse_train_args(["--config", str(tmp_path)], prog="train_vl.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--config {tmp_path}: is a folder, not a file" in err, err
    assert f"e.g. {tmp_path / 'config.json'}" in err
    assert parse_train_args(["--config", str(tmp_path / "config.json")], prog="train_vl.py").steps == 3


def test_relative_paths_in_a_config_file_are_taken_from_the_working_directory(tmp_path, monkeypatch):
    """README: relative paths in --config FILE are taken from the working directory, as on the command line, not
    from the file's folder (a run's config.json reused from elsewhere)."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "work").mkdir()
    cfg = tmp_path / "cfg" / "c.json"
    cfg.write_text(json.dumps({"out": "relout", "data_root": "reldata"}))
    monkeypatch.chdir(tmp_path / "work")
    opts = parse_train_args(["--config", str(cfg)], prog="train_vl.py")
    assert (opts.out, opts.data_root) == ("relout", "reldata")
    given = parse_train_args(["--out", "relout", "--data-root", "reldata"], prog="train_vl.py")
    assert (given.out, given.data_root) == (opts.out, opts.data_root)
