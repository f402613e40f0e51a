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
