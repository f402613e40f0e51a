"""An ``--overwrite`` stopped while deleting a grid left a folder (lock file, part of runs/, no settings.json) that
both resuming and ``--overwrite`` refused; ``--overwrite`` now finishes the job."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from test_bench_methods import _vqa_settings

import mtl_lora_vl.benchmark.bench as bench_module
from mtl_lora_vl.benchmark import run_benchmark
from mtl_lora_vl.benchmark.bench import BenchDirError
from mtl_lora_vl.options import TrainOptions


class Stop(KeyboardInterrupt):
    pass


def _stop(opts: TrainOptions) -> Path:   # the grid's folder is checked and emptied by then
    raise Stop()


def test_overwrite_finishes_what_a_stopped_overwrite_left(tmp_path, monkeypatch):
    settings, out = _vqa_settings(tmp_path), tmp_path / "bench"
    with pytest.raises(Stop):   # a grid: settings.json, the lock file, runs/
        run_benchmark(settings, out, trainer=_stop, stream=io.StringIO())
    (out / "runs" / "mtl_lora-r8" / "lr0.001-seed0").mkdir(parents=True)
    (out / "runs" / "mtl_lora-r8" / "lr0.001-seed0" / "result.json").write_text("{}")
    (out / "results.json").write_text("{}")

    def killed(path, *a, **k):   # --overwrite killed while deleting runs/
        raise Stop()

    monkeypatch.setattr(bench_module.shutil, "rmtree", killed)
    with pytest.raises(Stop):
        run_benchmark(settings, out, trainer=_stop, overwrite=True, stream=io.StringIO())
    monkeypatch.undo()
    assert not (out / "settings.json").exists()   # deleted first: what is left is not resumed as a grid
    (out / "results.json").unlink(missing_ok=True)   # whatever the order, a remnant as a kill may leave it

    with pytest.raises(BenchDirError, match="an --overwrite stopped while deleting a grid .* pass --overwrite to "
                                            "finish emptying it"):
        run_benchmark(settings, out, trainer=_stop, stream=io.StringIO())
    with pytest.raises(Stop):   # was refused: "is not empty and holds no benchmark"
        run_benchmark(settings, out, trainer=_stop, overwrite=True, stream=io.StringIO())
    assert (out / "settings.json").is_file() and not (out / "runs" / "mtl_lora-r8").exists()


def test_overwrite_still_refuses_a_folder_that_is_not_a_grid(tmp_path):
    settings, out = _vqa_settings(tmp_path), tmp_path / "mine"
    (out / "runs").mkdir(parents=True)
    (out / ".lock").write_text("")
    (out / "thesis.tex").write_text("keep me")
    with pytest.raises(BenchDirError, match="holds no benchmark"):
        run_benchmark(settings, out, trainer=_stop, overwrite=True, stream=io.StringIO())
    assert (out / "thesis.tex").read_text() == "keep me"
