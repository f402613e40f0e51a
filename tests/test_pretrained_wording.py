"""Helper 499: a bad ``pretrained`` was named ``--pretrained`` also where Python gave it (``load_backbone(...,
pretrained=...)``, ``parse_spec``), a flag the caller never wrote. Each message names it as the caller gave it: the
caller passes the name it uses (``pretrained_as``; the command line ``--pretrained``), no process-wide state."""

from __future__ import annotations

import pytest

from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.backbones.spec import parse_spec
from mtl_lora_vl.benchmark.cli import main as bench_main
from mtl_lora_vl.cli import train_main
from mtl_lora_vl.wording import given_as


def test_given_as_names_a_flag_and_an_argument_as_each_is_written():
    assert given_as("--pretrained", "/w.bin") == "--pretrained /w.bin"
    assert given_as("pretrained", "/w.bin") == "pretrained='/w.bin'"
    assert given_as("base.pretrained", "w b.bin") == "base.pretrained='w b.bin'"


def test_a_missing_builtin_weights_file_from_python_is_named_by_its_argument():
    with pytest.raises(FileNotFoundError, match=r"^pretrained='/nonexistent/w.bin': no such file; .*leave pretrained "
                                                r"out to use its own weights") as e:
        load_backbone("builtin", pretrained="/nonexistent/w.bin")
    assert "--pretrained" not in str(e.value)


def test_a_missing_builtin_weights_file_from_the_command_line_is_named_by_its_flag(tmp_path, capsys):
    assert train_main(["--pretrained", "/nonexistent/w.bin", "--out", str(tmp_path / "run")]) == 2
    assert "--pretrained /nonexistent/w.bin: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["builtin-llava", "hf:{tmp}", "open_clip:{tmp}"])
def test_weights_beside_a_backbone_with_its_own_are_named_as_given(spec, tmp_path):
    spec = spec.format(tmp=tmp_path)
    with pytest.raises(ValueError, match=r"pretrained='w.bin'") as e:
        parse_spec(spec, "w.bin")
    assert "--pretrained" not in str(e.value)
    with pytest.raises(ValueError, match=r"--pretrained w.bin"):
        parse_spec(spec, "w.bin", pretrained_as="--pretrained")


def test_a_missing_weights_file_given_to_bench_is_named_by_its_flag(tmp_path, capsys):
    """The bench command counts adapter parameters on the base before anything else; its refusal of a bad
    ``--pretrained`` named it ``pretrained='...'`` (the Python wording), a form the user never wrote."""
    assert bench_main(["--pretrained", "/nonexistent/w.bin", "--out", str(tmp_path / "grid"), "--quick"]) != 0
    err = capsys.readouterr().err
    assert "--pretrained /nonexistent/w.bin: no such file" in err and "pretrained='" not in err
    assert not (tmp_path / "grid").exists()
