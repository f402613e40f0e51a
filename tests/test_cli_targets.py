"""``--targets`` was checked only for being a JSON dict at start-up; an unknown tower, a bad regex or no regex at all
was refused as "targets: ..." after the backbone had loaded (22 s for the built-in CLIP on 2 CPU cores), and
``{"image": []}`` as "matched no nn.Linear or nn.MultiheadAttention in CLIP"."""

from __future__ import annotations

import pytest

from mtl_lora_vl.cli import train_main
from mtl_lora_vl.options import TrainOptions


@pytest.mark.parametrize("targets, says", [
    ('{"vision": ["attn"]}', r"^--targets: unknown tower 'vision'; use \['image', 'text'\]"),
    ('{"image": ["(attn"]}', r"^--targets\['image'\]: '\(attn' is not a valid regular expression"),
    ('{"image": "attn"}', r"^--targets\['image'\]: must be a list of regular expressions"),
    ('{"image": []}', r"^--targets: .* names no regular expression for any tower"),
    ("{}", r"^--targets: must be 'default' or a non-empty dict"),
])
def test_targets_are_checked_whole_before_the_run_starts(targets, says):
    with pytest.raises(ValueError, match=says):
        TrainOptions(targets=targets).validate()


def test_the_command_refuses_them_in_one_line(tmp_path, capsys, monkeypatch):
    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was loaded before --targets was checked")

    monkeypatch.setattr("mtl_lora_vl.multitask.setup.load_backbone", no_backbone)
    assert train_main(["--targets", '{"image": []}', "--out", str(tmp_path / "run")], prog="train") == 2
    assert "error: --targets: {'image': []} names no regular expression for any tower" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
