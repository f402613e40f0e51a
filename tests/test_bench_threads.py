"""`bench --threads` and `--workers` beyond what the machine can run are refused up front, saying the range and why
(helper 428): `--threads 100000` was set as given and the grid stopped in its first run with a tokenizer's error about
threads it could not start."""

from __future__ import annotations

import os

import pytest
import torch

import mtl_lora_vl.benchmark.command as command_module
from mtl_lora_vl.benchmark.cli import main
from mtl_lora_vl.distributed import DistInfo, node_cores


def _reached(*args, **kwargs):
    raise AssertionError("the grid was started")


def test_threads_beyond_the_usable_cores_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(command_module, "run_benchmark", _reached)
    cores = node_cores(DistInfo())[0]
    old = torch.get_num_threads()
    for given in (cores + 1, 100000):
        with pytest.raises(SystemExit) as e:
            main(["--tasks", "vqa", "--threads", str(given), "--out", str(tmp_path / "b")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"--threads {given}: this process may use {cores} core(s) of this machine" in err, err
        assert f"give --threads between 1 and {cores}" in err, err
    with pytest.raises(SystemExit):
        main(["--tasks", "vqa", "--threads", "0", "--out", str(tmp_path / "b")])
    assert "--threads: must be >= 1, got 0" in capsys.readouterr().err
    assert torch.get_num_threads() == old and not (tmp_path / "b").exists()


def test_workers_beyond_the_machine_are_refused_before_the_grid_folder(tmp_path, capsys):
    assert main(["--tasks", "vqa", "--workers", "100000", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "--workers 100000: this process may use" in err and "or fewer" in err, err
    assert not (tmp_path / "b").exists()
    assert os.cpu_count()   # (the machine reports its cores)
