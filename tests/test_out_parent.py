"""An --out under a file (or in a folder that cannot be written) is refused before the set-up: it was found only when
the run claimed its directory, after the base model and the data had loaded (review 207)."""
import os

import pytest

from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.rundir import RunDirError, choose_run_dir


def test_an_out_under_a_file_is_refused_before_the_set_up(tmp_path, monkeypatch):
    import mtl_lora_vl.training.train as tr

    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "runs" / "a"
    with pytest.raises(RunDirError, match=f"{tmp_path / 'afile'} is a file, so no folder can be made under it"):
        choose_run_dir(TrainOptions(out=str(out)))

    def no_set_up(*a, **k):
        raise AssertionError("the set-up ran")

    monkeypatch.setattr(tr, "prepare_rank", no_set_up)
    with pytest.raises(RunDirError, match="is a file"):
        tr.train(TrainOptions(out=str(out), device="cpu"))


def test_an_out_in_a_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(RunDirError, match="cannot be written"):
        choose_run_dir(TrainOptions(out=str(tmp_path / "new")))
    assert choose_run_dir(TrainOptions(out=str(tmp_path))) == tmp_path   # an existing (empty) --out is not asked
