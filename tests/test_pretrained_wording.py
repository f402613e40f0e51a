"""Helper 499: a bad ``pretrained`` was named ``--pretrained`` also where Python gave it (``load_backbone(...,
pretrained=...)``, ``parse_spec``), a flag the caller never wrote. Each message names it as the caller gave it: the
caller passes the name it uses (``pretrained_as``; the command line ``--pretrained``), no process-wide state."""

from __future__ import annotations

import json
import shutil

import pytest

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import load_backbone
from mtl_lora_vl.backbones.spec import parse_spec
from mtl_lora_vl.benchmark.cli import main as bench_main
from mtl_lora_vl.cli import eval_main, train_main
from mtl_lora_vl.cli.export import export_main
from mtl_lora_vl.io.layout import ADAPTER_CONFIG, AdapterFileError
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


@pytest.fixture(scope="module")
def builtin_adapter(tmp_path_factory):
    bb = load_backbone("builtin")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "captioning"], r=2, n_up=2))
    return mlv.save_adapter(bb.model, tmp_path_factory.mktemp("ad") / "ad", base={"backbone": "builtin"})


def test_load_pretrained_names_its_overrides_as_python_arguments(builtin_adapter):
    """load_pretrained wrote '--backbone X' / '--pretrained X' given and 'leave --backbone / --pretrained out' also
    for a Python call, whose caller gave arguments, not flags."""
    with pytest.raises(AdapterFileError, match=r"pretrained='/nonexistent/w.bin' given; .*: pretrained='/nonexistent/"
                                               r"w.bin': no such file; .*pass backbone=... / pretrained=...") as e:
        mlv.load_pretrained(builtin_adapter, pretrained="/nonexistent/w.bin")
    with pytest.raises(AdapterFileError, match=r"backbone='builtin-llava' given; the adapter records backbone "
                                               r"'builtin', pretrained=None: leave backbone= / pretrained= out") as f:
        mlv.load_pretrained(builtin_adapter, backbone="builtin-llava")
    assert "--" not in str(e.value) + str(f.value)


def test_a_recorded_weights_file_not_here_is_named_by_its_key_and_not_told_left_out(tmp_path, builtin_adapter):
    """An adapter trained on other builtin weights (base.pretrained) that are not on this machine: 'leave
    base.pretrained out to use its own weights' named no option and offered another base model."""
    doc = json.loads((builtin_adapter / ADAPTER_CONFIG).read_text())
    doc["base"]["pretrained"] = "/gone/w.safetensors"
    shutil.copytree(builtin_adapter, tmp_path / "ad")
    (tmp_path / "ad" / ADAPTER_CONFIG).write_text(json.dumps(doc))
    with pytest.raises(AdapterFileError, match=r"that the adapter was trained on \(base.pretrained '/gone/w."
                                               r"safetensors'\): base.pretrained='/gone/w.safetensors': no such "
                                               r"file") as e:
        mlv.load_pretrained(tmp_path / "ad")
    assert "leave base.pretrained out" not in str(e.value)


@pytest.mark.parametrize("command", ["eval", "export", "train --extend"])
def test_a_missing_weights_file_given_beside_an_adapter_is_named_by_its_flag(command, builtin_adapter, tmp_path,
                                                                             capsys):
    """eval / export / train --extend with --pretrained X load the adapter's base through load_pretrained, which
    named X ``pretrained='X'`` (1934ed0's Python wording) inside a message naming --pretrained."""
    out = ["--out", str(tmp_path / "out")]
    argv = {"eval": (eval_main, ["--adapter", str(builtin_adapter), *out]),
            "export": (export_main, ["--adapter", str(builtin_adapter), "--task", "vqa", *out]),
            "train --extend": (train_main, ["--extend", str(builtin_adapter), "--tasks", "retrieval", *out])}
    main, args = argv[command]
    assert main([*args, "--pretrained", "/nonexistent/w.bin"]) == 2
    err = capsys.readouterr().err
    assert "--pretrained /nonexistent/w.bin given" in err and "--pretrained /nonexistent/w.bin: no such file" in err
    assert "pretrained='" not in err and "pretrained=..." not in err
