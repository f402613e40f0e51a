"""A dataset typo given a file (an image, an archive) is told no flag: no flag reads one file, and ``--data-root``
takes a folder. 861d48e told ``--image-path a.jpg`` and ``--dataset coco.zip`` ``--data-root`` (before it: none, and
``--data-root`` for the zip); a wrong flag is worse than none."""

from __future__ import annotations

import pytest

from mtl_lora_vl.cli import parse_train_args
from mtl_lora_vl.cli.flag_hints import closest_flag

FLAGS = ["--tasks", "--data-root"]


@pytest.mark.parametrize(("typo", "value"), [
    ("--image-path", "a.jpg"), ("--image-path", "/data/coco/000001.JPEG"), ("--image-folder", "img.png"),
    ("--dataset", "coco.zip"), ("--data-dir", "/data/coco.tar.gz"), ("--dataset", "vqa.tgz"),
])
def test_a_file_is_told_no_flag(typo, value):
    assert closest_flag(typo, FLAGS, value=value) is None
    assert closest_flag(f"{typo}={value}", FLAGS) is None


def test_a_folder_is_still_told_data_root(capsys):
    assert closest_flag("--image-path", FLAGS, value="/data/coco/images") == "--data-root"
    assert closest_flag("--dataset", FLAGS, value="/data/coco") == "--data-root"
    with pytest.raises(SystemExit) as info:
        parse_train_args(["--tasks", "vqa", "--image-path", "a.jpg"])
    assert info.value.code == 2
    line = next(line for line in capsys.readouterr().err.splitlines() if "error:" in line)
    assert line.endswith("unrecognized arguments: --image-path a.jpg"), line
