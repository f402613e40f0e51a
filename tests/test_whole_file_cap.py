"""JSON / TOML files read whole are capped (helper 367): a sparse or wrong multi-GB file under the name of an adapter
config, a task-state file or a --config file was read whole into memory (and then told "not valid JSON")."""
import json
import os
import threading
import time

import pytest
import torch
from conftest import tiny_open_clip

import mtl_lora_vl as mlv
from mtl_lora_vl import whole_files
from mtl_lora_vl.cli.commands import parse_train_args
from mtl_lora_vl.config import ConfigError, MTLLoRAConfig
from mtl_lora_vl.evaluation.evaluate import _check_default_out
from mtl_lora_vl.io.adapter_files import read_adapter_config, read_kind_state
from mtl_lora_vl.io.layout import ADAPTER_CONFIG, LEGACY_ADAPTER_CONFIG, AdapterFileError, state_file
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.rundir import RunDirError, resumed_options
from mtl_lora_vl.tasks import load_spec
from mtl_lora_vl.tasks.spec import SpecError
from mtl_lora_vl.whole_files import MAX_WHOLE_FILE, FileTooLarge, read_whole


def _sparse(path, size=MAX_WHOLE_FILE + 1):
    """A file of ``size`` bytes that starts like JSON and holds no data blocks past that (cheap to make)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b'{"a": ')
        f.truncate(size)
    return path


def _refused(message: str, path) -> None:
    assert f"{path}: {MAX_WHOLE_FILE + 1:,} bytes, more than the 64 MiB" in message, message


def test_read_whole_refuses_a_file_over_the_cap_before_reading_it(tmp_path):
    big = _sparse(tmp_path / "big.json")
    start = time.perf_counter()
    with pytest.raises(FileTooLarge) as e:
        read_whole(big)
    assert time.perf_counter() - start < 0.5 and e.value.size == MAX_WHOLE_FILE + 1
    _refused(str(e.value), big)
    assert isinstance(e.value, OSError)   # a file that cannot be read, for callers that catch OSError
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_whole(tmp_path / "ok.json") == '{"a": 1}'


def test_an_oversized_adapter_config_is_refused_by_name(tmp_path):
    cfg = _sparse(tmp_path / "ad" / ADAPTER_CONFIG)
    with pytest.raises(AdapterFileError) as e:
        read_adapter_config(tmp_path / "ad")
    _refused(str(e.value), cfg)
    assert "copy the adapter directory again" in str(e.value)


def test_an_oversized_format_1_adapter_config_is_refused_by_name(tmp_path):
    cfg = _sparse(tmp_path / "ad" / LEGACY_ADAPTER_CONFIG)
    with pytest.raises(AdapterFileError) as e:
        read_adapter_config(tmp_path / "ad")
    _refused(str(e.value), cfg)


def test_an_oversized_task_state_file_is_refused_by_name(tmp_path):
    state = _sparse(tmp_path / "ad" / state_file("vqa"))
    with pytest.raises(AdapterFileError) as e:
        read_kind_state(tmp_path / "ad", "vqa")
    _refused(str(e.value), state)
    assert "copy the adapter directory again" in str(e.value)


def test_an_oversized_config_json_is_refused_by_name(tmp_path):
    cfg = _sparse(tmp_path / "mtl.json")
    with pytest.raises(ConfigError) as e:
        MTLLoRAConfig.from_json(cfg)
    _refused(str(e.value), cfg)
    small = tmp_path / "small.json"
    MTLLoRAConfig(tasks=["a", "b"]).to_json(small)
    assert MTLLoRAConfig.from_json(small).tasks == ["a", "b"]


@pytest.mark.parametrize("name", ["opts.json", "opts.toml"])
def test_an_oversized_options_file_is_refused_by_name(tmp_path, capsys, name):
    cfg = _sparse(tmp_path / name)
    with pytest.raises(SystemExit) as e:
        parse_train_args(["--config", str(cfg)], prog="train_vl.py")
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    _refused(err.replace("\n", " "), cfg)
    assert "--config " in err and "an options file is a few KB" in err
    (tmp_path / "ok.json").write_text(json.dumps({"steps": 3}))
    assert parse_train_args(["--config", str(tmp_path / "ok.json")], prog="train_vl.py").steps == 3


class _Kind:
    kind = "vqa"

    def state(self):
        return {"answers": ["red", "blue"]}


def test_save_pretrained_refuses_an_oversized_task_state_of_its_source(tmp_path):
    torch.manual_seed(0)
    model = mlv.attach(tiny_open_clip().eval(), MTLLoRAConfig(tasks=["vqa", "retrieval"], r=2))
    src = mlv.save_adapter(model, tmp_path / "src", kinds={"vqa": _Kind()})
    torch.manual_seed(0)
    loaded = mlv.MTLLoRAModel.from_pretrained(tiny_open_clip().eval(), src)
    state = _sparse(src / state_file("vqa"))   # replaced after loading
    with pytest.raises(AdapterFileError) as e:
        loaded.save_pretrained(tmp_path / "out")
    _refused(str(e.value), state)


def test_an_oversized_task_spec_is_refused_by_name(tmp_path):
    spec = tmp_path / "big.toml"
    with open(spec, "wb") as f:
        f.write(b'name = "big"\n')
        f.truncate(MAX_WHOLE_FILE + 1)
    start = time.perf_counter()
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert time.perf_counter() - start < 0.5
    _refused(str(e.value), spec)
    assert "a task spec is a few KB of TOML" in str(e.value)


def test_a_runs_config_and_eval_json_are_read_capped(tmp_path, monkeypatch):
    """A run's config.json (--resume) and an evaluation's eval.json go through the capped reader (a cap of 64
    bytes here, so that the files stay small)."""
    monkeypatch.setattr(whole_files, "MAX_WHOLE_FILE", 64)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"tasks": "vqa", "method": "mtl_lora", "out": str(run),
                                                 "rank": 8, "lr": 0.002}, indent=2))
    with pytest.raises(RunDirError) as e:
        resumed_options(run, TrainOptions())
    assert f"{run / 'config.json'}: " in str(e.value) and "more than the 0 MiB" in str(e.value)
    out = tmp_path / "eval-test"   # another adapter's evaluation, under the default --out
    out.mkdir()
    (out / "eval.json").write_text(json.dumps({"adapter": str(tmp_path / "other"), "pad": "x" * 64}))
    _check_default_out(out, tmp_path / "mine")   # too large to be an eval.json: not read, not refused
    monkeypatch.setattr(whole_files, "MAX_WHOLE_FILE", 2**20)
    with pytest.raises(RunDirError, match="holds the evaluation of another adapter"):
        _check_default_out(out, tmp_path / "mine")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_read_whole_refuses_a_fifo_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    result = {}

    def read():
        try:
            read_whole(fifo)
        except OSError as e:
            result["error"] = str(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(2)
    if reader.is_alive():   # (blocked in open(): let it go by opening the FIFO for writing)
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(2)
        pytest.fail(f"read_whole({fifo}) waited for a writer")
    assert result["error"] == (f"{fifo}: a FIFO (named pipe), not a regular file, so it is not read (a read could "
                               "wait for ever or never end); give a file")
    with pytest.raises(IsADirectoryError, match="a folder, not a file"):
        read_whole(tmp_path)
    (tmp_path / "crlf.json").write_bytes(b'{"a": 1}\r\n')
    assert read_whole(tmp_path / "crlf.json") == '{"a": 1}\n'   # read as open() reads text: newlines translated
