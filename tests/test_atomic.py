"""The one atomic-write helper: complete or absent, never half-written; old content kept on failure."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from mtl_lora_vl.io.atomic import atomic_dir, atomic_file
from mtl_lora_vl.training.checkpoint import load_checkpoint, save_checkpoint


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_atomic_file_writes_refuses_and_replaces(tmp_path):
    out = tmp_path / "sub" / "f.bin"
    with atomic_file(out, what="test") as tmp:
        assert tmp.parent == out.parent and tmp != out and not out.exists()
        tmp.write_bytes(b"one")
    assert out.read_bytes() == b"one" and _mode(out) == 0o666 & ~_umask()
    with pytest.raises(FileExistsError, match=r"test: .*f.bin already exists; pass overwrite=True"):
        with atomic_file(out, what="test"):
            pass
    with atomic_file(out, overwrite=True) as tmp:
        tmp.write_bytes(b"two")
    assert out.read_bytes() == b"two"
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.bin"]


def test_atomic_file_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "f.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_file(out, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        with atomic_file(tmp_path / "d", overwrite=True):
            pass


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    out = tmp_path / "d"
    with atomic_dir(out, what="test") as tmp:
        (tmp / "a").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b").write_text("2")
    assert (out / "sub" / "b").read_text() == "2"
    assert _mode(out) == 0o777 & ~_umask() and _mode(out / "a") == 0o666 & ~_umask()
    with pytest.raises(FileExistsError, match="already exists and is not empty; pass overwrite=True"):
        with atomic_dir(out, what="test"):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "c").write_text("3")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["a", "sub"]
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "c").write_text("3")
    assert [p.name for p in out.iterdir()] == ["c"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary or old copy left behind
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:  # an empty directory is not "existing content"
        (tmp / "x").write_text("x")
    assert (tmp_path / "empty" / "x").is_file()


def test_checkpoint_goes_through_the_helper(tmp_path, monkeypatch):
    save_checkpoint({"step": 1, "w": torch.ones(2)}, tmp_path)
    assert load_checkpoint(tmp_path)["step"] == 1
    assert _mode(tmp_path / "checkpoint.pt") == 0o666 & ~_umask()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, tmp_path)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
